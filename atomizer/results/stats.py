"""Statistics of repeated experiments: computed from the per-image predictions, never guessed.

The unit is one model's predictions on the test images of one modality for one seed. With k-fold
cross-validation the folds of a seed are pooled, so every image is tested exactly once per seed and the
score of a seed is the metric over all images (:func:`atomizer.results.store.collect_predictions`).

* ``mean`` and ``sd``: over seeds (``sd`` is NaN for one seed); ``folds`` and ``seeds`` say what was run.
* 95 % CI: :func:`scipy.stats.bootstrap` over the test images (BCa up to 5,000 images, percentile
  beyond, where the jackknife of BCa would cost too much), the statistic being the seed-mean metric on the
  resampled images. The interval is conditional on the trained seeds: it reflects the test-image sample;
  the seed-to-seed spread is reported separately (``sd``, ``per_seed``). The paired test and the CI of a
  difference pair the same images for both models.
* Paired difference (model - reference), per modality: the same images resampled for both models
  (a paired bootstrap CI), and a paired permutation test over images
  (:func:`scipy.stats.permutation_test`, ``permutation_type="samples"``: per image, the two models'
  predictions are exchanged), two-sided; p-values corrected for the number of modalities with Holm
  (:func:`statsmodels.stats.multitest.multipletests`).

Metrics: ``macro_map`` (per-class average precision averaged over the classes present, in %, the same
definition as :mod:`atomizer.engine.metrics`), single-label ``top1`` (%), and for segmentation ``miou`` (%):
each image's "scores" are then its confusion matrix, C x C values, and a resample's mIoU is that of the
resampled images' summed matrix (:func:`atomizer.engine.metrics.segmentation_scores`'s definition).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
import xarray as xr
from scipy import stats
from statsmodels.stats.multitest import multipletests

from atomizer.engine.metrics import batched_average_precision

METRICS = ("macro_map", "top1", "miou")
ALPHA = 0.05
#: Above this many test images the CI is a percentile interval (BCa's jackknife costs n evaluations).
BCA_MAX_IMAGES = 5000
#: Memory of one batch of resampled predictions.
BATCH_BYTES = 512 * 2**20


def metric_values(scores: np.ndarray, targets: np.ndarray, metric: str) -> np.ndarray:
    """The metric (%) of ``scores`` (..., n, C) against ``targets`` (..., n, C) 0/1, over the last two axes."""
    if metric == "macro_map":
        return 100 * np.nanmean(batched_average_precision(scores, targets), axis=-1)
    if metric == "miou":  # scores: per-image confusion matrices, flattened (..., n, C * C)
        c = int(round(np.sqrt(scores.shape[-1])))
        conf = scores.reshape(*scores.shape[:-1], c, c).sum(axis=-3)  # (..., C, C)
        tp = np.diagonal(conf, axis1=-2, axis2=-1)
        union = conf.sum(-1) + conf.sum(-2) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
        return 100 * np.nanmean(iou, axis=-1)
    if metric == "top1":
        hit = np.take_along_axis(targets, np.argmax(scores, axis=-1)[..., None], axis=-1)[..., 0]
        return 100 * hit.mean(axis=-1)
    raise KeyError(f"unknown metric {metric!r}; choose from {METRICS}")


def _seed_mean(preds: np.ndarray, targets: np.ndarray, idx: np.ndarray, metric: str) -> np.ndarray:
    """Seed-mean metric for index resamples ``idx`` (..., n) of the images; ``preds`` (S, n, C)."""
    p = preds[:, idx]  # (S, ..., n, C)
    t = np.broadcast_to(targets[idx], p.shape)
    return metric_values(p, t, metric).mean(axis=0)


def batch_for(n: int, width: int) -> int:
    """Resamples per batch so that one batch of gathered predictions (``width`` floats per image) stays
    within :data:`BATCH_BYTES`."""
    return int(max(1, min(200, BATCH_BYTES // max(1, n * width * 8))))


def _bootstrap(fn, n: int, n_resamples: int, seed: int, width: int = 1) -> tuple[float, float]:
    """95 % interval of ``fn(index resample)`` (BCa up to :data:`BCA_MAX_IMAGES` images, percentile above);
    resamples are evaluated in batches sized to :data:`BATCH_BYTES`; a degenerate bootstrap distribution
    (every resample giving the same value, e.g. identical predictions) has that value as both bounds."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        res = stats.bootstrap(
            (np.arange(n),),
            lambda idx, axis=-1: fn(idx),
            vectorized=True,
            n_resamples=n_resamples,
            batch=batch_for(n, width),
            method="BCa" if n <= BCA_MAX_IMAGES else "percentile",
            confidence_level=1 - ALPHA,
            random_state=np.random.default_rng(seed),
        )
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if np.isnan(lo) or np.isnan(hi):
        dist = res.bootstrap_distribution
        lo, hi = (float(np.nanpercentile(dist, 100 * q)) for q in (ALPHA / 2, 1 - ALPHA / 2))
    return lo, hi


