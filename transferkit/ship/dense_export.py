"""`transferkit export RUN --format onnx --out DIR` for dense runs (segment, detect, anomaly).

The graph takes `pixel_values [B, 3, S, S]` (RGB resized to S x S, /255, normalised by export.json's
mean and std; the batch axis is dynamic, S is fixed) and stops where ONNX stops being the right tool:

  segment  model.onnx -> logits [B, K, S, S] (the smp model whole)
  detect   model.onnx -> cls_logits, bbox_regression, bbox_ctrness (FCOS body, FPN and heads) and
           anchors.npy; scoring, box decoding and NMS are numpy (postprocess.py): NMS does not export
  anomaly  model.onnx -> features [B, C, S/8, S/8] (the frozen encoder, locally averaged) and
           memory_bank.npy; the nearest-patch distance and the smoothing are numpy (postprocess.py)

postprocess.py (ship/dense_post.py) is written into every dense export. Parity is checked on the
run's test images (else its validation, else its training images) through preprocess -> onnxruntime
-> postprocess, against the run's own PyTorch code path (what `transferkit predict` computes): the
raw graph outputs within TOLERANCE of the PyTorch graph's, and the final answer the same: every mask
pixel whose two best classes are further apart than 2 x TOLERANCE, every box (same label, corners
within BOX_TOLERANCE_PX, score within TOLERANCE) and every anomaly map within MAP_TOLERANCE x the
threshold, with the same good/defect decision.
"""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.splits import DataError
from ..store.outfolder import OutFolder
from ..store.runfolder import run_task
from . import dense_post as post
from .graph_formats import export_onnx, onnx_metadata
from .staging import write_export

TOLERANCE = 1e-4          # raw graph outputs, scores; as classification's logits
BOX_TOLERANCE_PX = 1e-2   # box corners, in the image's pixels
MAP_TOLERANCE = 1e-3      # anomaly maps, relative to the run's threshold (float64 vs float32 cdist)


@dataclass
class DenseParity:
    format: str
    task: str
    n_inputs: int
    max_abs_diff: float                             # raw graph outputs
    checks: dict = field(default_factory=dict)      # name -> {"value", "tolerance", "ok", "what"}
    tolerance: float = TOLERANCE

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance and all(c["ok"] for c in self.checks.values())

    def line(self) -> str:
        parts = [f"{c['what']} {c['value']:.3g}" + (f" (tolerance {c['tolerance']:.0e})" if c["tolerance"] else "")
                 for c in self.checks.values()]
        return (f"parity {self.format} ({self.task}): {self.n_inputs} test inputs, max |output diff| "
                f"{self.max_abs_diff:.2e} (tolerance {self.tolerance:.0e}), " + ", ".join(parts)
                + f": {'OK' if self.ok else 'FAILED'}")

    def to_dict(self) -> dict:
        return {"format": self.format, "task": self.task, "n_inputs": self.n_inputs,
                "max_abs_diff": self.max_abs_diff, "tolerance": self.tolerance, "checks": self.checks,
                "ok": self.ok}


def _check(what: str, value: float, tolerance: float) -> dict:
    return {"what": what, "value": float(value), "tolerance": tolerance, "ok": bool(value <= tolerance)}


# ------------------------------------------------------------------------------------ the graphs

class FCOSHeads(nn.Module):
    """A torchvision FCOS without its transform and post-processing: normalised images in, the
    head's outputs for every location of every level out (torchvision's order)."""

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.backbone, self.head = detector.backbone, detector.head

    def forward(self, x: torch.Tensor):
        out = self.head(list(self.backbone(x).values()))
        return out["cls_logits"], out["bbox_regression"], out["bbox_ctrness"]


@torch.no_grad()
def _fcos_anchors(detector: nn.Module, size: int) -> tuple[np.ndarray, list[int]]:
    """The detector's anchors for an S x S input [N, 4] and the locations per level."""
    from torchvision.models.detection.image_list import ImageList
    x = torch.zeros(1, 3, size, size)
    feats = list(detector.backbone(x).values())
    anchors = detector.anchor_generator(ImageList(x, [(size, size)]), feats)[0]
    return anchors.numpy().astype(np.float32), [int(f.shape[2] * f.shape[3]) for f in feats]


