"""Training a detector: a plain loop, top to bottom.

Images are resized to `image_size` x `image_size` (boxes scaled with them) and kept decoded in
memory (detection sets that transfer learning meets are small: 256 px RGB is 192 KiB an image).
Augmentation is a horizontal flip that flips the boxes too; the flips and the batch order come
from one seeded generator, so a run repeats exactly. AdamW, linear warmup then cosine decay to
zero, the backbone at a tenth of the head's learning rate (it starts from useful weights; the FPN
and heads start from nothing), gradients clipped (a one-stage detector's early steps can spike).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..data.images import open_rgb
from .formats import DetectionItem
from .model import LABEL_OFFSET


@dataclass
class TrainConfig:
    steps: int = 300                 # optimiser steps (batches), not epochs
    batch_size: int = 8
    lr: float = 1e-3                 # FPN and heads; the backbone gets lr * backbone_lr_mult
    backbone_lr_mult: float = 0.1
    weight_decay: float = 1e-4
    warmup_steps: int | None = None  # None: a tenth of the steps, at most 100
    flip: bool = True                # random horizontal flip, boxes flipped with the image
    clip_grad: float = 10.0
    seed: int = 0
    device: str | None = None        # None: the first GPU when there is one, else the CPU


@dataclass
class DetectionFit:
    model: nn.Module
    losses: list[float]                                   # total loss per step
    parts: list[dict[str, float]] = field(default_factory=list)   # each loss term per step
    seconds: float = 0.0
    stopped: bool = False                                 # the checkpoint hook asked to stop early


class ResizedImages:
    """Items decoded once, resized to size x size: (uint8 CHW tensor, boxes in resized pixels)."""

    def __init__(self, items: list[DetectionItem], size: int):
        self.items, self.size = items, size
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if i not in self._cache:
            it = self.items[i]
            self._cache[i] = (load_resized(it.image, self.size),
                              scale_boxes(it.boxes, self.size / it.width, self.size / it.height))
        img, boxes = self._cache[i]
        return img, boxes, torch.tensor(self.items[i].labels, dtype=torch.int64) + LABEL_OFFSET


def load_resized(path, size: int) -> torch.Tensor:
    """The image (a path, or an RGB PIL image already decoded) as uint8 [3, size, size]."""
    im = (path if isinstance(path, Image.Image) else open_rgb(path)).resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1)


def scale_boxes(boxes, sx: float, sy: float) -> torch.Tensor:
    b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    return b * torch.tensor([sx, sy, sx, sy])


def hflip(img: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror an image (C, H, W) and its boxes [x1, y1, x2, y2]: x1' = W - x2, x2' = W - x1."""
    w = img.shape[-1]
    flipped = boxes.clone()
    flipped[:, 0], flipped[:, 2] = w - boxes[:, 2], w - boxes[:, 0]
    return img.flip(-1), flipped


def train_detector(model: nn.Module, items: list[DetectionItem], config: TrainConfig | None = None,
                   log=None, checkpoint=None) -> DetectionFit:
    """Train `model` (from build_detector) on `items` for `config.steps` steps; returns the model
    (left in eval mode) and its loss per step. `log(step, losses)` is called every step if given.

    `checkpoint` (detection/checkpoint.py): `restore(model, opt, sched, gen, fit) -> (step, order)`
    puts a stopped run's state back before the first step, and `after_step(step, model, opt, sched,
    gen, order, fit) -> bool` saves it and says whether to stop (fit.stopped) after a step. Everything
    a step draws comes from `gen`, the global RNG and `order`, so a resumed run takes the same steps."""
    cfg = config or TrainConfig()
    if not items:
        raise ValueError("no training images")
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(device)
    data = ResizedImages(items, model.spec.image_size)
    opt = _optimizer(model, cfg)
    warm = cfg.warmup_steps if cfg.warmup_steps is not None else min(100, cfg.steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, warm, cfg.steps))
    model.train()
    if model.spec.freeze_backbone:
        model.backbone.body.eval()   # a frozen body keeps its BatchNorm statistics too
    fit = DetectionFit(model, [])
    start, order, first = time.perf_counter(), [], 0
    if checkpoint is not None:
        first, order = checkpoint.restore(model, opt, sched, gen, fit)
    for step in range(first, cfg.steps):
        if len(order) < cfg.batch_size:
            order += torch.randperm(len(data), generator=gen).tolist()
        batch, order = order[:cfg.batch_size], order[cfg.batch_size:]
        flips = torch.rand(len(batch), generator=gen) < 0.5
        images, targets = [], []
        for i, flip in zip(batch, flips.tolist()):
            img, boxes, labels = data[i]
            if cfg.flip and flip:
                img, boxes = hflip(img, boxes)
            images.append(img.to(device).float() / 255.0)
            targets.append({"boxes": boxes.to(device), "labels": labels.to(device)})
        losses = model(images, targets)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"detection loss became {loss.item()} at step {step + 1} "
                                     f"({ {k: round(v.item(), 4) for k, v in losses.items()} }); "
                                     "lower the learning rate")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], cfg.clip_grad)
        opt.step()
        sched.step()
        fit.losses.append(loss.item())
        fit.parts.append({k: v.item() for k, v in losses.items()})
        if log is not None:
            log(step + 1, fit.parts[-1])
        if checkpoint is not None and checkpoint.after_step(step + 1, model, opt, sched, gen, order, fit,
                                                            time.perf_counter() - start):
            fit.stopped = True
            break
    fit.seconds += time.perf_counter() - start
    model.eval()
    return fit


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    body = {id(p) for p in model.backbone.body.parameters()}
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        # no weight decay on biases and norm scales (1-d tensors)
        groups.setdefault((id(p) in body, p.ndim <= 1), []).append(p)
    params = [{"params": ps, "lr": cfg.lr * (cfg.backbone_lr_mult if in_body else 1.0),
               "weight_decay": 0.0 if flat else cfg.weight_decay}
              for (in_body, flat), ps in sorted(groups.items())]
    # foreach: one kernel per step over all tensors; the per-tensor loop costs as much as the backward on CPU
    return torch.optim.AdamW(params, lr=cfg.lr, foreach=True)


def _lr_factor(step: int, warmup: int, total: int) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))
