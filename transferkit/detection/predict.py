"""Predictions of a detector, in the image's own pixels, as COCO results JSON and as CSV rows."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .formats import DetectionItem, image_size
from .model import LABEL_OFFSET
from .train import load_resized

CSV_COLUMNS = ("image", "label", "score", "x1", "y1", "x2", "y2")


def items_for_images(paths: list[str | Path]) -> list[DetectionItem]:
    """Unlabelled items for images to predict on (sizes read from the files; ids 1, 2, ...)."""
    items = []
    for p in paths:
        size = image_size(Path(p), str(p))
        if isinstance(size, str):
            from ..data.splits import DataError
            raise DataError(f"{p}: {size}")
        items.append(DetectionItem(str(p), size[0], size[1], [], [], image_id=len(items) + 1))
    return items


@torch.no_grad()
def predict(model: nn.Module, items: list[DetectionItem], batch_size: int = 8,
            images: list | None = None) -> list[dict[str, torch.Tensor]]:
    """One dict per item: `boxes` [N, 4] x1 y1 x2 y2 in the item's own pixels, `scores` [N],
    `labels` [N] class indices into the data's classes. Scores below the detector's threshold
    (0.05, as COCO evaluation expects) are already dropped; at most 100 (FCOS/Faster R-CNN) or 300
    (RetinaNet) boxes an image. `images`: the items' RGB PIL images, already decoded (the server's
    uploads); None reads each `item.image` file."""
    model.eval()
    size = model.spec.image_size
    device = next(iter(model.parameters()), torch.empty(0)).device
    out = []
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        pics = images[start:start + batch_size] if images is not None else [it.image for it in chunk]
        batch = [load_resized(pic, size).to(device).float() / 255.0 for pic in pics]
        for it, det in zip(chunk, model(batch)):
            det = {k: v.cpu() for k, v in det.items()}
            scale = torch.tensor([it.width / size, it.height / size] * 2)
            boxes = det["boxes"] * scale
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, it.width)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, it.height)
            out.append({"boxes": boxes, "scores": det["scores"],
                        "labels": det["labels"] - LABEL_OFFSET})
    return out


def coco_results(preds: list[dict], items: list[DetectionItem], category_ids: list[int]) -> list[dict]:
    """COCO results: `[{image_id, category_id, bbox: [x, y, w, h], score}]`, the ids those of the
    ground truth (`DetectionSet.category_ids`, `DetectionItem.image_id`), so that
    `COCO(gt).loadRes(results)` pairs them."""
    rows = []
    for it, p in zip(items, preds):
        for (x1, y1, x2, y2), s, c in zip(p["boxes"].tolist(), p["scores"].tolist(), p["labels"].tolist()):
            rows.append({"image_id": int(it.image_id), "category_id": int(category_ids[c]),
                         "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                         "score": round(float(s), 5)})
    return rows


def prediction_rows(preds: list[dict], items: list[DetectionItem], classes: list[str],
                    root: str | Path | None = None) -> list[dict]:
    """Rows for a CSV with CSV_COLUMNS, one per box, best score first within an image; `image` is
    the path relative to `root` when given."""
    rows = []
    for it, p in zip(items, preds):
        name = str(Path(it.image).relative_to(root)) if root is not None else it.image
        order = torch.argsort(p["scores"], descending=True).tolist()
        for k in order:
            x1, y1, x2, y2 = p["boxes"][k].tolist()
            rows.append({"image": name, "label": classes[int(p["labels"][k])],
                         "score": round(float(p["scores"][k]), 5),
                         "x1": round(x1, 2), "y1": round(y1, 2), "x2": round(x2, 2), "y2": round(y2, 2)})
    return rows
