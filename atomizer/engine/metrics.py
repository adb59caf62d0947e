"""Classification and segmentation metrics, from torchmetrics (no hand-written average precision).

Multi-label (BigEarthNet): ``macro_map`` (the paper's metric: per-class AP averaged over the classes
that have at least one positive in the evaluated set), ``micro_map`` and ``overall_accuracy``
(element-wise accuracy of the 0.5-thresholded sigmoid). Single-label (EuroSAT): ``top1`` and
``macro_map`` (one-vs-rest AP averaged over classes present in the targets). All in percent.

Segmentation: one confusion matrix per image (torchmetrics' ``multiclass_confusion_matrix``, ignored pixels
left out), so that statistics resample images exactly as for classification; the scores of a set of images
come from their summed matrix (:func:`segmentation_scores`): ``miou`` (IoU averaged over the classes that
occur in the truth or the prediction), ``overall_accuracy``, per-class IoU, and ``f1`` of the positive class
for a binary task. On a union of datasets, :func:`part_miou` scores each part on its own images and classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_average_precision,
    multiclass_confusion_matrix,
    multilabel_accuracy,
    multilabel_average_precision,
)

MULTILABEL_METRICS = ("macro_map", "micro_map", "overall_accuracy")
SINGLELABEL_METRICS = ("top1", "macro_map")
SEGMENTATION_METRICS = ("miou", "overall_accuracy")


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


def confusion_per_image(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = -1) -> torch.Tensor:
    """Per-image confusion matrices (S, C, C) (rows: true class, columns: predicted) of per-pixel logits
    (S, Q, C) against targets (S, Q); pixels equal to ``ignore_index`` (padding, unlabelled) are left out."""
    c = logits.shape[-1]
    pred = logits.argmax(-1)
    return torch.stack(
        [
            multiclass_confusion_matrix(pred[s], target[s], num_classes=c, ignore_index=ignore_index)
            for s in range(pred.shape[0])
        ]
    )


def segmentation_scores(confusion: torch.Tensor) -> dict[str, float]:
    """Scores (percent) of a set of images from their confusion matrices (N, C, C) or their sum (C, C):
    ``miou``, ``overall_accuracy``, ``iou_<k>`` per class (NaN where the class is neither true nor
    predicted), and ``f1`` for a two-class task (class 1 the positive)."""
    m = confusion.sum(0) if confusion.ndim == 3 else confusion
    m = m.double()
    tp = m.diagonal()
    union = m.sum(0) + m.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))
    total = m.sum()
    out = {
        "miou": 100 * float(iou.nanmean()) if bool((union > 0).any()) else float("nan"),
        "overall_accuracy": 100 * float(tp.sum() / total) if total > 0 else float("nan"),
    }
    if m.shape[0] == 2:
        denom = 2 * tp[1] + m[0, 1] + m[1, 0]
        out["f1"] = 100 * float(2 * tp[1] / denom) if denom > 0 else float("nan")
    out.update({f"iou_{k}": 100 * float(v) for k, v in enumerate(iou)})
    return out


def part_miou(confusion: torch.Tensor, image_parts: Sequence[str], class_parts: Sequence[str]) -> dict[str, float]:
    """mIoU (%) per part of a union of datasets (:mod:`atomizer.data.union`): for each part, the images of that
    part (``image_parts``, one label per image of ``confusion`` (N, C, C)) and that part's classes only
    (``class_parts``, one label per class). A pixel of the part predicted as another part's class counts as a
    miss of its true class (the IoU's denominator keeps it); classes neither true nor predicted in the part's
    images are left out, as in :func:`segmentation_scores`; NaN for a part without images."""
    if len(image_parts) != confusion.shape[0] or len(class_parts) != confusion.shape[-1]:
        raise ValueError(
            f"part_miou: {len(image_parts)} image parts and {len(class_parts)} class parts for confusion "
            f"matrices of shape {tuple(confusion.shape)}"
        )
    out: dict[str, float] = {}
    for part in dict.fromkeys(class_parts):
        rows = [i for i, p in enumerate(image_parts) if p == part]
        cls = torch.tensor([k for k, p in enumerate(class_parts) if p == part])
        if not rows:
            out[part] = float("nan")
            continue
        m = confusion[rows].sum(0).double()
        tp = m.diagonal()[cls]
        union = m.sum(0)[cls] + m.sum(1)[cls] - tp
        iou = torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))
        out[part] = 100 * float(iou.nanmean()) if bool((union > 0).any()) else float("nan")
    return out


def segmentation_loss(
    logits: torch.Tensor, target: torch.Tensor, class_weights: torch.Tensor | None = None, ignore_index: int = -1
) -> torch.Tensor:
    """Per-pixel cross-entropy of logits (S, Q, C) against targets (S, Q), ``ignore_index`` pixels left out,
    optionally weighted per class; 0 (with a gradient) when no pixel is labelled."""
    flat, t = logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1)
    if not bool((t != ignore_index).any()):
        return flat.sum() * 0.0
    w = None if class_weights is None else class_weights.to(flat.device, flat.dtype)
    return torch.nn.functional.cross_entropy(flat, t, weight=w, ignore_index=ignore_index)
