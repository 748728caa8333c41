"""Task `segment`: per-pixel classes from `DATA/images` + `DATA/masks` + `DATA/classes.txt`.

train:    an smp FPN (or UNet, --decoder) on the backbone's timm encoder, source weights copied with
          a name and shape check (dense/encoder.py); loop and strategies in dense/segment_fit.py.
evaluate: miou, per_class_iou, dice, pixel_accuracy (dense/metrics.py) on a labelled folder.
predict:  per input, an index-PNG mask (`STEM_mask.png`, palette-coloured) and an overlay
          (`STEM_overlay.png`) in --out DIR.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..config import ConfigError, TrainConfig
from ..store import checkpoint as ck
from ..engine import interrupt
from . import DenseResult, encoder, runs
from .segment_data import LAYOUT, load_dataset, looks_like, split  # noqa: F401 (the task contract)
from .segment_fit import confusion_on, fit_phases, l2sp_for, plan, predict_logits, save_last
from .metrics import confusion, segmentation_metrics

NAME = "segment"
SUMMARY = ("miou", "dice", "pixel_accuracy", "n_train", "n_val", "n_test")
DEFAULT_SIZE = 256
STRIDE = 32


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _same_classes(other: str, flag: str, classes: list[str]):
    items, theirs = load_dataset(other)
    if theirs != classes:
        raise ConfigError(f"{flag} {other}: classes.txt lists {theirs}, DATA lists {classes}; use the same "
                          "classes.txt (same order) for both")
    return items


def train(cfg: TrainConfig, *, resume: bool = False, log=print, progress: bool = True) -> DenseResult:
    from ..engine.resume import resume_point
    run, state, last = Path(cfg.out).expanduser(), None, None
    if resume:
        cfg, state, last = resume_point(run, cfg, log)
        if state.done:
            return DenseResult(run, ck.read_json(run / "metrics.json") if (run / "metrics.json").is_file()
                               else None, state, summary=SUMMARY)
    items, classes = load_dataset(cfg.data)
    test = _same_classes(cfg.test, "--test", classes) if cfg.test else None
    val = _same_classes(cfg.val, "--val", classes) if cfg.val else None
    train_items, val_items, test_items = split(items, seed=cfg.seed, test_items=test, val_items=val,
                                               test_fraction=cfg.test_fraction, val_fraction=cfg.val_fraction,
                                               shots=cfg.shots)
    phases = plan(cfg, len(train_items))
    files = {name: [f for it in part for f in ((str(it.image), "image"), (str(it.mask), "mask"))]
             for name, part in (("train", train_items), ("val", val_items), ("test", test_items))}
    if resume:
        runs.check_data(run, cfg, classes, files, log)
    bb = encoder.source_backbone(cfg)
    size = runs.image_size(cfg, DEFAULT_SIZE, STRIDE)
    torch.manual_seed(cfg.seed)
    model = encoder.build_segmenter(bb.source.arch, cfg.decoder, len(classes))
    if bb.source.pretrained:
        loaded = encoder.copy_source_weights(encoder.segmenter_encoder(model), bb.module, cfg.backbone, log)
    else:
        loaded = {"loaded": 0, "random": True}
        log(f"encoder: random initialisation ({cfg.backbone})")
    l2sp = l2sp_for(cfg, model, bb.source.pretrained)  # anchored here: on the source weights, also on resume
    pre = bb.preprocess
    if not resume:
        run = runs.start_run(cfg, NAME, runs.source_record(bb, size, {"classes": classes, "decoder": cfg.decoder,
                                                                        "encoder_weights": loaded}), log)
        _write_splits(run, train_items, val_items, test_items)
        runs.record_data(run, classes, files)
        from ..engine.run_state import RunState
        state = RunState()
    else:
        if last is not None:
            ck.verify_dir(last)
            from ..models.sources import load_state_dict_checked
            load_state_dict_checked(model, ck.load_tensors(last / "model.safetensors"), str(last))
        log(f"resuming {run} at step {state.global_step}")
    device = _device()
    model.to(device)
    data = {"train": train_items, "val": val_items, "classes": classes, "size": size, "mean": pre.mean,
            "std": pre.std, "device": device}
    log(f"segment: {len(train_items)} training images, {len(val_items)} validation, {len(test_items)} test; "
        f"{len(classes)} classes; {cfg.decoder.upper()} on {bb.source.arch} at {size}px")
    with interrupt.stop_on_signals():
        stopped = fit_phases(run, cfg, model, phases, data, state, last, log, bb.source.pretrained, l2sp)
    if stopped:
        return DenseResult(run, None, state, interrupted=True, signal=interrupt.requested(), summary=SUMMARY)
    if not val_items or not (run / "model.safetensors").is_file():
        ck.atomic_save_tensors(run / "model.safetensors", model.state_dict())
    state.done = True
    save_last(run, model, None, state)
    model.load_state_dict(ck.load_tensors(run / "model.safetensors"))
    metrics = {"task": NAME, "strategy": cfg.strategy, "decoder": cfg.decoder, "image_size": size,
               "reg": repr(l2sp[1]) if l2sp else None,
               "classes": classes, "n_train": len(train_items), "n_val": len(val_items), "n_test": len(test_items),
               "steps": state.global_step, "best_step": state.best_step if val_items else state.global_step,
               "history": state.history}
    if test_items:
        cm = confusion_on(model, test_items, classes, size, pre.mean, pre.std, device)
        metrics.update(segmentation_metrics(cm, classes))
        metrics["all_background_miou"] = segmentation_metrics(_all_background(cm), classes)["miou"]
    ck.atomic_write_json(run / "metrics.json", metrics)
    if test_items:
        from .report import write_report
        write_report(run, f"segment run {run.name}", metrics,
                     _cards(model, test_items, classes, size, pre.mean, pre.std, device))
    log(f"wrote {run}/model.safetensors, metrics.json" + (", report.html" if test_items else ""))
    return DenseResult(run, metrics, state, summary=SUMMARY)


@torch.no_grad()
def _cards(model, items, classes, size, mean, std, device) -> list[dict]:
    """report.html: per test image, the prediction and the truth over the image, ranked by its mIoU."""
    from .report import overlay
    from .segment_data import load_pair
    model.eval()
    pal, cards = palette(len(classes)), []
    for it in items:
        x, y = load_pair(it, size, mean, std)
        pred = model(x.unsqueeze(0).to(device)).argmax(1)[0].cpu()
        miou = segmentation_metrics(confusion(pred, y, len(classes)), classes)["miou"] or 0.0
        with Image.open(it.image) as im:
            raw = np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.float32)
        cards.append({"name": it.image.name, "badness": 1.0 - miou, "caption": f"mIoU {miou:.3f}",
                      "images": [("prediction", overlay(raw, pred.numpy(), pal)),
                                 ("truth", overlay(raw, y.numpy(), pal))]})
    return cards


def _all_background(cm: torch.Tensor) -> torch.Tensor:
    """The confusion matrix of a model that answers background everywhere (the floor to beat)."""
    out = torch.zeros_like(cm)
    out[:, 0] = cm.sum(1)
    return out


def _write_splits(run: Path, train_items, val_items, test_items) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["image", "mask", "split"])
    for name, items in (("train", train_items), ("val", val_items), ("test", test_items)):
        for it in items:
            w.writerow([str(it.image), str(it.mask), name])
    ck.atomic_write_text(run / "splits.csv", buf.getvalue())


def load_run(run_dir):
    """(model on the device, source.json) of a finished segment run."""
    from ..models.sources import load_state_dict_checked
    cfg, src = runs.open_run(run_dir, NAME)
    model = encoder.build_segmenter(src["arch"], src["decoder"], len(src["classes"]))
    weights = Path(run_dir) / "model.safetensors"
    load_state_dict_checked(model, ck.load_tensors(weights), str(weights))
    return model.to(_device()).eval(), src


def evaluate(run_dir, data, *, log=print) -> dict:
    model, src = load_run(run_dir)
    classes = src["classes"]
    items = _same_classes(data, "DATA", classes)
    cm = confusion_on(model, items, classes, src["image_size"], src["mean"], src["std"], _device())
    return {"task": NAME, "n": len(items), **segmentation_metrics(cm, classes)}


def palette(n: int) -> list[int]:
    """Background black, then well-separated colours (golden-angle hues)."""
    import colorsys
    out = [0, 0, 0]
    for k in range(1, n):
        r, g, b = colorsys.hsv_to_rgb((k * 0.618034) % 1.0, 0.85, 0.95)
        out += [int(r * 255), int(g * 255), int(b * 255)]
    return out + [0] * (768 - len(out))


def predictor(run_dir):
    """(classes, fn): fn(images) -> per image {"mask": uint8 [H, W] class indices at the image's own
    size, "classes": {name: share of the pixels}} (the notebook API's Model.predict; the server's
    model). `images`: paths, or RGB PIL images already decoded (the server's uploads)."""
    from ..data.images import open_rgb
    model, src = load_run(run_dir)
    classes = src["classes"]

    def run(paths: list) -> list[dict]:
        rows = []
        for p in paths:
            idx = predict_mask(model, src, p if isinstance(p, Image.Image) else open_rgb(str(p)))
            rows.append({"mask": idx, "classes": class_shares(idx, classes)})
        return rows
    return classes, run


def predict(run_dir, inputs: list[str], output: str | None, *, log=print) -> list[dict]:
    if not output:
        raise ConfigError("predict of a segment run writes mask images: pass --out DIR")
    classes, run = predictor(run_dir)
    paths = input_images(inputs)
    stems = output_stems(paths)
    out = runs.free_output_dir(output, [f"{s}_{k}.png" for s in stems for k in ("mask", "overlay")])
    rows = []
    from ..data.images import open_rgb
    for p, stem, got in zip(paths, stems, run(paths)):
        idx = got["mask"]
        mask = mask_image(idx, len(classes))
        mask.save(out / f"{stem}_mask.png")
        colour = np.asarray(mask.convert("RGB"), dtype=np.float32)
        base = np.asarray(open_rgb(str(p)), dtype=np.float32)
        blend = np.where(idx[..., None] > 0, 0.5 * base + 0.5 * colour, base).astype(np.uint8)
        Image.fromarray(blend, "RGB").save(out / f"{stem}_overlay.png")
        rows.append({"input": str(p), "mask": str(out / f"{stem}_mask.png"),
                     "overlay": str(out / f"{stem}_overlay.png"), "classes": got["classes"]})
    return rows


def predict_mask(model, src: dict, im) -> np.ndarray:
    """An RGB PIL image's class per pixel [H, W] (uint8) at its own size (logits resized, then argmax)."""
    logits = predict_logits(model, im, src["image_size"], src["mean"], src["std"], _device(), (im.height, im.width))
    return logits.argmax(0).numpy().astype(np.uint8)


def mask_image(idx: np.ndarray, n_classes: int) -> Image.Image:
    """The index mask as a palette PNG image (background black, the classes in `palette` colours)."""
    mask = Image.fromarray(idx, "P")
    mask.putpalette(palette(n_classes))
    return mask


def class_shares(idx: np.ndarray, classes: list[str]) -> dict:
    """{class: share of the pixels} for the classes present, rounded to 4 places."""
    counts = np.bincount(idx.reshape(-1), minlength=len(classes))
    return {classes[k]: round(float(c) / idx.size, 4) for k, c in enumerate(counts) if c}


def input_images(inputs: list[str]) -> list[Path]:
    """Files, or folders of images (a segmentation folder: its images/)."""
    from ..data.pictures import IMAGE_EXTS
    paths: list[Path] = []
    for text in inputs:
        p = Path(text).expanduser()
        if p.is_dir():
            if (p / "images").is_dir():
                p = p / "images"
            paths += [q for q in sorted(p.iterdir()) if q.is_file() and q.suffix.lower() in IMAGE_EXTS]
        elif p.is_file():
            paths.append(p)
        else:
            raise FileNotFoundError(f"input not found: {p}")
    if not paths:
        raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_EXTS))}) in {', '.join(inputs)}")
    if len({str(p.resolve()) for p in paths}) != len(paths):
        raise ConfigError("an input is named twice; list each image once")
    return paths


def output_stems(paths: list[Path]) -> list[str]:
    """The name each input's output files start with: its stem, or PARENT_STEM where stems repeat
    (test/good/000.png and test/scratch/000.png -> good_000, scratch_000)."""
    stems = [p.stem for p in paths]
    out = [f"{p.parent.name}_{p.stem}" if stems.count(p.stem) > 1 else p.stem for p in paths]
    if len(set(out)) != len(out):
        dup = next(s for s in out if out.count(s) > 1)
        raise ConfigError(f"two inputs would both write {dup}_*.png; predict them in separate runs of the command")
    return out
