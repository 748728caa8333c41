"""Detection runs, for the CLI: train on a data set into a run folder, evaluate a finished run on
labelled data, predict boxes for new images. The caller claims the run folder (the run-folder rules
of store/runfolder.py); these functions write only the files they name.

A run folder after `train_run`:
    detector.safetensors, detector.json   weights; spec, classes, COCO category ids
    split.json                            which images trained and which were held out for testing
    history.json                          loss per step (total and each term)
    metrics.json                          map, map_50, map_75, per-class AP on the test images
    report.html                           the test images worst first, predicted boxes beside the truth
    test_predictions.json / .csv          the test images' boxes as COCO results / CSV rows
"""

from __future__ import annotations

import csv
import io
import json
import random
from dataclasses import asdict
from pathlib import Path

from ..data.pictures import IMAGE_EXTS
from ..data.splits import DataError
from ..store.checkpoint import atomic_write_json, atomic_write_text
from .formats import DetectionItem, DetectionSet
from .read import read_detection
from .metrics import detection_metrics
from .model import build_detector, load_detector, save_detector
from .predict import CSV_COLUMNS, coco_results, items_for_images, predict, prediction_rows
from .train import TrainConfig, train_detector

OUTPUTS = ("predictions.csv", "predictions.json")


def split_items(items: list[DetectionItem], fraction: float, seed: int) -> tuple[list, list]:
    """(train, test): a seeded share `fraction` of the images held out (at least one, and at least
    one left to train on); images are shuffled from their path order, so a run repeats exactly."""
    if not 0 < fraction < 1:
        raise DataError(f"--test-fraction must be between 0 and 1 (exclusive) for detection, got {fraction}")
    if len(items) < 2:
        raise DataError(f"{len(items)} image: detection needs at least 2 (one to train, one to test), "
                        "or pass --test with labelled test data")
    order = sorted(range(len(items)), key=lambda i: items[i].image)
    random.Random(seed).shuffle(order)
    n = min(len(items) - 1, max(1, round(len(items) * fraction)))
    held = set(order[:n])
    return ([it for i, it in enumerate(items) if i not in held],
            [it for i, it in enumerate(items) if i in held])


def choose_items(ds: DetectionSet, *, test: str | Path | None = None, test_fraction: float = 0.2,
                 seed: int = 0, shots: int | None = None, log=print) -> tuple[list, list]:
    """(train, test) items of a run: all of DATA and the labelled `test` data (same classes), or a
    seeded held-out share of DATA; with `shots`, a seeded subset of that many training images."""
    if test is not None:
        test_ds = read_detection(test)
        if test_ds.classes != ds.classes:
            raise DataError(f"--test {test}: classes {test_ds.classes} differ from the training data's "
                            f"{ds.classes}; give both the same class list")
        train_items, test_items = ds.items, test_ds.items
    else:
        train_items, test_items = split_items(ds.items, test_fraction, seed)
    if shots is not None:
        if shots > len(train_items):
            log(f"warning: --shots {shots} but only {len(train_items)} training images; training on all of them")
        order = sorted(range(len(train_items)), key=lambda i: train_items[i].image)
        random.Random(seed + 1).shuffle(order)
        keep = set(order[:shots])
        train_items = [it for i, it in enumerate(train_items) if i in keep]
    return train_items, test_items


