"""Post-processing of a dense ONNX export, in numpy: copied into every segment, detect and anomaly
export as `postprocess.py`, so that the export runs without transferkit (numpy, Pillow, onnxruntime).

It is also what `transferkit export` runs in its parity check, so the file you get is the file that
was checked. What the graph computes and what is left to this file:

  segment  graph: logits [B, K, S, S]  ->  here: bilinear resize to the image's size, argmax
  detect   graph: FCOS head outputs per location (cls_logits [B, N, K+1], bbox_regression [B, N, 4],
           bbox_ctrness [B, N, 1])  ->  here: scores, per-level top-k, box decoding against
           anchors.npy, clipping, per-class NMS, scaling to the image's size (NMS has no clean ONNX
           export; this is torchvision's FCOS.postprocess_detections, line for line)
  anomaly  graph: patch features [B, C, h, w]  ->  here: distance to the nearest patch of
           memory_bank.npy, bilinear resize to S x S, Gaussian smoothing; score = the map's maximum

Usage (the folder `export` wrote):

    import postprocess
    result = postprocess.predict("OUT", "image.png")
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def preprocess(image, size: int, mean, std) -> np.ndarray:
    """A PIL image (or a path) as the graph's input [1, 3, S, S]: RGB, resized to S x S (bilinear),
    scaled to [0, 1], normalised by the export's mean and std."""
    from PIL import Image
    im = Image.open(image) if isinstance(image, (str, Path)) else image
    im = im.convert("RGB").resize((size, size), Image.BILINEAR)
    x = np.asarray(im, dtype=np.float32) / 255.0
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return x.transpose(2, 0, 1)[None].astype(np.float32)


def _axis(n_in: int, n_out: int):
    """Source indices and weights of a bilinear resize along one axis (align_corners=False, as
    torch.nn.functional.interpolate)."""
    src = np.maximum((np.arange(n_out, dtype=np.float32) + 0.5) * np.float32(n_in / n_out) - 0.5, 0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, np.clip(src - i0, 0, 1).astype(np.float32)


def resize_bilinear(a: np.ndarray, height: int, width: int) -> np.ndarray:
    """[..., h, w] -> [..., height, width]."""
    y0, y1, ly = _axis(a.shape[-2], height)
    x0, x1, lx = _axis(a.shape[-1], width)
    rows = a[..., y0, :] * (1 - ly)[:, None] + a[..., y1, :] * ly[:, None]
    return rows[..., x0] * (1 - lx) + rows[..., x1] * lx


# ------------------------------------------------------------------------------------ segment

def segment_mask(logits: np.ndarray, height: int, width: int) -> np.ndarray:
    """One image's logits [K, S, S] -> class index per pixel [height, width] (uint8)."""
    return resize_bilinear(logits.astype(np.float32), height, width).argmax(0).astype(np.uint8)


# ------------------------------------------------------------------------------------ detect

def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Greedy non-maximum suppression (torchvision.ops.nms): indices kept, best score first."""
    order = np.argsort(-scores, kind="stable")
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep, gone = [], np.zeros(len(boxes), bool)
    for n, i in enumerate(order):
        if gone[i]:
            continue
        keep.append(i)
        rest = order[n + 1:]
        w = np.maximum(0, np.minimum(boxes[i, 2], boxes[rest, 2]) - np.maximum(boxes[i, 0], boxes[rest, 0]))
        h = np.maximum(0, np.minimum(boxes[i, 3], boxes[rest, 3]) - np.maximum(boxes[i, 1], boxes[rest, 1]))
        inter = w * h
        gone[rest[inter / (area[i] + area[rest] - inter) > iou]] = True
    return np.asarray(keep, dtype=np.int64)


def fcos_detections(cls_logits, bbox_regression, bbox_ctrness, anchors, level_sizes, p: dict,
                    width: int | None = None, height: int | None = None) -> dict:
    """One image's head outputs -> {"boxes" [n, 4] x1 y1 x2 y2, "scores" [n], "labels" [n]}: labels
    index the export's classes; boxes in the pixels of an image `width` x `height` (default: S x S)."""
    size, n_classes = p["image_size"], cls_logits.shape[-1]
    boxes, scores, labels, start = [], [], [], 0
    for n in level_sizes:
        lg, reg = cls_logits[start:start + n], bbox_regression[start:start + n]
        ctr, anc = bbox_ctrness[start:start + n], anchors[start:start + n]
        start += n
        s = np.sqrt(_sigmoid(lg) * _sigmoid(ctr)).reshape(-1)
        idx = np.nonzero(s > p["score_thresh"])[0]
        top = np.argsort(-s[idx], kind="stable")[:p["topk_candidates"]]
        idx = idx[top]
        a, r = anc[idx // n_classes], reg[idx // n_classes]
        cx, cy = 0.5 * (a[:, 0] + a[:, 2]), 0.5 * (a[:, 1] + a[:, 3])
        wh = np.stack([a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]] * 2, 1)
        r = r * wh
        b = np.stack([cx - r[:, 0], cy - r[:, 1], cx + r[:, 2], cy + r[:, 3]], 1)
        boxes.append(np.clip(b, 0, size))
        scores.append(s[idx])
        labels.append(idx % n_classes)
    boxes, scores, labels = np.concatenate(boxes), np.concatenate(scores), np.concatenate(labels)
    keep = [k for c in np.unique(labels) for k in np.nonzero(labels == c)[0][
        nms(boxes[labels == c], scores[labels == c], p["nms_thresh"])]]
    keep = np.asarray(sorted(keep, key=lambda k: -scores[k]), dtype=np.int64)[:p["detections_per_img"]]
    w, h = width or size, height or size
    out = boxes[keep] * np.asarray([w / size, h / size] * 2, np.float32)
    out[:, 0::2] = np.clip(out[:, 0::2], 0, w)
    out[:, 1::2] = np.clip(out[:, 1::2], 0, h)
    return {"boxes": out.astype(np.float32), "scores": scores[keep].astype(np.float32),
            "labels": labels[keep] - p["label_offset"]}


# ------------------------------------------------------------------------------------ anomaly

def gaussian_filter(a: np.ndarray, sigma: float, truncate: float = 4.0) -> np.ndarray:
    """A 2-D Gaussian blur with mirrored edges (scipy.ndimage.gaussian_filter, mode 'reflect')."""
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    k /= k.sum()
    out = a.astype(np.float64)
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="symmetric")
        n = out.shape[axis]
        out = sum(w * np.take(padded, np.arange(j, j + n), axis=axis) for j, w in enumerate(k))
    return out.astype(np.float32)


