"""The data-scaling curve: test score against the number of training images, per model, with 95 % CIs.

Runs trained on a class-stratified fraction of the training folds (``TrainConfig.train_fraction``) are
labelled ``<model>@<percent>%`` (the disjoint notebook's ``train_fraction``, e.g. in
``experiments/eurosat_cv.yaml``); the full runs keep the model's
name. The score is averaged over the test modalities and seeds, its CI bootstrapped over the test images
(:func:`atomizer.results.stats.summarize_over_modalities`).
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from atomizer.core.run_folder import RunFolder
from atomizer.data.datasets import open_dataset, stratified_fraction
from atomizer.results import stats
from atomizer.results._runs import collect_predictions, find_run_dirs, read_config

_LABEL = re.compile(r"^(?P<model>.+?)@(?P<percent>\d+(?:\.\d+)?)%$")


def split_label(label: str) -> tuple[str, float]:
    """``"atomizer@25%"`` -> ``("atomizer", 25.0)``; a plain model name is 100 %."""
    m = _LABEL.match(label)
    return (m["model"], float(m["percent"])) if m else (label, 100.0)


def scaling(root: str | Path, metric: str = "macro_map", n_resamples: int = 1000) -> pd.DataFrame | None:
    """One row per (model, fraction): percent, mean training images per run, mean score, 95 % CI.
    None when the store holds no run of a fraction below 100 %."""
    preds = collect_predictions(root)
    if preds is None or not any(_LABEL.match(str(m)) for m in preds.model.values):
        return None
    sizes: dict[str, list[int]] = {}
    for d in find_run_dirs(root):
        if RunFolder(d).predictions.exists():
            cfg = read_config(d)
            sizes.setdefault(str(cfg.get("label") or cfg.get("model")), []).append(_train_images(cfg))
    s = stats.summarize_over_modalities(preds, metric, n_resamples=n_resamples)
    parts = [split_label(m) for m in s["model"]]
    s = s.assign(
        base_model=[p[0] for p in parts],
        percent=[p[1] for p in parts],
        train_images=[float(pd.Series(sizes.get(m, [float("nan")])).mean()) for m in s["model"]],
    )
    return s.sort_values(["base_model", "percent"]).reset_index(drop=True)


def _train_images(cfg: dict) -> int:
    """How many training images a run's config trains on."""
    ds = open_dataset(
        cfg.get("dataset", "eurosat"), cfg.get("train_split", "train"), cfg.get("data_root"), fold=cfg.get("fold")
    )
    f = float(cfg.get("train_fraction", 1.0))
    n = len(stratified_fraction(ds, f, int(cfg.get("seed", 0)))) if f < 1.0 else len(ds)
    return min(n, int(cfg["train_limit"])) if cfg.get("train_limit") else n
