"""Every file a run folder holds, named once: the library, the dashboard, the notebooks and the scripts use these.

A run folder (``train``, ``pretrain``, one run of an experiment)::

    <run>/config.yaml                  the run's configuration (written first)
    <run>/metrics.jsonl                one JSON object per training step and per validation
    <run>/summary.json                 best score, steps, time (written at the end)
    <run>/provenance.json              code version, packages and machine of the run
    <run>/failed.txt                   why the run failed (an experiment's failed run)
    <run>/checkpoints/best.pt          the best validation checkpoint
    <run>/checkpoints/last.pt          the resumable checkpoint (optimizer state)
    <run>/adapters.pt                  adapters trained on a frozen base
    <run>/results.nc                   scores per (model, modality, metric), and its results.json twin
    <run>/predictions.nc               per-image predictions (the statistics' input)
    <run>/sweep_gsd.nc, sweep_size.nc  resolution and size sweeps
    <run>/landscape.nc, landscape_predictions.nc   the generalisation landscape
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
FAILED = "failed.txt"
CHECKPOINTS = "checkpoints"
BEST = "best.pt"
LAST = "last.pt"
ADAPTERS = "adapters.pt"
RESULTS = "results.nc"
PREDICTIONS = "predictions.nc"
LANDSCAPE = "landscape.nc"
LANDSCAPE_PREDICTIONS = "landscape_predictions.nc"
PROVENANCE = "provenance.json"
SWEEP_KINDS = ("gsd", "size")
#: The options a pretraining config (``atomizer pretrain``) has and a training config has not.
PRETRAINING_KEYS = ("sources", "masking", "mask_ratio")


def is_pretraining_config(config: Mapping[str, Any]) -> bool:
    """Whether a run's ``config.yaml`` (read) is a pretraining config: it names image ``sources``, a
    ``masking`` and a ``mask_ratio``, and no ``test_modalities`` (a training config has none of the three)."""
    return all(k in config for k in PRETRAINING_KEYS) and "test_modalities" not in config


def sweep_file(kind: str, predictions: bool = False) -> str:
    """``sweep_<kind>.nc`` (scores) or ``sweep_<kind>_predictions.nc`` (per-image predictions)."""
    if kind not in SWEEP_KINDS:
        raise ValueError(f"unknown sweep kind {kind!r}; choose from {SWEEP_KINDS}")
    return f"sweep_{kind}_predictions.nc" if predictions else f"sweep_{kind}.nc"


@dataclass(frozen=True)
class RunFolder:
    """The paths of one run folder (nothing is read or created by making one)."""

    path: Path

    def __init__(self, path: str | Path):
        object.__setattr__(self, "path", Path(path))

    @property
    def config(self) -> Path:
        return self.path / CONFIG

    @property
    def metrics(self) -> Path:
        return self.path / METRICS

    @property
    def summary(self) -> Path:
        return self.path / SUMMARY

    @property
    def failed(self) -> Path:
        return self.path / FAILED

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def best(self) -> Path:
        return self.checkpoints / BEST

    @property
    def last(self) -> Path:
        return self.checkpoints / LAST

    @property
    def adapters(self) -> Path:
        return self.path / ADAPTERS

    @property
    def results(self) -> Path:
        return self.path / RESULTS

    @property
    def predictions(self) -> Path:
        return self.path / PREDICTIONS

    @property
    def landscape(self) -> Path:
        return self.path / LANDSCAPE

    @property
    def landscape_predictions(self) -> Path:
        return self.path / LANDSCAPE_PREDICTIONS

    @property
    def provenance(self) -> Path:
        return self.path / PROVENANCE

    def sweep(self, kind: str, predictions: bool = False) -> Path:
        return self.path / sweep_file(kind, predictions)

    def is_run(self) -> bool:
        """A run folder: its config, and a metrics log or a failure record."""
        return self.config.is_file() and (self.metrics.exists() or self.failed.exists())
