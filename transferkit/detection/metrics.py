"""COCO-style detection metrics: mean average precision over IoU 0.50:0.95 (`map`), at IoU 0.50
(`map_50`, the PASCAL VOC measure) and 0.75 (`map_75`), and AP per class by name.

Computed by torchmetrics' MeanAveragePrecision on the faster_coco_eval backend (the COCO
evaluation protocol: 101-point interpolated precision, at most 100 detections an image), in each
image's own pixels. A class with no box in the ground truth has no AP (None), not 0.
"""

from __future__ import annotations

import torch

from .formats import DetectionItem


def detection_metrics(preds: list[dict], items: list[DetectionItem], classes: list[str]) -> dict:
    """{'map', 'map_50', 'map_75', 'per_class': {name: AP or None}, 'images', 'boxes'} for
    predictions (from `predict`: boxes, scores, labels as class indices) against the items' boxes."""
    from torchmetrics.detection import MeanAveragePrecision

    metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", class_metrics=True,
                                  backend="faster_coco_eval")
    target = [{"boxes": torch.tensor(it.boxes, dtype=torch.float32).reshape(-1, 4),
               "labels": torch.tensor(it.labels, dtype=torch.int64)} for it in items]
    metric.update([{k: p[k] for k in ("boxes", "scores", "labels")} for p in preds], target)
    r = metric.compute()
    per_class = {name: None for name in classes}
    ids = r["classes"].reshape(-1).tolist()
    aps = r["map_per_class"].reshape(-1).tolist()
    for c, ap in zip(ids, aps):
        if 0 <= c < len(classes):
            per_class[classes[c]] = None if ap < 0 else round(float(ap), 6)
    return {"map": _num(r["map"]), "map_50": _num(r["map_50"]), "map_75": _num(r["map_75"]),
            "per_class": per_class, "images": len(items), "boxes": sum(len(it.boxes) for it in items)}


def _num(t: torch.Tensor) -> float | None:
    v = float(t)
    return None if v < 0 else round(v, 6)


def evaluate_detector(model, items: list[DetectionItem], classes: list[str], batch_size: int = 8) -> tuple[dict, list[dict]]:
    """Predict on `items` and score the predictions: (metrics, predictions)."""
    from .predict import predict
    preds = predict(model, items, batch_size=batch_size)
    return detection_metrics(preds, items, classes), preds
