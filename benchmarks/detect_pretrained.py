"""Does the classification backbone's ImageNet training help detection? The same detector trained
from the bundled weights and from random initialisation, side by side, same seed and steps.

    python scripts/build_dense_data.py /tmp/dense        # Tux Paint stamps on MATE photographs
    python benchmarks/detect_pretrained.py /tmp/dense/detect/train /tmp/dense/detect/test \
        [--images 100 --steps 120 --size 128 --arch fcos --batch 8]

`--sources bundled:efficientnet_lite0+frozen` adds the frozen-backbone baseline (FPN + heads only).
Prints one JSON line per run (map, map_50, seconds) and the ratio of mAP@50.
"""

from __future__ import annotations

import argparse
import json
import random
import time

import torch

from transferkit.detection.read import read_detection
from transferkit.detection.metrics import evaluate_detector
from transferkit.detection.model import build_detector
from transferkit.detection.train import TrainConfig, train_detector


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("train")
    ap.add_argument("test")
    ap.add_argument("--images", type=int, default=100, help="training images used (seeded sample)")
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--arch", default="fcos")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sources", default="bundled:efficientnet_lite0,bundled:efficientnet_lite0@random",
                    help="comma-separated; a source ending in '+frozen' trains FPN and heads only")
    a = ap.parse_args(argv)
    train, test = read_detection(a.train), read_detection(a.test)
    items = sorted(train.items, key=lambda it: it.image)
    random.Random(a.seed).shuffle(items)
    items = items[:a.images]
    results = {}
    for source in a.sources.split(","):
        torch.manual_seed(a.seed)
        frozen = source.endswith("+frozen")
        model = build_detector(source.removesuffix("+frozen"), len(train.classes), a.arch, image_size=a.size,
                               freeze_backbone=frozen)
        t = time.perf_counter()
        fit = train_detector(model, items, TrainConfig(steps=a.steps, batch_size=a.batch, lr=a.lr, seed=a.seed))
        metrics, _ = evaluate_detector(model, test.items, test.classes)
        row = {"source": source, "arch": a.arch, "size": a.size, "images": len(items), "steps": a.steps,
               "map": metrics["map"], "map_50": metrics["map_50"], "per_class": metrics["per_class"],
               "loss_first": round(sum(fit.losses[:5]) / 5, 4), "loss_last": round(sum(fit.losses[-5:]) / 5, 4),
               "seconds": round(time.perf_counter() - t, 1)}
        results[source] = row
        print(json.dumps(row), flush=True)
    if len(results) >= 2:
        a_, b_ = (r["map_50"] or 0.0 for r in list(results.values())[:2])
        print(f"mAP@50 {a_:.3f} vs {b_:.3f}" + (f": ratio {a_ / b_:.1f}x" if b_ else ""))


if __name__ == "__main__":
    main()