# ------------------------------------------------------------------------------------ the inputs

def _relocate(path: str, recorded: str | None, data: str | None) -> Path:
    p = Path(path)
    if p.is_file() or not data or not recorded:
        return p
    try:
        return Path(data) / p.relative_to(Path(recorded).expanduser())
    except ValueError:
        return p


def _check_images(paths: list[Path], run: Path) -> list[Path]:
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"{len(missing)} image(s) the run was trained on are not there to check the export on "
                        f"(e.g. {missing[0]}); pass --data PATH where the training data now lives")
    if not paths:
        raise DataError(f"{run} lists no images to check the export on")
    return paths


def check_images(run: Path, task: str, cfg, data: str | None, limit: int) -> tuple[list[Path], str]:
    """Up to `limit` images of the run's test split (else validation, else training), and which split."""
    if task == "segment":
        with open(run / "splits.csv", newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        by = {s: [r["image"] for r in rows if r["split"] == s] for s in ("test", "val", "train")}
        recorded = cfg.data
    elif task == "detect":
        split = json.loads((run / "split.json").read_text(encoding="utf-8"))
        by = {"test": split.get("test", []), "train": split.get("train", [])}
        recorded = cfg.data
    else:
        from ..dense.anomaly import test_items, train_images
        root = Path(data or cfg.test or cfg.data).expanduser()
        by = {"test": [str(it.image) for it in test_items(root)] if (root / "test").is_dir() else [],
              "train": [str(p) for p in train_images(root)] if (root / "train").is_dir() else []}
        recorded = None
    name = next((s for s, v in by.items() if v), "test")
    paths = [_relocate(p, recorded, data) for p in by.get(name, [])[:limit]]
    return _check_images(paths, run), name


def _batches(x: np.ndarray, size: int = 8) -> list[np.ndarray]:
    """The inputs in batches, then the first alone (the batch axis must really be dynamic)."""
    return [x[i:i + size] for i in range(0, len(x), size)] + [x[:1]]


def _session(path: Path):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


@torch.no_grad()
def _raw_diff(module: nn.Module, session, x: np.ndarray) -> tuple[float, list[list[np.ndarray]]]:
    """Max |difference| of every output of `module` and of the ONNX session, batch by batch; and the
    session's outputs per input image."""
    diff, per_image = 0.0, []
    for b in _batches(x):
        ref = module(torch.from_numpy(b))
        ref = ref if isinstance(ref, tuple) else (ref,)
        got = session.run(None, {"pixel_values": b})
        diff = max(diff, *(float(np.abs(g - r.numpy()).max()) for g, r in zip(got, ref)))
        per_image += [[g[i] for g in got] for i in range(len(b))]
    return diff, per_image[:len(x)]


# ------------------------------------------------------------------------------------ per task

def _segment(run: Path, stage: Path, images: list[Path], meta):
    from ..data.images import open_rgb
    from ..dense import segment
    from ..dense.segment_fit import predict_logits
    model, src = segment.load_run(run)
    model = model.float().cpu().eval()
    size, mean, std = src["image_size"], src["mean"], src["std"]
    pil = [open_rgb(str(p)) for p in images]
    x = np.concatenate([post.preprocess(im, size, mean, std) for im in pil])
    export_onnx(model, (torch.from_numpy(_two(x)),), stage / "model.onnx", ["pixel_values"], ["logits"],
                ({0: torch.export.Dim("batch", min=1)},), meta(src["classes"], size, mean, std))
    diff, outs = _raw_diff(model, _session(stage / "model.onnx"), x)
    beyond, pixels = 0, 0
    for p, im, (logits,) in zip(images, pil, outs):
        ref = predict_logits(model, p, size, mean, std, "cpu", (im.height, im.width)).numpy()
        top2 = np.sort(ref, 0)[-2:]
        got = post.segment_mask(logits, im.height, im.width)
        beyond += int(((got != ref.argmax(0)) & (top2[1] - top2[0] > 2 * TOLERANCE)).sum())
        pixels += got.size
    checks = {"mask_pixels": _check(f"mask pixels differing beyond ties (of {pixels})", beyond, 0)}
    extra = {"classes": src["classes"], "outputs": ["logits"], "decoder": src["decoder"],
             "postprocess": {"resize": "bilinear (align_corners=False) to the image's size", "then": "argmax"}}
    return diff, checks, extra, src, ["model.onnx"]


def _detect(run: Path, stage: Path, images: list[Path], meta):
    from ..data.images import open_rgb
    from ..detection.model import LABEL_OFFSET, load_detector
    from ..detection.predict import items_for_images, predict
    model, classes = load_detector(run)
    model = model.float().cpu().eval()
    if model.spec.arch != "fcos":
        raise ValueError(f"{run} is a {model.spec.arch} detector; --format onnx exports FCOS detectors only")
    size, tr = model.spec.image_size, model.transform
    mean, std = [float(v) for v in tr.image_mean], [float(v) for v in tr.image_std]
    pil = [open_rgb(str(p)) for p in images]
    x = np.concatenate([post.preprocess(im, size, mean, std) for im in pil])
    heads = FCOSHeads(model).eval()
    outputs = ["cls_logits", "bbox_regression", "bbox_ctrness"]
    export_onnx(heads, (torch.from_numpy(_two(x)),), stage / "model.onnx", ["pixel_values"], outputs,
                ({0: torch.export.Dim("batch", min=1)},), meta(classes, size, mean, std))
    anchors, levels = _fcos_anchors(model, size)
    np.save(stage / "anchors.npy", anchors)
    params = {"image_size": size, "score_thresh": float(model.score_thresh), "nms_thresh": float(model.nms_thresh),
              "topk_candidates": int(model.topk_candidates), "detections_per_img": int(model.detections_per_img),
              "label_offset": LABEL_OFFSET, "level_sizes": levels}
    diff, outs = _raw_diff(heads, _session(stage / "model.onnx"), x)
    refs = predict(model, items_for_images(images))
    box, score, count, n_boxes = 0.0, 0.0, 0, 0
    for im, o, ref in zip(pil, outs, refs):
        got = post.fcos_detections(*o, anchors, levels, params, im.width, im.height)
        keep_r = (ref["scores"] - params["score_thresh"]).abs().numpy() > TOLERANCE
        keep_g = np.abs(got["scores"] - params["score_thresh"]) > TOLERANCE
        rb, rs, rl = ref["boxes"].numpy()[keep_r], ref["scores"].numpy()[keep_r], ref["labels"].numpy()[keep_r]
        gb, gs, gl = got["boxes"][keep_g], got["scores"][keep_g], got["labels"][keep_g]
        n_boxes += len(rb)
        if len(rb) != len(gb) or (rl != gl).any():
            count += 1
            continue
        if len(rb):
            box, score = max(box, float(np.abs(rb - gb).max())), max(score, float(np.abs(rs - gs).max()))
    checks = {"images": _check("images whose boxes or labels differ", count, 0),
              "box_px": _check(f"max |box corner diff| px ({n_boxes} boxes)", box, BOX_TOLERANCE_PX),
              "score": _check("max |score diff|", score, TOLERANCE)}
    extra = {"classes": classes, "outputs": outputs, "detector": "fcos", "postprocess": params}
    return diff, checks, extra, {"mean": mean, "std": std, "image_size": size}, ["model.onnx", "anchors.npy"]


def _anomaly(run: Path, stage: Path, images: list[Path], meta):
    from ..data.images import open_rgb
    from ..dense import anomaly
    net, bank, threshold, src = anomaly.load_run(run)
    net, bank = net.float().cpu().eval(), bank.float().cpu()
    size, mean, std = src["image_size"], src["mean"], src["std"]
    x = np.concatenate([post.preprocess(open_rgb(str(p)), size, mean, std) for p in images])
    export_onnx(net, (torch.from_numpy(_two(x)),), stage / "model.onnx", ["pixel_values"], ["features"],
                ({0: torch.export.Dim("batch", min=1)},), meta(["good", "defect"], size, mean, std))
    np.save(stage / "memory_bank.npy", bank.numpy().astype(np.float32))
    params = {"image_size": size, "sigma": anomaly.SIGMA, "threshold": threshold, "k": 1,
              "score": "the map's maximum; defect when score >= threshold"}
    diff, outs = _raw_diff(net, _session(stage / "model.onnx"), x)
    ref = anomaly.score_maps(anomaly.embed(net, images, size, mean, std, "cpu"), bank, size)
    got = np.stack([post.anomaly_map(o[0], bank.numpy(), params) for o in outs])
    rel = float(np.abs(got - ref).max()) / max(threshold, 1e-12)
    rs, gs = ref.max(axis=(1, 2)), got.max(axis=(1, 2))
    near = np.abs(rs - threshold) <= MAP_TOLERANCE * threshold
    flips = int(((rs >= threshold) != (gs >= threshold))[~near].sum())
    checks = {"map": _check("max |map diff| / threshold", rel, MAP_TOLERANCE),
              "decisions": _check("good/defect decisions that differ", flips, 0)}
    extra = {"classes": ["good", "defect"], "outputs": ["features"], "postprocess": params}
    return diff, checks, extra, src, ["model.onnx", "memory_bank.npy"]


def _two(x: np.ndarray) -> np.ndarray:
    """An export sample of at least two images: a batch of one would be specialised to one."""
    return x if len(x) > 1 else np.concatenate([x, x])


TASKS = {"segment": _segment, "detect": _detect, "anomaly": _anomaly}


def export_dense(run: Path, fmt: str, folder: OutFolder, *, data: str | None = None, limit: int = 32,
                 log=print) -> dict:
    """Write a dense run's ONNX export into `folder` (checked by ship/staging.py), return the manifest."""
    from ..dense.runs import open_run
    task = run_task(run)
    if fmt != "onnx":
        raise ValueError(f"{run} is a {task} run; dense runs export to --format onnx only (with a numpy "
                         "postprocess.py beside the graph)")
    needs = ("detector.safetensors", "detector.json", "split.json") if task == "detect" else \
        ("model.safetensors",) + (("splits.csv",) if task == "segment" else ())
    cfg, source = open_run(run, task, needs=needs)
    images, split = check_images(run, task, cfg, data, limit)
    source = {k: source[k] for k in ("id", "arch", "weights_hash", "pretrained") if k in source}

    def meta(classes, size, mean, std) -> dict[str, str]:  # model.onnx's metadata_props
        return onnx_metadata(task=task, classes=list(classes), source=source, size=size, mean=mean, std=std)

    def write(stage: Path):
        diff, checks, extra, src, files = TASKS[task](run, stage, images, meta)
        code = resources.files("transferkit.ship").joinpath("dense_post.py")
        with resources.as_file(code) as p:
            shutil.copyfile(p, stage / "postprocess.py")
        report = DenseParity(fmt, task, len(images), diff, checks)
        pre = {"size": src["image_size"], "mean": list(src["mean"]), "std": list(src["std"]),
               "resize": "RGB, bilinear to size x size", "scale": "1/255, then (x - mean) / std",
               "layout": "NCHW float32"}
        return {"format": fmt, "task": task, "run": str(run.resolve()), "files": [*files, "postprocess.py"],
                "inputs": ["pixel_values"], "preprocess": pre, "modality": "image", "input_kind": "image",
                "parity_split": split, "load": "import postprocess; postprocess.predict('OUT', 'image.png')",
                **extra}, report
    return write_export(folder, write, log)
