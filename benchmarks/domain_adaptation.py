"""Unsupervised domain adaptation, printed digits -> handwritten digits (transferkit adapt).

Source: digits 0-9 rendered from the fonts of Debian packages (scripts/build_digits_da.py; labelled).
Target: scikit-learn's handwritten digits (load_digits; unlabelled during adaptation, its labels
only score the final model). The same backbone, strategy, steps, batches and seeds for every method;
source_only is the baseline, and each method's gain over it is measured seed by seed.

    python scripts/build_digits_da.py --out runs/digits_da          # once (needs the font packages)
    python benchmarks/domain_adaptation.py                          # the README table (see README for time)
    python benchmarks/domain_adaptation.py --backbone timm:test_resnet@random --steps 4 \\
        --seeds 1 --out /tmp/da_smoke --results ""                   # smoke test

Writes OUT/<method>_s<seed>/ (one adapt run each; a finished run is reused when the command is
run again) and benchmarks/results/domain_adaptation.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def _run_one(args, method: str, seed: int) -> dict:
    run = Path(args.out) / f"{method}_s{seed}"
    if not (run / "metrics.json").is_file():
        cmd = [sys.executable, "-m", "transferkit", "adapt", "--source", str(Path(args.data) / "source"),
               "--target", str(Path(args.data) / "target"), "--target-test", str(Path(args.data) / "target"),
               "--backbone", args.backbone, "--method", method, "--seed", str(seed), "--out", str(run),
               "--image-size", str(args.image_size), "--steps", str(args.steps), "--batch-size", str(args.batch_size),
               "--strategy", args.strategy, "--lr", str(args.lr), "--backbone-lr-mult", str(args.backbone_lr_mult),
               "--trade-off", str(args.trade_off),
               "--eval-every", str(args.eval_every or args.steps), "--no-augment", "--no-tta", "--quiet"]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        log = Path(args.out) / f"{method}_s{seed}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        with open(log, "w") as fh:
            proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)
            _, status, usage = os.wait4(proc.pid, 0)  # this child's own CPU time
            proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            raise SystemExit(f"{shlex.join(cmd)} failed; see {log}")
        (run / "bench_time.json").write_text(json.dumps({"wall_s": round(time.time() - t0, 1),
                                                         "cpu_s": round(usage.ru_utime + usage.ru_stime, 1)}))
    m = json.loads((run / "metrics.json").read_text())
    t = json.loads((run / "bench_time.json").read_text()) if (run / "bench_time.json").is_file() else {}
    return {"method": method, "seed": seed, "target_accuracy": m["accuracy"], "target_macro_f1": m["macro_f1"],
            "source_val_accuracy": m["source_val"]["accuracy"], **t}


def _table(rows: list[dict], methods: list[str]) -> str:
    base = {r["seed"]: r["target_accuracy"] for r in rows if r["method"] == "source_only"}
    out = ["| method | target test accuracy (mean ± sd) | per seed | gain over source_only (per seed) "
           "| source val accuracy | minutes per run (wall / CPU) |", "| --- | --- | --- | --- | --- | --- |"]
    for meth in methods:
        rs = sorted((r for r in rows if r["method"] == meth), key=lambda r: r["seed"])
        acc = np.array([r["target_accuracy"] for r in rs])
        gains = [r["target_accuracy"] - base[r["seed"]] for r in rs if r["seed"] in base]
        gain = "–" if meth == "source_only" or not gains else (
            f"{100 * np.mean(gains):+.1f} pts ({', '.join(f'{100 * g:+.1f}' for g in gains)})")
        out.append(f"| {meth} | {100 * acc.mean():.1f} ± {100 * acc.std(ddof=1) if len(acc) > 1 else 0:.1f} "
                   f"| {', '.join(f'{100 * a:.1f}' for a in acc)} | {gain} "
                   f"| {100 * np.mean([r['source_val_accuracy'] for r in rs]):.1f} "
                   f"| {np.mean([r.get('wall_s', np.nan) for r in rs]) / 60:.1f} / "
                   f"{np.mean([r.get('cpu_s', np.nan) for r in rs]) / 60:.1f} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(REPO / "runs" / "digits_da"),
                    help="built by scripts/build_digits_da.py (built there if missing)")
    ap.add_argument("--backbone", default="bundled:efficientnet_lite0")
    ap.add_argument("--methods", default="source_only,dann,mcc")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=32, help="per domain")
    ap.add_argument("--strategy", default="full")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--backbone-lr-mult", type=float, default=0.1)
    ap.add_argument("--trade-off", type=float, default=1.0)
    ap.add_argument("--eval-every", type=int, default=None, help="default: only at the end")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time (2 cores: 2 runs of 1 thread)")
    ap.add_argument("--out", default=str(REPO / "runs" / "da_bench"))
    ap.add_argument("--results", default=str(RESULTS / "domain_adaptation"),
                    help="writes RESULTS.json and RESULTS.md ('' to skip)")
    args = ap.parse_args(argv)
    if not (Path(args.data) / "source").is_dir():
        sys.path.insert(0, str(REPO / "scripts"))
        from build_digits_da import build
        build(Path(args.data))
    methods = args.methods.split(",")
    t0 = time.time()
    cells = [(m, s) for s in range(args.seeds) for m in methods]
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(lambda c: _run_one(args, *c), cells))
    minutes = (time.time() - t0) / 60
    table = _table(rows, methods)
    command = "python benchmarks/domain_adaptation.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    print(table)
    print(f"\n{len(cells)} runs in {minutes:.1f} min wall-clock ({args.jobs} at a time, {args.threads} thread(s) each)")
    if args.results:
        Path(args.results).parent.mkdir(parents=True, exist_ok=True)
        setup = {k: getattr(args, k) for k in ("backbone", "image_size", "steps", "batch_size", "strategy", "lr",
                                               "backbone_lr_mult", "trade_off", "seeds", "jobs", "threads")}
        Path(args.results + ".json").write_text(json.dumps({"command": command, "setup": setup, "rows": rows,
                                                            "minutes": round(minutes, 2)}, indent=2) + "\n")
        Path(args.results + ".md").write_text(f"`{command}`\n\n{table}\n\n{len(cells)} runs in {minutes:.1f} min "
                                              f"wall-clock.\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
