"""Classification metrics, from torchmetrics (no hand-written average precision).

Multi-label (BigEarthNet): ``macro_map`` (the paper's metric: per-class AP averaged over the classes
that have at least one positive in the evaluated set), ``micro_map`` and ``overall_accuracy``
(element-wise accuracy of the 0.5-thresholded sigmoid). Single-label (EuroSAT): ``top1`` and
``macro_map`` (one-vs-rest AP averaged over classes present in the targets). All in percent.
"""

from __future__ import annotations

import torch
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_average_precision,
    multilabel_accuracy,
    multilabel_average_precision,
)

MULTILABEL_METRICS = ("macro_map", "micro_map", "overall_accuracy")
SINGLELABEL_METRICS = ("top1", "macro_map")


def multilabel_metrics(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """logits, targets: (n, C); targets multi-hot."""
    probs = logits.float().sigmoid()
    t = targets.long()
    present = t.sum(0) > 0
    if not bool(present.any()):
        raise ValueError("no positive label in the evaluated set: average precision is undefined")
    per_class = multilabel_average_precision(
        probs[:, present], t[:, present], num_labels=int(present.sum()), average=None
    )
    micro = multilabel_average_precision(probs, t, num_labels=t.shape[1], average="micro")
    acc = multilabel_accuracy(probs, t, num_labels=t.shape[1], average="micro")
    return {
        "macro_map": 100 * float(per_class.mean()),
        "micro_map": 100 * float(micro),
        "overall_accuracy": 100 * float(acc),
    }


def singlelabel_metrics(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """logits (n, C); targets (n,) class indices."""
    c = logits.shape[1]
    probs = logits.float().softmax(-1)
    t = targets.long()
    top1 = multiclass_accuracy(probs, t, num_classes=c, average="micro")
    ap = multiclass_average_precision(probs, t, num_classes=c, average=None)
    present = torch.bincount(t, minlength=c) > 0
    return {"top1": 100 * float(top1), "macro_map": 100 * float(ap[present].mean())}


def classification_metrics(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Multi-label metrics for 2-D targets, single-label for 1-D."""
    return multilabel_metrics(logits, targets) if targets.ndim == 2 else singlelabel_metrics(logits, targets)


def metric_names(multilabel: bool) -> tuple[str, ...]:
    return MULTILABEL_METRICS if multilabel else SINGLELABEL_METRICS


def batched_average_precision(scores, targets):
    """Average precision of many resamples at once (NumPy), with torchmetrics' and scikit-learn's definition.

    ``AP = sum over thresholds (R_k - R_{k-1}) P_k`` at the distinct scores (tied scores form one
    threshold), computed for every leading index and class in one pass: the statistic that bootstrap and
    permutation tests evaluate thousands of times (:mod:`atomizer.results.stats`). Equal to
    :func:`torchmetrics.functional.classification.binary_average_precision` per column (tested, ties
    included).

    Args:
        scores: (..., n, C) scores (probabilities or logits).
        targets: (..., n, C) 0/1 relevance.

    Returns:
        (..., C) AP in [0, 1]; NaN for a column without a positive.
    """
    import numpy as np

    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(targets, dtype=np.float64)
    order = np.argsort(-s, axis=-2, kind="stable")
    s = np.take_along_axis(s, order, axis=-2)
    y = np.take_along_axis(y, order, axis=-2)
    n = s.shape[-2]
    tp = np.cumsum(y, axis=-2)
    precision = tp / np.arange(1, n + 1).reshape((n, 1))
    # each position takes the precision at the end of its group of tied scores (one threshold per group)
    last = np.ones_like(s, dtype=bool)
    last[..., :-1, :] = s[..., :-1, :] != s[..., 1:, :]
    idx = np.where(last, np.arange(n).reshape((n, 1)), n - 1)
    end = np.flip(np.minimum.accumulate(np.flip(idx, axis=-2), axis=-2), axis=-2)
    p_end = np.take_along_axis(precision, end, axis=-2)
    positives = y.sum(axis=-2)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(positives > 0, (y * p_end).sum(axis=-2) / positives, np.nan)
