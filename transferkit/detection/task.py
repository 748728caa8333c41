"""`--task detect`: the dense-task contract of transferkit/dense/__init__.py over detection/run.py
(registered in `transferkit.dense.TASKS`).

TrainConfig fields read: data, test, test_fraction, backbone, out, strategy (linear_probe: train FPN
and heads on the frozen backbone; auto or full: fine-tune everything), steps (else epochs over the
training images, else 300), batch_size, lr, backbone_lr_mult, weight_decay, warmup, augment
(horizontal flip), image_size (default 256, rounded up to a multiple of 32), seed.
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
DEFAULT_STEPS = 300
STRATEGIES = {"auto": False, "full": False, "linear_probe": True}   # name -> backbone frozen


def looks_like(path: Path) -> bool:
    return _format_of(path) is not None


def train(cfg, *, resume: bool = False, log=print, progress: bool = True):
    from ..config import ConfigError
    from ..dense import DenseResult, runs
    from .run import train_run
    from .train import TrainConfig
    if resume:
        raise ConfigError(f"a detect run cannot be resumed yet; train it again with --out {cfg.out} --overwrite")
    if cfg.strategy not in STRATEGIES:
        raise ConfigError(f"--strategy {cfg.strategy}: detect trains with {', '.join(STRATEGIES)} "
                          "(linear_probe: FPN and heads on the frozen backbone)")
    ds = read_detection(cfg.data)              # every data problem is reported before the run folder is made
    size = runs.image_size(cfg, DEFAULT_SIZE, 32)
    n_train = len(ds.items) if cfg.test else max(1, round(len(ds.items) * (1 - cfg.test_fraction)))
    n_train = min(n_train, cfg.shots or n_train)
    steps = cfg.steps or (cfg.epochs * math.ceil(n_train / cfg.batch_size) if cfg.epochs else DEFAULT_STEPS)
    tcfg = TrainConfig(steps=steps, batch_size=cfg.batch_size, lr=cfg.lr, backbone_lr_mult=cfg.backbone_lr_mult,
                       weight_decay=cfg.weight_decay, warmup_steps=round(cfg.warmup * steps),
                       flip=cfg.augment, seed=cfg.seed)
    run = runs.start_run(cfg, NAME, {"id": cfg.backbone, "detector": "fcos", "image_size": size}, log)
    metrics = train_run(ds, run, test=cfg.test, test_fraction=cfg.test_fraction, source=cfg.backbone,
                        image_size=size, freeze_backbone=STRATEGIES[cfg.strategy], config=tcfg,
                        shots=cfg.shots, log=log)
    return DenseResult(run, metrics, summary=SUMMARY)


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