def nearest_distances(features: np.ndarray, bank: np.ndarray, chunk: int = 512) -> np.ndarray:
    """One image's features [C, h, w] -> distance of each patch to its nearest bank row [h, w]."""
    c, h, w = features.shape
    q = features.reshape(c, -1).T.astype(np.float64)
    b = bank.astype(np.float64)
    bb = (b * b).sum(1)
    d = np.concatenate([np.sqrt(np.maximum((q[i:i + chunk] ** 2).sum(1)[:, None] - 2 * q[i:i + chunk] @ b.T
                                           + bb[None], 0)).min(1) for i in range(0, len(q), chunk)])
    return d.reshape(h, w).astype(np.float32)


def anomaly_map(features: np.ndarray, bank: np.ndarray, p: dict) -> np.ndarray:
    """One image's features -> its anomaly map [S, S]; the image score is the map's maximum."""
    grid = nearest_distances(features, bank)
    return gaussian_filter(resize_bilinear(grid, p["image_size"], p["image_size"]), p["sigma"])


# ------------------------------------------------------------------------------------ whole export

def predict(export_dir, image) -> dict:
    """An image (path or PIL image) through the export in `export_dir`: the task's answer, in the
    image's own pixels (segment: mask; detect: boxes, labels, scores; anomaly: map, score, label)."""
    import onnxruntime as ort
    from PIL import Image
    d = Path(export_dir)
    m = json.loads((d / "export.json").read_text(encoding="utf-8"))
    pre, post = m["preprocess"], m["postprocess"]
    im = (Image.open(image) if isinstance(image, (str, Path)) else image).convert("RGB")
    x = preprocess(im, pre["size"], pre["mean"], pre["std"])
    session = ort.InferenceSession(str(d / "model.onnx"), providers=["CPUExecutionProvider"])
    outs = session.run(None, {"pixel_values": x})
    if m["task"] == "segment":
        return {"mask": segment_mask(outs[0][0], im.height, im.width), "classes": m["classes"]}
    if m["task"] == "detect":
        det = fcos_detections(outs[0][0], outs[1][0], outs[2][0], np.load(d / "anchors.npy"),
                              post["level_sizes"], post, im.width, im.height)
        return {**det, "names": [m["classes"][k] for k in det["labels"]]}
    amap = anomaly_map(outs[0][0], np.load(d / "memory_bank.npy"), post)
    score = float(amap.max())
    return {"map": amap, "score": score, "label": "defect" if score >= post["threshold"] else "good"}
