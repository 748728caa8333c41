"""Strategies x shots x seeds on one task, with the plain linear probe alongside (transferkit compare).

Defaults: the bundled clip-art set (10 classes, Debian openclipart) with ImageNet EfficientNet-Lite0
at 128 px, shots 5, 10 and all, 3 seeds, strategies linear_probe, full, full+l2sp, two_phase, scratch.

    python benchmarks/compare_strategies.py                     # the README table (long on 2 CPU cores)
    python benchmarks/compare_strategies.py --budget 60         # shorten/skip cells to fit an hour
    python benchmarks/compare_strategies.py --backbone timm:test_resnet@random --image-size 32 \\
        --seeds 1 --steps 3 --shots 5 --out /tmp/smoke         # smoke test

Writes OUT/compare.json, compare.md, compare.html and one run directory per training cell; a cell
already finished with the same configuration is reused when the command is run again.
"""

from __future__ import annotations

import argparse
import shlex
import sys

import torch

from transferkit.choose.compare import parse_seeds, parse_shots, run_compare
from transferkit.choose.compare_report import format_markdown
from transferkit.config import make_config
from transferkit.demo import IMAGE_DEMO


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(IMAGE_DEMO))
    ap.add_argument("--backbone", default="bundled:efficientnet_lite0")
    ap.add_argument("--strategies", default="linear_probe,full,full+l2sp,two_phase,scratch")
    ap.add_argument("--shots", default="5,10,all")
    ap.add_argument("--seeds", default="3", help="a count or a comma-separated list")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=None, help="default: the engine's (>= 150 per cell)")
    ap.add_argument("--budget", type=float, default=None, metavar="MINUTES")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--out", default="runs/bench/compare_strategies")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    base = make_config(None, data=args.data, backbone=args.backbone, image_size=args.image_size,
                       batch_size=args.batch_size, steps=args.steps, out=args.out)
    command = "python benchmarks/compare_strategies.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    result = run_compare(base, args.strategies.split(","), parse_shots(args.shots), parse_seeds(args.seeds),
                         args.out, budget_minutes=args.budget, command=command)
    print()
    print(format_markdown(result))
    lp = [r["train_seconds"] for r in result["rows"] if r["strategy"] == "linear_probe" and not r["skipped"]]
    for name in result["strategies"]:
        secs = [r["train_seconds"] for r in result["rows"] if r["strategy"] == name and not r["skipped"]]
        if secs and lp and name not in ("probe", "linear_probe"):
            mean, ref = sum(secs) / len(secs), sum(lp) / len(lp)
            print(f"{name}: {mean:.1f}s per cell, {mean / max(ref, 1e-3):.0f}x a linear_probe cell "
                  f"({ref:.2f}s on cached features; computing them took {result['feature_seconds']:.1f}s once)")
    for shots, r in result["recommended"].items():
        print(f"recommended for {shots if shots == 'all' else shots + ' shots'}: "
              + (r["strategy"] if r else "none"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
