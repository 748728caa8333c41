"""Classification metrics written to metrics.json."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """ECE (Guo et al., 2017): sum over equal-width confidence bins of |acc - conf| * share of items."""
    conf = probs.max(1)
    correct = probs.argmax(1) == y
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def classification_metrics(y: np.ndarray, probs: np.ndarray, class_names: list[str]) -> dict:
    """accuracy, macro_f1, per-class precision/recall/F1/support, confusion matrix, ECE, NLL.

    macro_f1 averages over the classes present in `y`: a class the evaluated data does not hold has
    no F1 to measure (sklearn would count it as 0, so perfect predictions on 2 of 3 classes would
    score 0.667). Such classes are named in `absent_classes`; predicting one still costs the recall
    of the true class."""
    y = np.asarray(y)
    pred = probs.argmax(1)
    labels = list(range(len(class_names)))
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    present = [i for i in labels if s[i] > 0]
    nll = float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None)).mean()) if len(y) else 0.0
    return {
        "accuracy": float((pred == y).mean()) if len(y) else 0.0,
        "macro_f1": float(f1_score(y, pred, labels=present or labels, average="macro", zero_division=0)),
        "absent_classes": [class_names[i] for i in labels if s[i] == 0],
        "ece": expected_calibration_error(probs, y),
        "nll": nll,
        "n": int(len(y)),
        "per_class": {c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                          "support": int(s[i])} for i, c in enumerate(class_names)},
        "confusion_matrix": confusion_matrix(y, pred, labels=labels).tolist(),
        "class_names": list(class_names),
    }


def most_confused(metrics: dict, k: int = 5) -> list[tuple[str, str, int]]:
    cm = np.array(metrics["confusion_matrix"])
    names = metrics["class_names"]
    pairs = [(names[i], names[j], int(cm[i, j])) for i in range(len(names)) for j in range(len(names))
             if i != j and cm[i, j] > 0]
    return sorted(pairs, key=lambda t: -t[2])[:k]
