"""Notebook parameters as a :class:`~atomizer.core.config.Config`: checked once, before any work.

Each notebook's first code cell calls ``check_parameters(globals())``: the names it declares that this
config knows are validated in one pass, types by the config base (pydantic) and ranges and names by
:meth:`NotebookParameters.__post_init__`; a bad value stops the run at once with one line naming the
parameter, its value and what would be accepted, instead of failing minutes later.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, cast

from pydantic import StrictInt

from atomizer.core.config import Config, ConfigError


class ParameterError(ConfigError):
    """A notebook parameter that cannot run; the message names the parameter and the value."""


def param_list(value: Any, cast: Any = str) -> list:
    """A notebook's list parameter as a list: papermill's ``-p`` passes ``"atomizer,resnet"`` or ``"[0, 1]"``
    as strings and ``-p seeds 0`` as a scalar; a list passes through. Items are converted with ``cast``."""
    if isinstance(value, str):
        value = [x.strip() for x in value.strip("[]").replace("'", "").replace('"', "").split(",") if x.strip()]
    elif not isinstance(value, (list, tuple)):
        value = [value]
    return [cast(x) for x in value]


#: A list parameter as papermill may pass it (a list, or a string / scalar from ``-p``: :func:`param_list`).
ListParam = list | str | int | float

_POSITIVE = ("epochs", "batch_size", "n_resamples", "pretrain_steps", "pretrain_batch_size", "finetune_epochs",
             "adapt_epochs", "size_px", "adapt_size_px")  # fmt: skip
_NON_NEGATIVE = ("max_steps", "train_limit", "val_limit", "num_workers", "pretrain_limit", "threads", "seed")
_METRICS = ("macro_map", "top1", "micro_map", "overall_accuracy")
#: The notebook parameter ``kind`` (sweep notebook) is the field ``sweep`` (``kind`` names the config itself).
_RENAMED = {"kind": "sweep"}


@dataclass
class NotebookParameters(Config):
    """Every parameter a shipped notebook declares; ``None``: the notebook does not declare it."""

    kind: ClassVar[str] = "notebook parameters"

    # data and modalities
    dataset: str | None = None
    data_root: str | None = None
    train_modalities: str | None = None
    test_modalities: str | None = None
    pretrain_modalities: str | None = None
    pretrain_sources: list | None = None
    pretrain: dict | None = None  # disjoint notebook: model -> pretraining config (path or fields), per fold
    pretrain_overrides: dict | None = None
    pretrain_dir: str | None = None
    # models and the recipe
    model: str | None = None
    models: ListParam | None = None
    preset: str | None = None
    presets: dict | None = None
    model_overrides: dict | None = None
    label: str | None = None
    train_fraction: float | None = None
    train_options: dict | None = None
    reference: str | None = None
    # schedule
    epochs: StrictInt | None = None
    max_steps: StrictInt | None = None
    batch_size: StrictInt | None = None
    lr: float | None = None
    train_limit: StrictInt | None = None
    val_limit: StrictInt | None = None
    seed: StrictInt | None = None
    seeds: ListParam | None = None
    folds: ListParam | None = None
    device: str | None = None
    num_workers: StrictInt | None = None
    threads: StrictInt | None = None
    # pretraining and adapters
    maskings: ListParam | None = None
    mask_ratio: float | None = None
    pretrain_steps: StrictInt | None = None
    pretrain_batch_size: StrictInt | None = None
    pretrain_lr: float | None = None
    pretrain_limit: StrictInt | None = None
    finetune_epochs: StrictInt | None = None
    adapt_bands: ListParam | None = None
    adapt_size_px: StrictInt | None = None
    adapt_gsd_m: float | None = None
    adapt_epochs: StrictInt | None = None
    adapter_lr: float | None = None
    adapter_variants: dict | None = None
    spectralx_variants: dict | None = None
    adapt_baselines: dict | None = None
    baseline_preset: str | None = None
    adapt_reference: str | None = None
    # sweeps, landscape, statistics
    sweep: str | None = None  # the sweep notebook's ``kind``: "gsd" or "size"
    values: ListParam | None = None
    run_dir: str | None = None
    store: str | None = None
    gsds: ListParam | None = None
    size_fractions: ListParam | None = None
    metric: str | None = None
    n_resamples: StrictInt | None = None
    # encodings view
    image: str | None = None
    sensors: ListParam | None = None
    gsd_m: float | None = None
    size_px: StrictInt | None = None
    # where
    output_dir: str | None = None
    repo_root: str | None = None

    def _bad(self, name: str, why: str) -> ValueError:
        shown = "kind" if name == "sweep" else name
        return ValueError(f"notebook parameter {shown!r} = {getattr(self, name)!r}: {why}")

    def _list(self, name: str, cast: Any = str) -> list:
        try:
            return param_list(getattr(self, name), cast)
        except (TypeError, ValueError):
            raise self._bad(name, f"expected a list of {cast.__name__}") from None

    def given(self) -> dict[str, Any]:
        """The parameters that were given (not ``None``)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}

    def __post_init__(self) -> None:
        self._check_numbers()
        models = self._check_models()
        self._check_choices()
        sets = self._check_modalities()
        self._check_repeats()
        self._check_training(models)
        self._check_pretrain()
        self._check_adaptations()
        self._check_sweep(sets.get("test_modalities"))

    def _check_numbers(self) -> None:
        for name in _POSITIVE + _NON_NEGATIVE:
            v = getattr(self, name)
            if v is not None and v < (1 if name in _POSITIVE else 0):
                raise self._bad(name, f"must be >= {1 if name in _POSITIVE else 0}")
        for name in ("lr", "pretrain_lr", "adapter_lr", "gsd_m", "adapt_gsd_m"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise self._bad(name, "must be a positive number")
        if self.mask_ratio is not None and not 0 < self.mask_ratio < 1:
            raise self._bad("mask_ratio", "must be in (0, 1)")
        if self.train_fraction is not None and not 0 < self.train_fraction <= 1:
            raise self._bad("train_fraction", "must be in (0, 1]")
        for name in ("gsds", "size_fractions"):
            if getattr(self, name) is not None:
                vals = self._list(name, float)
                if not vals or min(vals) <= 0 or (name == "size_fractions" and max(vals) > 1):
                    raise self._bad(name, "expected positive numbers" + (" <= 1" if name == "size_fractions" else ""))

    def _check_models(self) -> list[str]:
        """The architectures the notebook trains (checked: names, presets, overrides)."""
        from atomizer.models.registry import architectures, config_class

        # ``models`` names architectures to train, except where a notebook reads a results store: there they
        # are the labels of its runs (``atomizer-tiny``, ``resnet@25%``), which the store itself checks
        models = self._list("models") if self.models is not None and self.store is None else []
        if self.model:
            models.append(str(self.model))
        where = "models" if self.models is not None and self.store is None else "model"
        for m in models:
            if m not in architectures():
                raise self._bad(where, f"unknown model {m!r}; choose from {', '.join(architectures())}")
        for name in ("presets", "model_overrides"):
            for m in getattr(self, name) or {}:
                if m not in architectures():
                    raise self._bad(name, f"unknown model {m!r}; choose from {', '.join(architectures())}")
        if self.preset is not None or self.presets or self.model_overrides:
            presets, overrides = self.presets or {}, self.model_overrides or {}
            for m in dict.fromkeys([*(models or ["atomizer"]), *presets, *overrides]):
                preset = str(presets.get(m, self.preset or "tiny"))
                try:
                    cast(Any, config_class(m)).preset(preset, num_classes=2, **overrides.get(m, {}))
                except (KeyError, ValueError, TypeError) as e:
                    name = "presets" if m in presets else "preset"
                    if m in overrides and not isinstance(e, KeyError):
                        name = "model_overrides"
                    raise self._bad(name, f"{m}: {e.args[0] if e.args else e}") from None
        pretrained = [f"{m}+pretrained" for m in self.pretrain or {}]
        if self.reference is not None and models and self.reference not in models + pretrained:
            raise self._bad("reference", f"not one of the models {models}")
        if self.label:
            from atomizer.experiments.steps import run_label, run_path

            for m in models or ["atomizer"]:
                try:
                    run_path("store", run_label(m, models, self.label), 0, None)
                except ValueError as e:
                    raise self._bad("label", str(e)) from None
        return models

    def _check_choices(self) -> None:
        if self.metric is not None and self.metric not in _METRICS:
            raise self._bad("metric", "choose macro_map, top1, micro_map or overall_accuracy")
        if self.device is not None:
            from atomizer.core.runtime import pick_device

            try:
                pick_device(str(self.device))
            except (RuntimeError, ValueError) as e:
                raise self._bad("device", str(e)) from None
        if self.maskings is not None:
            from atomizer.atoms.masking import MASKINGS

            for k in self._list("maskings"):
                if k not in MASKINGS:
                    raise self._bad("maskings", f"unknown masking {k!r}; choose from {', '.join(MASKINGS)}")
        if self.sensors is not None:
            from atomizer.data.bands import get_sensor

            for s in self._list("sensors"):
                try:
                    get_sensor(s)
                except (KeyError, ValueError, OSError) as e:
                    raise self._bad("sensors", str(e.args[0] if e.args else e)) from None
        if self.sweep is not None:
            from atomizer.core.run_folder import SWEEP_KINDS

            if self.sweep not in SWEEP_KINDS:
                raise self._bad("sweep", f"choose {' or '.join(map(repr, SWEEP_KINDS))}")

    def _check_modalities(self) -> dict[str, Any]:
        from atomizer.data.modalities import load_modalities

        sets = {}
        for name in ("train_modalities", "test_modalities", "pretrain_modalities"):
            if getattr(self, name):
                try:
                    sets[name] = load_modalities(str(getattr(self, name)))
                except (OSError, ValueError, KeyError) as e:
                    raise self._bad(name, str(e.args[0] if e.args else e)) from None
        return sets

    def _check_repeats(self) -> None:
        if self.seeds is not None and not self._list("seeds", int):
            raise self._bad("seeds", "give at least one seed")
        if self.folds:
            from atomizer.data.datasets import dataset_folds

            folds = self._list("folds", int)
            try:
                table = dataset_folds(str(self.dataset or "eurosat"), self.data_root or None)
            except (OSError, KeyError, ValueError) as e:
                raise self._bad("folds", str(e.args[0] if e.args else e)) from None
            known = sorted(int(f) for f in table["fold"].unique())
            if any(f not in known for f in folds):
                raise self._bad("folds", f"the dataset's fold assignment has folds {known}")

    def _check_training(self, models: list[str]) -> None:
        """Options handed to the training config as they are (``train_options``, the dataset): its names."""
        if not (self.train_options or (self.dataset and models)):
            return
        from atomizer.engine.training import TrainConfig

        fields = set(TrainConfig.field_names())
        unknown = sorted(set(self.train_options or {}) - fields)
        if unknown:
            raise self._bad("train_options", f"unknown training option(s) {unknown}")
        try:
            TrainConfig.from_dict({**(self.train_options or {}), "model": (models or ["atomizer"])[0], "out_dir": "-"})
        except (ConfigError, TypeError) as e:
            raise self._bad("train_options", str(e.args[0] if e.args else e)) from None

    def _check_pretrain(self) -> None:
        """``pretrain``: each model's pretraining config must load (with ``pretrain_overrides``) and pretrain
        that model; nothing is read from the sources here."""
        if not self.pretrain and not self.pretrain_overrides:
            return
        from pathlib import Path

        from atomizer.engine.pretraining import PretrainConfig

        known = set(PretrainConfig.field_names()) - {"out_dir", "sources"}
        unknown = sorted(set(self.pretrain_overrides or {}) - known)
        if unknown:
            raise self._bad("pretrain_overrides", f"unknown pretraining field(s) {unknown}")
        for m, spec in (self.pretrain or {}).items():
            try:
                if isinstance(spec, str):
                    if not Path(spec).is_file():
                        raise ValueError(f"{m}: no pretraining config {spec!r}")
                    cfg = PretrainConfig.from_yaml(spec, **(self.pretrain_overrides or {}))
                elif isinstance(spec, Mapping):
                    cfg = PretrainConfig.from_dict({**spec, **(self.pretrain_overrides or {})})
                else:
                    raise ValueError(f"{m}: expected a config path or a mapping of pretraining fields")
            except (ConfigError, OSError, TypeError, ValueError) as e:
                raise self._bad("pretrain", str(e.args[0] if e.args else e)) from None
            if cfg.model != m:
                raise self._bad("pretrain", f"{m}: the config pretrains {cfg.model!r}")

    def _check_adaptations(self) -> None:
        """Adapter specs of the beyond notebook: each must be an adapter config, each SpectralX variant an
        adaptation config, each adapted baseline a canvas transformer (nothing is trained here)."""
        from atomizer.engine.adaptation import AdaptConfig
        from atomizer.models.adapters import AdapterConfig, AdapterError
        from atomizer.models.registry import architectures

        for name, spec in (self.adapter_variants or {}).items():
            try:
                AdapterConfig.from_any(spec)
            except AdapterError as e:
                raise self._bad("adapter_variants", f"{name}: {e}") from None
        for name, spec in (self.spectralx_variants or {}).items():
            try:
                AdaptConfig.from_dict({"base": "-", **dict(spec)})
            except (ConfigError, TypeError, ValueError) as e:
                raise self._bad("spectralx_variants", f"{name}: {e.args[0] if e.args else e}") from None
        for model, variants in (self.adapt_baselines or {}).items():
            if model not in ("vit", "scalemae", "s2mae"):
                known = [m for m in architectures() if m in ("vit", "scalemae", "s2mae")]
                raise self._bad("adapt_baselines", f"{model!r}: adapters fit the canvas transformers {known}")
            for name, spec in dict(variants).items():
                try:
                    AdapterConfig.from_any(spec)
                except AdapterError as e:
                    raise self._bad("adapt_baselines", f"{model} {name}: {e}") from None

    def _check_sweep(self, test: Any) -> None:
        if self.sweep is None or self.values is None:
            return
        from atomizer.experiments.steps import SWEEP_VALUES

        values = self._list("values", float) or [float(v) for v in SWEEP_VALUES[self.sweep]]
        if test is not None:
            extent = test.source_size_px * test.source_gsd_m
            limit = test.source_size_px if self.sweep == "size" else extent
            too_big = [v for v in values if v <= 0 or v > limit]
            if too_big:
                unit = "px" if self.sweep == "size" else "m"
                raise self._bad("values", f"{too_big} outside (0, {limit:g}] {unit}: the source image is "
                                f"{test.source_size_px} px at {test.source_gsd_m:g} m ({extent:g} m)")  # fmt: skip


def check_parameters(params: Mapping[str, Any], sweep: str | None = None) -> NotebookParameters:
    """Validate a notebook's parameters (``check_parameters(globals())``: names that are not notebook
    parameters are ignored) in one pass; returns them as a :class:`NotebookParameters`.

    Args:
        params: The notebook's parameters by name (papermill's injected values included).
        sweep: ``"gsd"`` or ``"size"``: the sweep kind when ``params`` has no ``kind``.

    Raises:
        ParameterError: One line naming the first bad parameter.
    """
    known = set(NotebookParameters.field_names())
    given = {_RENAMED.get(k, k): v for k, v in params.items() if not k.startswith("_")}
    given = {k: v for k, v in given.items() if k in known}
    if sweep is not None:
        given.setdefault("sweep", sweep)
    try:
        return NotebookParameters.from_dict(given)
    except ConfigError as e:
        raise ParameterError(str(e)) from None
