"""Model registry: every trainable model by architecture name, with its config class and presets.

``"atomizer"`` is :class:`atomizer.models.atomizer.Atomizer`; the baselines (``"resnet"``, ``"vit"``,
``"scalemae"``, ``"perceiver"``) come from :mod:`atomizer.models.baselines`; ``"s2mae"`` (the S2MAE cube ViT,
a canvas model with MAE pretraining) from :mod:`atomizer.models.s2mae`. Every model is called as
``model(batch)`` on its :func:`input_type` (an :class:`~atomizer.atoms.tokens.AtomBatch` or a
:class:`~atomizer.atoms.canvas.CanvasBatch`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from torch import nn

from atomizer.models.atomizer import Atomizer, AtomizerConfig
from atomizer.models.baselines import BASELINES, CONFIGS
from atomizer.models.s2mae import S2MAE, S2MAEConfig


@runtime_checkable
class ModelConfig(Protocol):
    """What every model's config offers (:class:`AtomizerConfig` and the baselines' configs)."""

    @property
    def num_classes(self) -> int: ...

    def to_dict(self) -> dict[str, Any]: ...


class ConfigClass(Protocol):
    """A model's config class: named presets and validated rebuilding from a stored dict."""

    def preset(self, name: str, **overrides: Any) -> ModelConfig: ...

    def from_dict(self, d: Mapping[str, Any]) -> ModelConfig: ...


MODELS: dict[str, type[nn.Module]] = {"atomizer": Atomizer, **BASELINES, "s2mae": S2MAE}
CONFIG_CLASSES: dict[str, ConfigClass] = {"atomizer": AtomizerConfig, **CONFIGS, "s2mae": S2MAEConfig}


def architectures() -> list[str]:
    return list(MODELS)


def model_class(arch: str) -> type:
    if arch not in MODELS:
        raise KeyError(f"unknown model {arch!r}; choose from {', '.join(MODELS)}")
    return MODELS[arch]


def config_class(arch: str) -> ConfigClass:
    model_class(arch)  # validates the name
    return CONFIG_CLASSES[arch]


def arch_of(model: nn.Module) -> str:
    for name, cls in MODELS.items():
        if type(model) is cls:
            return name
    raise KeyError(f"{type(model).__name__} is not a registered model")


def build_model(arch: str, preset: str = "tiny", num_classes: int = 19, **overrides: Any) -> nn.Module:
    """A fresh model from a named preset (``tiny``, ``small``, ``paper`` for Atomizer)."""
    cfg = config_class(arch).preset(preset, num_classes=num_classes, **overrides)
    return model_class(arch)(cfg)


def build_from_config(arch: str, cfg: Mapping[str, Any]) -> nn.Module:
    return model_class(arch)(config_class(arch).from_dict(dict(cfg)))


def config_of(model: nn.Module) -> ModelConfig:
    """The config ``model`` (through a DDP wrapper) was built from."""
    cfg = getattr(getattr(model, "module", model), "cfg", None)
    if not isinstance(cfg, ModelConfig):
        raise TypeError(f"{type(model).__name__} has no model config (cfg)")
    return cfg


def input_type(model: nn.Module) -> type:
    """The batch class ``model`` reads (through a DDP wrapper): ``AtomBatch`` or ``CanvasBatch``."""
    kind = getattr(getattr(model, "module", model), "input_type", None)
    if not isinstance(kind, type):
        raise TypeError(f"{type(model).__name__} declares no input_type")
    return kind


def is_dense(model: nn.Module) -> bool:
    """Whether ``model`` answers per output pixel (a ``task: segmentation`` model of any architecture)."""
    return getattr(getattr(model, "cfg", None), "task", "classification") == "segmentation"
