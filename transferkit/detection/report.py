"""RUN/report.html of a detect run: the metrics, then the test images worst first, each with the
predicted boxes (class and score on each) beside the ground truth, in dense/report.py's page.

An image's rank: 1 - F1 of its boxes at score >= SHOWN_SCORE, a prediction counting as found when it
has the class of a true box not yet matched and IoU >= 0.5 with it (greedy, best score first); an
image with no true box and no prediction has F1 1. Only boxes at score >= SHOWN_SCORE are drawn.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, ImageDraw

SHOWN_SCORE = 0.3
IOU = 0.5
SIDE = 256   # drawn at most this many pixels a side (the page shows thumbnails of it)


def match(pred: dict, boxes: list, labels: list) -> dict:
    """found / missed / false of one image's predictions at score >= SHOWN_SCORE (module docstring)."""
    from torchvision.ops import box_iou
    keep = pred["scores"] >= SHOWN_SCORE
    pb, pl, ps = pred["boxes"][keep], pred["labels"][keep], pred["scores"][keep]
    truth = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    iou = box_iou(pb, truth) if len(pb) and len(truth) else torch.zeros(len(pb), len(truth))
    used, found = set(), 0
    for i in torch.argsort(ps, descending=True).tolist():
        best, at = IOU, None
        for j in range(len(truth)):
            if j not in used and int(pl[i]) == int(labels[j]) and float(iou[i, j]) >= best:
                best, at = float(iou[i, j]), j
        if at is not None:
            used.add(at)
            found += 1
    n_pred, n_true = len(pb), len(truth)
    f1 = 1.0 if n_pred + n_true == 0 else 2 * found / (n_pred + n_true)
    return {"found": found, "missed": n_true - found, "false": n_pred - found, "f1": f1}


def _colour(k: int) -> tuple[int, int, int]:
    import colorsys
    r, g, b = colorsys.hsv_to_rgb((0.13 + k * 0.618034) % 1.0, 0.9, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def draw(image: str, boxes, labels, classes: list[str], scores=None) -> Image.Image:
    """The image (at most SIDE px a side) with its boxes, each labelled `class` or `class score`."""
    from ..data.images import open_rgb
    im = open_rgb(image)
    scale = min(1.0, SIDE / max(im.size))
    im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.BILINEAR)
    pen = ImageDraw.Draw(im)
    for k, (box, c) in enumerate(zip(boxes, labels)):
        x1, y1, x2, y2 = (float(v) * scale for v in box)
        col = _colour(int(c))
        pen.rectangle([x1, y1, x2, y2], outline=col, width=2)
        text = classes[int(c)] + ("" if scores is None else f" {float(scores[k]):.2f}")
        tx, ty = x1 + 2, max(0.0, y1 - 11)
        pen.rectangle(pen.textbbox((tx, ty), text), fill=(0, 0, 0))
        pen.text((tx, ty), text, fill=col)
    return im


def cards(items, preds: list[dict], classes: list[str]) -> list[dict]:
    out = []
    for it, p in zip(items, preds):
        m = match(p, it.boxes, it.labels)
        keep = p["scores"] >= SHOWN_SCORE
        out.append({"name": Path(it.image).name, "badness": 1.0 - m["f1"],
                    "caption": f"F1 {m['f1']:.2f} at score >= {SHOWN_SCORE} and IoU >= {IOU}: {m['found']} found, "
                               f"{m['missed']} missed, {m['false']} false",
                    "images": [("prediction", draw(it.image, p["boxes"][keep].tolist(), p["labels"][keep].tolist(),
                                                   classes, p["scores"][keep].tolist())),
                               ("truth", draw(it.image, it.boxes, it.labels, classes))]})
    return out


def write_detection_report(run: Path, metrics: dict, items, preds: list[dict], classes: list[str]) -> Path:
    from ..dense.report import write_report
    return write_report(run, f"detect run {Path(run).name}", metrics, cards(items, preds, classes))
