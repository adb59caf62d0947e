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