def train_run(data: str | Path | DetectionSet, run_dir: str | Path, *, annotations: str | Path | None = None,
              test: str | Path | None = None, test_fraction: float = 0.2,
              source: str = "bundled:efficientnet_lite0", arch: str = "fcos", image_size: int = 256,
              freeze_backbone: bool = False, config: TrainConfig | None = None, shots: int | None = None,
              split: tuple[list, list] | None = None, checkpoint=None, log=print) -> dict | None:
    """Read DATA (COCO/YOLO/VOC; or a DetectionSet already read), train a detector on it (less a held-out test share, or all of it
    when `test` names labelled test data in the same classes), score it on the test images and
    write the run folder's files (module docstring). `shots`: train on that many labelled images
    (a seeded subset of the training share); `split`: the (train, test) items `choose_items` gave.
    `checkpoint` (detection/checkpoint.py) saves RUN/last/ and may stop the run early: then the
    result is None and no metrics are written. Returns the metrics."""
    import torch
    cfg = config or TrainConfig()
    run = Path(run_dir)
    ds = data if isinstance(data, DetectionSet) else read_detection(data, annotations)
    for note in ds.notes:
        log(f"note: {note}")
    train_items, test_items = split or choose_items(ds, test=test, test_fraction=test_fraction, seed=cfg.seed,
                                                    shots=shots, log=log)
    atomic_write_json(run / "split.json", {"train": [it.image for it in train_items],
                                           "test": [it.image for it in test_items]})
    torch.manual_seed(cfg.seed)  # the new FPN and heads (and an @random body) start the same for a seed
    model = build_detector(source, len(ds.classes), arch, image_size=image_size, freeze_backbone=freeze_backbone)
    log(f"detect: {ds.format} data, {len(ds.classes)} classes, {len(train_items)} training images "
        f"({sum(len(it.boxes) for it in train_items)} boxes), {len(test_items)} test images; "
        f"{arch} on {source} at {image_size}px, {cfg.steps} steps of {cfg.batch_size}")
    every = max(1, cfg.steps // 10)
    fit = train_detector(model, train_items, cfg,
                         log=lambda s, parts: log(f"step {s}/{cfg.steps} loss {sum(parts.values()):.4f}")
                         if s % every == 0 or s == cfg.steps else None, checkpoint=checkpoint)
    if fit.stopped:
        return None
    save_detector(model, ds.classes, run, category_ids=ds.category_ids)
    atomic_write_json(run / "history.json", {"loss": fit.losses, "parts": fit.parts,
                                             "seconds": round(fit.seconds, 2), "config": asdict(cfg)})
    preds = predict(model, test_items, batch_size=cfg.batch_size)
    metrics = {"task": "detect", **detection_metrics(preds, test_items, ds.classes),
               "n_train": len(train_items), "arch": arch, "source": source, "image_size": image_size,
               "steps": cfg.steps, "train_seconds": round(fit.seconds, 2)}
    atomic_write_json(run / "metrics.json", metrics)
    _write_predictions(run, "test_predictions", preds, test_items, ds.classes, ds.category_ids)
    if test_items:
        from .report import write_detection_report
        write_detection_report(run, metrics, test_items, preds, ds.classes)
    log(f"test mAP {_pct(metrics['map'])} (mAP@50 {_pct(metrics['map_50'])}) on {len(test_items)} images; "
        f"wrote {run}/detector.safetensors, metrics.json, test_predictions.json/.csv, report.html")
    return metrics


def evaluate_run(run_dir: str | Path, data: str | Path, *, annotations: str | Path | None = None,
                 batch_size: int = 8, log=print) -> dict:
    """Metrics of a finished run on labelled DATA whose classes are the run's."""
    model, classes = load_detector(run_dir)
    model.to(_device())
    ds = read_detection(data, annotations)
    if ds.classes != classes:
        raise DataError(f"{data}: classes {ds.classes} are not the run's {classes}; evaluate on data "
                        "labelled with the classes the run was trained on")
    preds = predict(model, ds.items, batch_size=batch_size)
    return {"task": "detect", **detection_metrics(preds, ds.items, classes)}


def predict_run(run_dir: str | Path, inputs: list[str], output: str | Path | None = None, *,
                batch_size: int = 8, log=print) -> list[dict]:
    """Boxes for images (files, or folders of them): one row per box (CSV_COLUMNS); with `output`,
    `predictions.csv` and `predictions.json` (COCO results; image_id = position in the CSV's image
    order, from 1) are written there; existing files are never replaced."""
    model, classes = load_detector(run_dir)
    model.to(_device())
    meta = json.loads((Path(run_dir) / "detector.json").read_text(encoding="utf-8"))
    items = items_for_images(_image_paths(inputs))
    preds = predict(model, items, batch_size=batch_size)
    if output is not None:
        out = Path(output).expanduser()
        taken = [n for n in OUTPUTS if (out / n).exists()]
        if taken or (out.exists() and not out.is_dir()):
            raise FileExistsError(f"--out {out} already holds {taken[0] if taken else 'a file of that name'}; "
                                  "choose an empty or new folder (files are never replaced)")
        out.mkdir(parents=True, exist_ok=True)
        _write_predictions(out, "predictions", preds, items, classes,
                           meta.get("category_ids") or list(range(1, len(classes) + 1)))
    return prediction_rows(preds, items, classes)


def _write_predictions(folder: Path, stem: str, preds, items, classes, category_ids) -> None:
    atomic_write_json(folder / f"{stem}.json", coco_results(preds, items, category_ids))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(prediction_rows(preds, items, classes))
    atomic_write_text(folder / f"{stem}.csv", buf.getvalue())


def _image_paths(inputs: list[str]) -> list[Path]:
    paths = []
    for s in inputs:
        p = Path(s).expanduser()
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTS
                           and not f.name.startswith("."))
            if not found:
                raise DataError(f"{p} holds no images ({', '.join(sorted(IMAGE_EXTS))})")
            paths += found
        elif p.is_file():
            paths.append(p)
        else:
            raise DataError(f"input not found: {p}")
    return paths


def _device() -> str:
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


