"""How far L2-SP keeps the backbone from drifting, decoupled (the AdamW default) against coupled.

Trains `--strategy full` on the same split once without a regularizer and once per L2-SP setting,
and reports for each the distance of the backbone to its source weights relative to the plain run
(1.0 = no effect, 0 = held at the source), with validation and test accuracy. This is what
`L2SP_AUTO_GRID` is sized by: alpha is a rate (per-step pull lr * alpha), so the grid should run
from "barely anything" to "held at the source" over the default schedule.

    python benchmarks/l2sp_pull.py --image-size 96 --steps 60 --threads 1

Writes OUT/l2sp_pull.json and .md.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from transferkit.config import make_config
from transferkit.demo import IMAGE_DEMO
from transferkit.engine.fit import fit


def _distance(weights: dict, source: dict) -> float:
    return float(sum(((weights[k].float() - v.float()) ** 2).sum() for k, v in source.items()).sqrt())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(IMAGE_DEMO))
    ap.add_argument("--backbone", default="bundled:efficientnet_lite0")
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--shots", type=int, default=10)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--regs", default="l2sp:1,l2sp:10,l2sp:100,l2sp:1000,l2sp:10;coupled,l2sp:1000;coupled",
                    help="comma-separated; ';' stands for ',' inside one spec")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--out", default="runs/bench/l2sp_pull")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    regs = [None] + [r.replace(";", ",0,") for r in args.regs.split(",") if r]
    rows, source = [], None
    for i, reg in enumerate(regs):
        cfg = make_config(data=args.data, backbone=args.backbone, image_size=args.image_size,
                          shots=args.shots, steps=args.steps, strategy="full", reg=reg or "l2sp:0,0,coupled",
                          store_anchor=True, out=str(out / f"run{i}"))
        t0 = time.time()
        result = fit(cfg, log=lambda *_: None, progress=False)
        seconds = time.time() - t0
        if source is None:
            source = load_file(str(out / "run0" / "anchor.safetensors"))
        last = load_file(str(out / f"run{i}" / "last" / "model.safetensors"))
        best_val = max((r.get("val_accuracy", 0.0) for r in result.state.history), default=float("nan"))
        rows.append({"reg": reg or "none", "distance": _distance(last, source), "best_val_accuracy": best_val,
                     "test_accuracy": result.metrics.get("accuracy"), "seconds": round(seconds, 1)})
    plain = rows[0]["distance"]
    for r in rows:
        r["distance_vs_none"] = round(r["distance"] / plain, 3)
    result = {"command": "python " + " ".join(shlex.quote(a) for a in sys.argv), "rows": rows}
    lines = [f"`{result['command']}`", "",
             f"{args.backbone}, {args.image_size} px, {args.shots} shots/class, full, {args.steps} AdamW "
             "steps (backbone LR 1e-4, warm-up + cosine); distance = ||w_backbone - w_source|| after the "
             "last step, relative to the run without L2-SP", "",
             "| --reg | distance vs none | best val acc | test acc (best checkpoint) | s |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['reg']} | {r['distance_vs_none']} | {r['best_val_accuracy']:.3f} | "
              f"{r['test_accuracy']:.3f} | {r['seconds']} |" for r in rows]
    out.mkdir(parents=True, exist_ok=True)
    (out / "l2sp_pull.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "l2sp_pull.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
