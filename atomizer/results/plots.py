"""Static matplotlib figures of results (notebooks save them next to the results they show).

The served dashboards draw the same data interactively with HoloViews (:mod:`atomizer.dashboard`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr


def table1_bars(
    results: xr.Dataset, metric: str = "macro_map", paper: Mapping[str, Sequence[float]] | None = None, title: str = ""
) -> plt.Figure:
    """Grouped bars: one group per test modality, one bar per model; paper numbers as black ticks."""
    score = results["score"].sel(metric=metric)
    models = [str(m) for m in score.model.values]
    mods = [str(m) for m in score.modality.values]
    fig, ax = plt.subplots(figsize=(1.6 * len(mods) + 2, 3.6))
    width = 0.8 / max(1, len(models))
    x = np.arange(len(mods))
    for i, m in enumerate(models):
        ax.bar(x + i * width - 0.4 + width / 2, score.sel(model=m).values, width, label=m)
        ref = (paper or {}).get(m.split(" ")[0])
        if ref is not None and len(ref) == len(mods):
            ax.scatter(
                x + i * width - 0.4 + width / 2,
                ref,
                marker="_",
                s=200,
                color="k",
                zorder=3,
                label="paper (BigEarthNet)" if i == 0 else None,
            )
    ax.set_xticks(x, mods)
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title(title or f"{metric} per test modality")
    ax.legend(fontsize=8, ncols=2)
    fig.tight_layout()
    return fig


def ci_bars(
    summary, metric: str = "macro_map", paper: Mapping[str, Sequence[float]] | None = None, title: str = ""
) -> plt.Figure:
    """Grouped bars of the seed-mean score per test modality and model, with 95 % CI error bars and every
    seed's score as a dot (:func:`atomizer.results.stats.summarize` output); paper numbers as ticks."""
    models = list(dict.fromkeys(summary["model"]))
    mods = list(dict.fromkeys(summary["modality"]))
    fig, ax = plt.subplots(figsize=(1.6 * len(mods) + 2, 3.8))
    width = 0.8 / max(1, len(models))
    x = np.arange(len(mods))
    for i, m in enumerate(models):
        rows = summary[summary["model"] == m].set_index("modality").loc[mods]
        xi = x + i * width - 0.4 + width / 2
        mean = rows["mean"].to_numpy(float)
        err = np.vstack([mean - rows["ci_low"].to_numpy(float), rows["ci_high"].to_numpy(float) - mean])
        ax.bar(xi, mean, width, yerr=np.clip(err, 0, None), capsize=2, label=m, alpha=0.85)
        for xx, seeds in zip(xi, rows["per_seed"]):
            ax.scatter([xx] * len(seeds), seeds, s=6, color="k", zorder=3)
        ref = (paper or {}).get(m)
        if ref is not None and len(ref) == len(mods):
            ax.scatter(
                xi, ref, marker="_", s=200, color="crimson", zorder=4, label="paper (BigEarthNet)" if i == 0 else None
            )
    ax.set_xticks(x, mods)
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title(title or f"{metric} per test modality: mean, 95 % CI, seeds")
    ax.legend(fontsize=8, ncols=2)
    fig.tight_layout()
    return fig


def difference_bars(diffs, title: str = "") -> plt.Figure:
    """Paired differences ``model - other`` per modality (:func:`atomizer.results.stats.paired_differences`)
    with their 95 % CI; ``*`` marks a Holm-corrected significant difference."""
    others = list(dict.fromkeys(diffs["other"]))
    mods = list(dict.fromkeys(diffs["modality"]))
    fig, ax = plt.subplots(figsize=(1.6 * len(mods) + 2, 3.6))
    width = 0.8 / max(1, len(others))
    x = np.arange(len(mods))
    for i, o in enumerate(others):
        rows = diffs[diffs["other"] == o].set_index("modality").loc[mods]
        xi = x + i * width - 0.4 + width / 2
        d = rows["difference"].to_numpy(float)
        err = np.vstack([d - rows["ci_low"].to_numpy(float), rows["ci_high"].to_numpy(float) - d])
        ax.bar(xi, d, width, yerr=np.clip(err, 0, None), capsize=2, label=f"- {o}")
        for xx, dd, hi, sig in zip(xi, d, rows["ci_high"], rows["significant"]):
            if sig:
                ax.text(xx, max(dd, hi) + 0.5, "*", ha="center", fontsize=12)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(x, mods)
    model = diffs["model"].iloc[0] if len(diffs) else "model"
    ax.set_ylabel(f"{model} minus other (points)")
    ax.set_title(title or "paired difference, 95 % CI (* Holm p < 0.05)")
    ax.legend(fontsize=8, ncols=2)
    fig.tight_layout()
    return fig


def sweep_lines(
    results: xr.Dataset,
    kind: str,
    metric: str = "macro_map",
    paper: Mapping[float, float] | None = None,
    title: str = "",
) -> plt.Figure:
    """Metric against GSD (``kind="gsd"``) or image size (``"size"``), one line per model."""
    coord = "gsd_m" if kind == "gsd" else "size_px"
    score = results["score"].sel(metric=metric)
    fig, ax = plt.subplots(figsize=(5, 3.4))
    xs = results[coord].values
    order = np.argsort(xs)
    for m in score.model.values:
        ax.plot(xs[order], score.sel(model=m).values[order], marker="o", label=str(m))
    if paper:
        px = sorted(paper)
        ax.plot(px, [paper[k] for k in px], "k--", marker="x", label="paper Atomizer (BigEarthNet)")
    ax.set_xlabel("GSD (m/px)" if kind == "gsd" else "image size (px)")
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title(title or f"{metric} vs {'GSD' if kind == 'gsd' else 'size'}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def save(fig: plt.Figure, path: str | Path) -> Path:
    from atomizer.core.storage import atomic_write_bytes

    path = Path(path)
    atomic_write_bytes(path, lambda p: fig.savefig(p, dpi=110, format=path.suffix.lstrip(".") or "png"))
    plt.close(fig)
    return path
