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


def landscape_plot(df, title: str = "") -> plt.Figure:
    """Score against distance from the training modalities, per model, with 95 % CIs: geometry (GSD x
    size, the training band set) and band sets (the training geometry); training modalities at 0 (stars)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, kind, col, label in (
        (axes[0], "geometry", "distance_geometry", "geometry distance (octaves of GSD, size)"),
        (axes[1], "bands", "distance_bands", "band-set distance (1 - Jaccard)"),
    ):
        for i, (model, g) in enumerate(df.groupby("model", sort=False)):
            c = colours[i % len(colours)]
            part = g[g["kind"].isin([kind, "train"])].sort_values(col)
            pts = part[part["kind"] == kind]
            ax.errorbar(
                pts[col],
                pts["mean"],
                yerr=[pts["mean"] - pts["ci_low"], pts["ci_high"] - pts["mean"]],
                fmt="o",
                ms=4,
                capsize=2,
                color=c,
                alpha=0.8,
                label=str(model),
            )
            tr = part[part["kind"] == "train"]
            ax.scatter(tr[col], tr["mean"], marker="*", s=90, color=c, edgecolor="k", zorder=3)
            if kind == "bands":
                for _, r in pts.iterrows():
                    ax.annotate(
                        r["modality"][2:], (r[col], r["mean"]), fontsize=6, xytext=(2, 2), textcoords="offset points"
                    )
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    metric = df["metric"].iloc[0] if len(df) else "score"
    axes[0].set_ylabel(f"{metric} (%)")
    axes[0].legend(fontsize=8)
    fig.suptitle(title or "generalisation landscape (stars: the training modalities)", fontsize=10)
    fig.tight_layout()
    return fig


def scaling_plot(df, title: str = "") -> plt.Figure:
    """Score (mean over test modalities and seeds) against training images, per model, with 95 % CIs
    (:func:`atomizer.results.scaling.scaling`)."""
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    for model, g in df.groupby("base_model", sort=False):
        g = g.sort_values("train_images")
        ax.errorbar(
            g["train_images"],
            g["mean"],
            yerr=[g["mean"] - g["ci_low"], g["ci_high"] - g["mean"]],
            marker="o",
            capsize=3,
            label=str(model),
        )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("training images per run (log scale)")
    metric = df["metric"].iloc[0] if len(df) else "score"
    ax.set_ylabel(f"{metric} (%), mean of test modalities")
    ax.set_title(title or "data scaling (95 % CI)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def sweep_ci_lines(summary, kind: str, paper: Mapping[float, float] | None = None, title: str = "") -> plt.Figure:
    """Sweep with repeats: the seed-mean score against GSD or size per model, a 95 % CI band, each seed as
    a dot (:func:`atomizer.results.stats.summarize` output joined with ``size_px`` / ``gsd_m``)."""
    coord = "gsd_m" if kind == "gsd" else "size_px"
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    for model, g in summary.groupby("model", sort=False):
        g = g.sort_values(coord)
        line = ax.plot(g[coord], g["mean"], marker="o", label=str(model))[0]
        ax.fill_between(g[coord], g["ci_low"], g["ci_high"], color=line.get_color(), alpha=0.2)
        for x, seeds in zip(g[coord], g["per_seed"]):
            ax.scatter([x] * len(seeds), seeds, s=6, color=line.get_color())
    if paper:
        px = sorted(paper)
        ax.plot(px, [paper[k] for k in px], "k--", marker="x", label="paper Atomizer (BigEarthNet)")
    ax.set_xlabel("GSD (m/px)" if kind == "gsd" else "image size (px)")
    metric = summary["metric"].iloc[0] if len(summary) else "score"
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title(title or f"{metric} vs {'GSD' if kind == 'gsd' else 'size'} (mean, 95 % CI, seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
