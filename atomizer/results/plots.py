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
