"""The generalisation landscape: each model's score on a grid of modalities around its training
modalities, against the distance from them (:func:`atomizer.data.modalities.modality_distance`).

Runs are evaluated with :func:`atomizer.experiments.run_landscape` (the landscape of
:func:`atomizer.experiments.landscape_set`: GSD x size with the first training band set, and band sets
at the first training geometry, plus the training modalities themselves at distance 0). Scores and their
95 % CIs come from the per-image predictions like every other result (:func:`atomizer.results.stats.summarize`).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from atomizer.core.run_folder import LANDSCAPE_PREDICTIONS
from atomizer.data.modalities import Modality, load_modalities, modality_distance
from atomizer.results import stats
from atomizer.results._runs import collect_predictions

__all__ = ["LANDSCAPE_PREDICTIONS", "kind_of", "landscape"]


def kind_of(name: str) -> str:
    """``train`` (a training modality), ``geometry`` (``g<gsd>_s<size>``) or ``bands`` (``b_<set>``)."""
    return "bands" if name.startswith("b_") else "geometry" if name.startswith("g") and "_s" in name else "train"


def landscape(
    root: str | Path, train_modalities: str | Path, metric: str = "macro_map", n_resamples: int = 1000
) -> pd.DataFrame | None:
    """One row per (model, landscape modality): size, GSD, bands, kind, the distances, mean and 95 % CI.
    None when no run under ``root`` has landscape predictions."""
    preds = collect_predictions(root, LANDSCAPE_PREDICTIONS)
    if preds is None:
        return None
    train = load_modalities(train_modalities).modalities
    summary = stats.summarize(preds, metric, n_resamples=n_resamples)
    rows = []
    for name in preds.modality.values:
        m = Modality(
            str(name),
            int(preds.size_px.sel(modality=name)),
            float(preds.gsd_m.sel(modality=name)),
            tuple(str(preds.bands.sel(modality=name).item()).split()),
        )
        rows.append(
            {
                "modality": m.name,
                "size_px": m.size_px,
                "gsd_m": m.gsd_m,
                "bands": " ".join(m.bands),
                "kind": kind_of(m.name),
                **{f"distance_{k}": v for k, v in modality_distance(m, train).items()},
            }
        )
    return summary.merge(pd.DataFrame(rows), on="modality")
