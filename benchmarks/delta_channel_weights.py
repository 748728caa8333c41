"""What DELTA's channel weights cost a run: batched channel ablations against one pass per channel.

A `--reg delta:A` run fits a head on the frozen source features of up to 64 training items and
zeroes every channel of every compared layer (the top half of the stages' outputs) to weigh it by
the loss increase (Li et al., ICLR 2019). This times that setup as a run does it (batched: the
network runs once up to the layer, then the layer's output is repeated once per ablated channel),
and one full forward pass per channel on a sample of channels of each layer, extrapolated to all
channels; the two give the same loss increases on the sampled channels (max difference printed).
Times are CPU seconds of this process (`time.process_time`), so other load on a shared machine does
not inflate them; with `--threads 1` they are what one core spends.

    python benchmarks/delta_channel_weights.py --image-size 112 --threads 1

Writes OUT/delta_channel_weights.json and .md (OUT: benchmarks/results).
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import sys
import time
from pathlib import Path

import torch
from torch import nn

from transferkit.config import make_config
from transferkit.data import load_task
from transferkit.demo import IMAGE_DEMO
from transferkit.engine.build import build_model
from transferkit.engine.delta_setup import (CHANNEL_WEIGHT_ITEMS, _spread_over_classes, channel_weights_for,
                                            delta_layers)
from transferkit.engine.headfit import fit_head
from transferkit.infer.features import extract_features
from transferkit.infer.loaders import eval_loader, make_dataset
from transferkit.regularizers.delta_weights import call_backbone, _layer_increases, _zeroed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(IMAGE_DEMO))
    ap.add_argument("--backbone", default="bundled:efficientnet_lite0")
    ap.add_argument("--image-size", type=int, default=112)
    ap.add_argument("--shots", type=int, default=10)
    ap.add_argument("--sample", type=int, default=4, help="channels per layer timed one pass each")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--out", default="benchmarks/results", help="folder for delta_channel_weights.{json,md}")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = make_config(data=args.data, backbone=args.backbone, image_size=args.image_size,
                      shots=args.shots, reg="delta:0.01")
    task = load_task(cfg.data, shots=cfg.shots, seed=cfg.seed)
    torch.manual_seed(cfg.seed)
    model, _ = build_model(cfg, task.classes)
    source = model.backbone.eval().requires_grad_(False)
    layers = delta_layers(model)

    t0 = time.process_time()
    weights = channel_weights_for(cfg, model, source, layers, task.train, "cpu", log=lambda *_: None)
    run_seconds = time.process_time() - t0

    # the same head and batches, to time the two ablation methods side by side
    items = _spread_over_classes(task.train, CHANNEL_WEIGHT_ITEMS, cfg.seed)
    loader = eval_loader(model, make_dataset(model, items, train=False, augment=False,
                                             image_size=cfg.image_size, seed=cfg.seed), cfg.batch_size)
    feats, labels = extract_features(source, loader, "cpu")
    head = copy.deepcopy(model.head)
    fit_head(head, feats, labels)
    head.eval()
    batches = [(x, torch.as_tensor(y)) for x, y in loader]
    loss = nn.CrossEntropyLoss()
    with torch.no_grad():
        base = [float(loss(head(call_backbone(source, x)), y)) for x, y in batches]
    modules = dict(source.named_modules())
    rows, max_diff = [], 0.0
    for name in layers:
        channels = weights[name].numel()
        t = time.process_time()
        with torch.no_grad():
            batched = _layer_increases(source, head, modules[name], channels, batches, base, loss)
        t_batched = time.process_time() - t
        sample = list(range(0, channels, max(1, channels // args.sample)))[:args.sample]
        t = time.process_time()
        with torch.no_grad():
            for c in sample:
                inc = 0.0
                for (x, y), b in zip(batches, base):
                    with _zeroed(modules[name], [c]):
                        inc += (float(loss(head(call_backbone(source, x)), y)) - b) / len(batches)
                max_diff = max(max_diff, abs(inc - batched[c]))
        t_single = (time.process_time() - t) / len(sample) * channels
        w = weights[name]
        rows.append({"layer": name, "channels": channels, "batched_s": round(t_batched, 2),
                     "one_pass_per_channel_s": round(t_single, 1), "ratio": round(t_single / t_batched, 1),
                     "weight_max_over_uniform": round(float(w.max() * channels), 3),
                     "weight_min_over_uniform": round(float(w.min() * channels), 3)})
    total_b = sum(r["batched_s"] for r in rows)
    total_s = sum(r["one_pass_per_channel_s"] for r in rows)
    result = {"command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
              "backbone": args.backbone, "image_size": args.image_size, "items": len(items),
              "threads": torch.get_num_threads(), "run_setup_s": round(run_seconds, 1),
              "batched_s": round(total_b, 1), "one_pass_per_channel_s_extrapolated": round(total_s, 1),
              "ratio": round(total_s / total_b, 1), "max_increase_difference": max_diff, "layers": rows}
    lines = [f"`{result['command']}`", "",
             f"{args.backbone} at {args.image_size} px, {len(items)} items, {result['threads']} thread(s). "
             f"DELTA setup as a run pays it (features, head fit, batched ablations): {run_seconds:.1f} CPU s.", "",
             "| layer | channels | batched CPU s | one pass per channel CPU s (extrapolated) | ratio | max W / uniform | min W / uniform |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['layer']} | {r['channels']} | {r['batched_s']} | {r['one_pass_per_channel_s']} | "
              f"{r['ratio']}x | {r['weight_max_over_uniform']} | {r['weight_min_over_uniform']} |" for r in rows]
    lines += [f"| all | {sum(r['channels'] for r in rows)} | {total_b:.1f} | {total_s:.1f} | "
              f"{total_s / total_b:.1f}x | | |", "",
              f"Largest difference between the two methods' loss increases on the sampled channels: {max_diff:.2e}"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "delta_channel_weights.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "delta_channel_weights.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