def summarize(preds: xr.Dataset, metric: str = "macro_map", n_resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per (model, modality): seeds, folds, per-seed scores, mean, sd and the 95 % bootstrap CI.

    Args:
        preds: :func:`atomizer.results.store.collect_predictions` (``score`` over (model, seed, modality,
            image, class), ``target`` over (image, class)).
        metric: ``macro_map`` or ``top1``.
    """
    rows = []
    targets = preds["target"].values
    n = targets.shape[0]
    for m in preds.model.values:
        for mod in preds.modality.values:
            p = preds["score"].sel(model=m, modality=mod).values  # (S, n, C)
            ok = ~np.isnan(p).any(axis=(1, 2))
            p = p[ok]
            if not len(p):  # no seed covers every image (folds unfinished): nothing to report from
                continue
            per_seed = metric_values(p, np.broadcast_to(targets, p.shape), metric)
            lo, hi = _bootstrap(
                lambda idx, p=p: _seed_mean(p, targets, idx, metric),
                n,
                n_resamples,
                seed,
                width=p.shape[0] * p.shape[-1],
            )
            rows.append(
                {
                    "model": str(m),
                    "modality": str(mod),
                    "metric": metric,
                    "seeds": int(ok.sum()),
                    "folds": int(preds.attrs.get("folds", 1)),
                    "images": n,
                    "per_seed": [round(float(v), 3) for v in per_seed],
                    "mean": float(per_seed.mean()),
                    "sd": float(per_seed.std(ddof=1)) if len(per_seed) > 1 else float("nan"),
                    "ci_low": lo,
                    "ci_high": hi,
                }
            )
    return pd.DataFrame(rows)


def summarize_over_modalities(
    preds: xr.Dataset, metric: str = "macro_map", n_resamples: int = 2000, seed: int = 0
) -> pd.DataFrame:
    """Per model: the score averaged over every test modality and seed, and its 95 % bootstrap CI (the same
    test images resampled for all modalities). Seeds missing an image on any modality are left out."""
    targets = preds["target"].values
    n = targets.shape[0]
    rows = []
    for m in preds.model.values:
        p = preds["score"].sel(model=m).values  # (S, M, n, C)
        p = p[~np.isnan(p).any(axis=(1, 2, 3))]
        if not len(p):  # no seed covers every image on every modality
            continue

        def stat(idx, p=p):
            q = p[:, :, idx]  # (S, M, ..., n, C)
            return metric_values(q, np.broadcast_to(targets[idx], q.shape), metric).mean(axis=(0, 1))

        per_seed = metric_values(p, np.broadcast_to(targets, p.shape), metric).mean(axis=1)
        lo, hi = _bootstrap(stat, n, n_resamples, seed, width=p.shape[0] * p.shape[1] * p.shape[-1])
        rows.append(
            {
                "model": str(m),
                "metric": metric,
                "seeds": len(p),
                "images": n,
                "per_seed": [round(float(v), 3) for v in per_seed],
                "mean": float(per_seed.mean()),
                "ci_low": lo,
                "ci_high": hi,
            }
        )
    return pd.DataFrame(rows)


def paired_differences(
    preds: xr.Dataset,
    model: str,
    others: Sequence[str] | None = None,
    metric: str = "macro_map",
    n_resamples: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """Per (other model, modality): the seed-mean difference ``model - other``, its paired 95 % CI, the
    permutation p-value, and the Holm-corrected p-value over the modalities (per pair); ``significant``
    at 5 %. Only seeds present for both models are paired.
    """
    names = [str(x) for x in preds.model.values]
    if model not in names:
        raise KeyError(f"model {model!r} not in the results ({', '.join(names)})")
    targets = preds["target"].values
    n = targets.shape[0]
    t2 = np.concatenate([targets, targets])
    rows = []
    for other in others or [x for x in names if x != model]:
        block = []
        for mod in preds.modality.values:
            a = preds["score"].sel(model=model, modality=mod).values
            b = preds["score"].sel(model=other, modality=mod).values
            ok = ~(np.isnan(a).any(axis=(1, 2)) | np.isnan(b).any(axis=(1, 2)))
            a, b = a[ok], b[ok]
            if not len(a):  # no seed where both models cover every image
                continue
            both = np.concatenate([a, b], axis=1)  # (S, 2n, C): the n images of a, then those of b

            def diff_idx(idx, a=a, b=b):
                return _seed_mean(a, targets, idx, metric) - _seed_mean(b, targets, idx, metric)

            def perm_stat(x, y, axis=-1, both=both):
                return _seed_mean(both, t2, x, metric) - _seed_mean(both, t2, y, metric)

            lo, hi = _bootstrap(diff_idx, n, n_resamples, seed, width=2 * a.shape[0] * a.shape[-1])
            perm = stats.permutation_test(
                (np.arange(n), np.arange(n) + n),
                perm_stat,
                permutation_type="samples",
                vectorized=True,
                n_resamples=n_resamples,
                batch=batch_for(2 * n, a.shape[0] * a.shape[-1]),
                alternative="two-sided",
                random_state=np.random.default_rng(seed),
            )
            block.append(
                {
                    "model": model,
                    "other": str(other),
                    "modality": str(mod),
                    "metric": metric,
                    "seeds": int(ok.sum()),
                    "difference": float(diff_idx(np.arange(n))),
                    "ci_low": lo,
                    "ci_high": hi,
                    "p_value": float(perm.pvalue),
                }
            )
        if not block:
            continue
        reject, p_holm, _, _ = multipletests([r["p_value"] for r in block], alpha=ALPHA, method="holm")
        for r, p_adj, rej in zip(block, p_holm, reject):
            r["p_holm"] = float(p_adj)
            r["significant"] = bool(rej)
        rows += block
    return pd.DataFrame(rows)


def mean_ci_table(summary: pd.DataFrame, digits: int = 1) -> pd.DataFrame:
    """``model x modality`` table of "mean [95 % CI]" strings, plus the mean over modalities."""
    fmt = summary.assign(
        text=[
            f"{m:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"
            for m, lo, hi in zip(summary["mean"], summary["ci_low"], summary["ci_high"])
        ]
    )
    table = fmt.pivot(index="model", columns="modality", values="text")
    table["mean"] = summary.groupby("model")["mean"].mean().map(lambda v: f"{v:.{digits}f}")
    return table


def verdict(diffs: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Who wins where: an ``other x modality`` table of the differences ``model - other`` with
    significance marks (``*``: Holm-corrected p < 0.05 and the CI excludes 0), and a plain-words verdict."""
    sig = diffs["significant"] & ((diffs["ci_low"] > 0) | (diffs["ci_high"] < 0))
    mark = diffs.assign(text=[f"{d:+.1f}{'*' if s else ''}" for d, s in zip(diffs["difference"], sig)])
    table = mark.pivot(index="other", columns="modality", values="text")
    lines = []
    for other, g in diffs.assign(sig=sig).groupby("other", sort=False):
        m = g["model"].iloc[0]
        ahead = g[g["sig"] & (g["difference"] > 0)]["modality"].tolist()
        behind = g[g["sig"] & (g["difference"] < 0)]["modality"].tolist()
        unclear = [x for x in g["modality"] if x not in ahead + behind]
        parts = [f"against {other}, {m} is"]
        parts.append(f"significantly ahead on {', '.join(ahead)}" if ahead else "significantly ahead nowhere")
        if behind:
            parts.append(f"significantly behind on {', '.join(behind)}")
        if unclear:
            parts.append(f"not distinguishable on {', '.join(unclear)}")
        lines.append(parts[0] + " " + "; ".join(parts[1:]) + ".")
    return table, " ".join(lines)
