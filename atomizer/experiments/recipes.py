"""The recipe of record: the training settings that validation selected, in one place.

``configs/``, the notebooks' ``parameters`` cells (literal defaults: notebooks cannot import their
defaults), ``experiments/embedded_demo.yaml``, ``experiments/eurosat_cv.yaml`` and ``make demo`` use
these settings; ``tests/experiments/test_recipe.py`` checks that each of them equals :data:`RECORD`.

Where it was selected (``docs/results.md``): the recipe ablations, on validation folds under the
training modalities only ("What validation says": the ``tiny`` Atomizer without the per-band GSD code
has the highest validation score), then run once against every baseline with 5 folds x 5 seeds
("Summary (2026-12-03)", store ``runs/eurosat_recipe``). The baselines keep the ``small`` preset: none
of them was tuned.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Recipe:
    """Training settings of a comparison: per-model presets and model overrides, and a shared schedule."""

    name: str
    selected_in: str  # where (which document, which section) these settings were chosen
    preset: str  # the preset of every model without its own in ``presets``
    presets: Mapping[str, str] = field(default_factory=dict)  # model -> preset
    model_overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # model -> config overrides
    epochs: int = 12
    batch_size: int = 16
    lr: float = 1e-3
    optimizer: str = "adamw"
    weight_decay: float = 0.01
    warmup_frac: float = 0.1
    grad_clip: float = 1.0
    dataset: str = "eurosat"
    train_modalities: str = "eurosat_train"
    test_modalities: str = "eurosat_test"

    def preset_of(self, model: str) -> str:
        return self.presets.get(model, self.preset)

    def overrides_of(self, model: str) -> dict[str, Any]:
        return _plain(self.model_overrides.get(model, {}))

    def train_options(self, model: str) -> dict[str, Any]:
        """The :class:`~atomizer.engine.training.TrainConfig` fields this recipe sets for ``model``."""
        return {
            "model": model,
            "preset": self.preset_of(model),
            "model_overrides": self.overrides_of(model),
            "dataset": self.dataset,
            "train_modalities": self.train_modalities,
            "test_modalities": self.test_modalities,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "optimizer": self.optimizer,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "warmup_frac": self.warmup_frac,
            "grad_clip": self.grad_clip,
        }

    def notebook_parameters(self) -> dict[str, Any]:
        """The recipe as the training notebooks' parameters (``preset``, ``presets``, ``model_overrides``,
        schedule, modalities): what their ``parameters`` cells default to."""
        return {
            "preset": self.preset,
            "presets": dict(self.presets),
            "model_overrides": {k: _plain(v) for k, v in self.model_overrides.items()},
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "dataset": self.dataset,
            "train_modalities": self.train_modalities,
            "test_modalities": self.test_modalities,
        }


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


#: The recipe of record (see the module docstring for where it was selected).
RECORD = Recipe(
    name="tiny-nogsd",
    selected_in="docs/results.md: recipe ablations on validation folds ('What validation says'); "
    "run of record 'Summary (2026-12-03)' (store runs/eurosat_recipe, 5 folds x 5 seeds)",
    preset="small",
    presets={"atomizer": "tiny"},
    model_overrides={"atomizer": {"encoding": {"gsd_code": False}}},
    epochs=12,
    batch_size=16,
    lr=1e-3,
)

#: The settings of the earlier tables of ``docs/results.md`` ("the demo recipe"): ``small`` everywhere,
#: the per-band GSD code on. Kept to name what those tables used; nothing defaults to it.
DEMO_2026 = Recipe(
    name="small-gsd",
    selected_in="docs/results.md: 'Protocol and statistics' (fixed before the runs, not selected)",
    preset="small",
)
