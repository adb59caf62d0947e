"""Model registry: every trainable model by architecture name, with its config class and presets.

``"atomizer"`` is :class:`atomizer.model.Atomizer`; the baselines (``"resnet"``, ``"vit"``,
``"scalemae"``, ``"perceiver"``) come from :mod:`atomizer.baselines`.
"""

from __future__ import annotations

from typing import Any, Mapping

from torch import nn


def _table() -> dict[str, type]:
    from atomizer.baselines import BASELINES
    from atomizer.model import Atomizer

    return {"atomizer": Atomizer, **BASELINES}


def architectures() -> list[str]:
    return list(_table())


def model_class(arch: str) -> type:
    table = _table()
    if arch not in table:
        raise KeyError(f"unknown model {arch!r}; choose from {', '.join(table)}")
    return table[arch]


def config_class(arch: str) -> type:
    model_class(arch)  # validates the name
    if arch == "atomizer":
        from atomizer.model import AtomizerConfig

        return AtomizerConfig
    from atomizer.baselines import CONFIGS

    return CONFIGS[arch]


def arch_of(model: nn.Module) -> str:
    for name, cls in _table().items():
        if type(model) is cls:
            return name
    raise KeyError(f"{type(model).__name__} is not a registered model")


def config_to_dict(cfg: Any) -> dict:
    return cfg.to_dict()


def build_model(arch: str, preset: str = "tiny", num_classes: int = 19, **overrides: Any) -> nn.Module:
    """A fresh model from a named preset (``tiny``, ``small``, ``paper`` for Atomizer)."""
    cfg = config_class(arch).preset(preset, num_classes=num_classes, **overrides)
    return model_class(arch)(cfg)


def build_from_config(arch: str, cfg: Mapping[str, Any]) -> nn.Module:
    return model_class(arch)(config_class(arch).from_dict(dict(cfg)))


def input_kind(model: nn.Module) -> str:
    """``"atoms"`` for Atomizer, ``"canvas"`` for the baselines."""
    return getattr(getattr(model, "module", model), "input_kind", "atoms")
