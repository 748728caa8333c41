"""`--task detect`: the dense-task contract of transferkit/dense/__init__.py over detection/run.py
(registered in `transferkit.dense.TASKS`).

TrainConfig fields read: data, test, test_fraction, backbone, out, strategy (linear_probe: train FPN
and heads on the frozen backbone; auto or full: fine-tune everything), steps (else epochs over the
training images), batch_size, lr, backbone_lr_mult, weight_decay, warmup, augment
(horizontal flip), image_size (default 256, rounded up to a multiple of 32), seed, shots, stop_after,
checkpoint_every, checkpoint_seconds. Unless given: batch_size 8 (DEFAULTS), steps 20 epochs within
150..600.

A run resumes exactly (detection/checkpoint.py): `--stop-after N`, Ctrl-C or SIGTERM leave RUN/last/,
and `train --resume RUN` continues to the weights and metrics an unstopped run ends with, after
checking that DATA's images and annotations are the ones the run started on (fingerprint.json).
"""

from __future__ import annotations

import math
from pathlib import Path

from .read import looks_like as _format_of
from .read import read_detection

NAME = "detect"
LAYOUT = ("COCO (annotations.json + images/), YOLO (data.yaml + images/ + labels/) or Pascal VOC "
          "(Annotations/ + JPEGImages/)")
SUMMARY = ("map", "map_50", "map_75", "n_train", "images")
DEFAULT_SIZE = 256
# unless given (dense.task_defaults): on 50 images at 128 px, 120 steps of 8 reached mAP@50 0.255 and
# 30 steps of 32 (as many images seen, as much CPU) 0.085; few images need many small updates
DEFAULTS = {"batch_size": 8}
# steps unless --steps or --epochs: 20 passes over the training images, within 150..600 steps
DEFAULT_EPOCHS, MIN_STEPS, MAX_STEPS = 20, 150, 600
STRATEGIES = {"auto": False, "full": False, "linear_probe": True}   # name -> backbone frozen


def looks_like(path: Path) -> bool:
    return _format_of(path) is not None


def train(cfg, *, resume: bool = False, log=print, progress: bool = True):
    from ..config import ConfigError
    from ..strategies.plan import BACKBONE_LR_MULT
    from ..dense import DenseResult, runs
    from ..engine import interrupt
    from .checkpoint import DetectionCheckpoint
    from .run import choose_items, train_run
    from .train import TrainConfig
    run, last = Path(cfg.out).expanduser(), None
    if resume:
        from ..engine.resume import resume_point
        cfg, state, last = resume_point(run, cfg, log)
        if state.done:
            return DenseResult(run, _read_metrics(run), state, summary=SUMMARY)
    if cfg.strategy not in STRATEGIES:
        raise ConfigError(f"--strategy {cfg.strategy}: detect trains with {', '.join(STRATEGIES)} "
                          "(linear_probe: FPN and heads on the frozen backbone)")
    ds = read_detection(cfg.data)              # every data problem is reported before the run folder is made
    size = runs.image_size(cfg, DEFAULT_SIZE, 32)
    split = choose_items(ds, test=cfg.test, test_fraction=cfg.test_fraction, seed=cfg.seed, shots=cfg.shots, log=log)
    n_train = len(split[0])
    per_epoch = math.ceil(n_train / cfg.batch_size)
    steps = cfg.steps or (cfg.epochs * per_epoch if cfg.epochs
                          else min(MAX_STEPS, max(MIN_STEPS, DEFAULT_EPOCHS * per_epoch)))
    mult = BACKBONE_LR_MULT if cfg.backbone_lr_mult is None else cfg.backbone_lr_mult
    tcfg = TrainConfig(steps=steps, batch_size=cfg.batch_size, lr=cfg.lr, backbone_lr_mult=mult,
                       weight_decay=cfg.weight_decay, warmup_steps=round(cfg.warmup * steps),
                       flip=cfg.augment, seed=cfg.seed)
    files = {"train": _files(split[0]), "test": _files(split[1])}
    if resume:
        runs.check_data(run, cfg, ds.classes, files, log)
    else:
        run = runs.start_run(cfg, NAME, {"id": cfg.backbone, "detector": "fcos", "image_size": size}, log)
        runs.record_data(run, ds.classes, files)
    hook = DetectionCheckpoint(run, stop_after=cfg.stop_after, every_steps=cfg.checkpoint_every,
                               every_seconds=cfg.checkpoint_seconds, last=last, log=log)
    with interrupt.stop_on_signals():
        metrics = train_run(ds, run, test=cfg.test, test_fraction=cfg.test_fraction, source=cfg.backbone,
                            image_size=size, freeze_backbone=STRATEGIES[cfg.strategy], config=tcfg,
                            shots=cfg.shots, split=split, checkpoint=hook, log=log)
    if metrics is None:
        from ..engine.run_state import RunState
        return DenseResult(run, None, RunState(**ck_state(run)), interrupted=True, signal=interrupt.requested(),
                           summary=SUMMARY)
    hook.finish(steps)
    return DenseResult(run, metrics, summary=SUMMARY)


def _files(items) -> list[tuple[str, str]]:
    """(image, its boxes and labels) per item: a resume sees an edited image or annotation."""
    import json
    return [(it.image, json.dumps([it.boxes, it.labels])) for it in items]


def _read_metrics(run: Path):
    from ..store import checkpoint as ck
    return ck.read_json(run / "metrics.json") if (run / "metrics.json").is_file() else None


def ck_state(run: Path) -> dict:
    from ..store import checkpoint as ck
    return ck.read_json(run / "last" / "state.json")["run_state"]


def evaluate(run_dir, data, *, log=print) -> dict:
    from ..dense import runs
    from .run import evaluate_run
    runs.open_run(run_dir, NAME, needs=("detector.safetensors", "detector.json"))
    return evaluate_run(run_dir, data, log=log)


def predict(run_dir, inputs: list[str], output: str | None, *, log=print) -> list[dict]:
    """One row per box: image, label, score, x1, y1, x2, y2 (with --out: predictions.csv and
    predictions.json, COCO results, in that folder)."""
    from ..dense import runs
    from .run import predict_run
    runs.open_run(run_dir, NAME, needs=("detector.safetensors", "detector.json"))
    return predict_run(run_dir, inputs, output, log=log)


def predictor(run_dir):
    """(classes, fn): fn(images) -> per image {"boxes": float32 [N, 4] x1 y1 x2 y2 in the image's own
    pixels, "scores": [N], "labels": [N class names]}, best score first (Model.predict; the server's
    model). `images`: paths, or RGB PIL images already decoded (the server's uploads)."""
    import torch

    from ..dense import runs
    from .model import load_detector
    from .predict import items_for_images, predict
    runs.open_run(run_dir, NAME, needs=("detector.safetensors", "detector.json"))
    model, classes = load_detector(run_dir)
    model.to("cuda" if torch.cuda.is_available() else "cpu")

    def run(paths: list) -> list[dict]:
        from PIL import Image

        from .formats import DetectionItem
        if paths and all(isinstance(p, Image.Image) for p in paths):
            items = [DetectionItem(f"image{i}", im.width, im.height, [], []) for i, im in enumerate(paths)]
            preds = predict(model, items, images=paths)
        else:
            preds = predict(model, items_for_images(paths))
        rows = []
        for p in preds:
            order = torch.argsort(p["scores"], descending=True)
            rows.append({"boxes": p["boxes"][order].numpy(), "scores": p["scores"][order].numpy(),
                         "labels": [classes[int(c)] for c in p["labels"][order]]})
        return rows
    return classes, run
