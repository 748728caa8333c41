"""Dense metrics from a confusion matrix (segmentation) and from scores (anomaly detection).

Segmentation, with C[t, p] = pixels of true class t predicted as p:

    IoU_k  = C[k,k] / (sum_p C[k,p] + sum_t C[t,k] - C[k,k])
    Dice_k = 2 C[k,k] / (sum_p C[k,p] + sum_t C[t,k])
    pixel accuracy = trace(C) / sum(C)

A class absent from both the truth and the prediction has no IoU (null) and is left out of the means
(`miou`, `dice`), as in torchmetrics' JaccardIndex with absent classes ignored.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def confusion(pred: torch.Tensor, target: torch.Tensor, n_classes: int) -> torch.Tensor:
    """[n, n] int64 counts, rows = truth, columns = prediction."""
    t, p = target.reshape(-1).long(), pred.reshape(-1).long()
    return torch.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def segmentation_metrics(cm: torch.Tensor, classes: list[str]) -> dict:
    cm = cm.double()
    tp = cm.diag()
    truth, predicted = cm.sum(1), cm.sum(0)
    union = truth + predicted - tp
    iou = [float(tp[k] / union[k]) if union[k] > 0 else None for k in range(len(classes))]
    dice = [float(2 * tp[k] / (truth[k] + predicted[k])) if union[k] > 0 else None for k in range(len(classes))]
    present = [v for v in iou if v is not None]
    dices = [v for v in dice if v is not None]
    total = float(cm.sum())
    return {"miou": sum(present) / len(present) if present else None,
            "per_class_iou": dict(zip(classes, iou)),
            "dice": sum(dices) / len(dices) if dices else None,
            "pixel_accuracy": float(tp.sum()) / total if total else None,
            "pixels": int(total)}


def auroc(labels, scores) -> float | None:
    """ROC AUC (sklearn); None when only one kind of label is present (it is undefined then)."""
    labels = np.asarray(labels).reshape(-1)
    if labels.size == 0 or labels.min() == labels.max():
        return None
    from sklearn.metrics import roc_auc_score
    return float(roc_auc_score(labels, np.asarray(scores, dtype=np.float64).reshape(-1)))


def f1_at(labels, scores, threshold: float) -> dict:
    """F1, precision and recall of `score >= threshold` as the positive (defect) call."""
    labels = np.asarray(labels).astype(bool)
    called = np.asarray(scores) >= threshold
    tp = int((called & labels).sum())
    fp = int((called & ~labels).sum())
    fn = int((~called & labels).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"f1": f1, "precision": precision, "recall": recall,
            "accuracy": float((called == labels).mean()) if labels.size else math.nan}
