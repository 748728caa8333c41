"""Unlabelled target images next to a few labels: does `train --unlabelled` help?

For each data set (Debian clip art; scikit-learn's handwritten digits) x seed, one split: half of the
data is the test split (`load_task(..., val_fraction=0.0, test_fraction=0.5)`), 5 labelled images per
class are drawn from the other half, and the rest of that half — its images without their labels —
is the unlabelled pool (written as a CSV with a `path` column, as a user would give it). Rows, on the
same splits and seeds:

- `linear_probe` / `linear_probe+pool`: the probe; with the pool, AdaBN is tried and kept only when
  the probe's cross-validated accuracy is higher with the re-estimated BatchNorm statistics.
- `two_phase` / `two_phase+pool`: LP-FT at the default WiSE-FT weight (0.5); with the pool, the same
  AdaBN gate in the head phase and FixMatch (weight 1, threshold 0.95, one unlabelled image per
  labelled one) in the fine-tuning phase.

Prints mean ± std test accuracy, the change the pool made (per seed, then averaged), seconds per
run, how often AdaBN was kept and the share of pseudo-labels FixMatch kept; writes
benchmarks/results/unlabelled.{json,md}.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

ROWS = ("linear_probe", "linear_probe+pool", "two_phase", "two_phase+pool")


def _pool_csv(task, path: Path) -> int:
    """The non-test half minus the training items, as a `path` CSV; returns its size."""
    from transferkit.data import load_task
    full = load_task(task["data"], seed=task["seed"], val_fraction=0.0, test_fraction=0.5)
    train = {e.x for e in task["task"].train}
    xs = [e.x for e in full.train if e.x not in train]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path"])
        w.writerows([str(Path(x).resolve())] for x in xs)
    return len(xs)


def run_job(job: dict) -> dict:
    import torch

    from fewshot import _cfg
    from transferkit.data import load_task
    from transferkit.engine.fit import fit
    torch.set_num_threads(job["threads"])
    task = load_task(job["data"], shots=job["shots"], seed=job["seed"], val_fraction=0.0, test_fraction=0.5)
    root = Path(job["tmp"]) / f"{job['dataset']}_{job['seed']}"
    pool = root / "pool.csv"
    n_pool = _pool_csv({"data": job["data"], "seed": job["seed"], "task": task}, pool)
    res = {k: v for k, v in job.items() if k not in ("tmp", "data")}
    res["n_pool"], res["n_train"], res["n_test"] = n_pool, len(task.train), len(task.test)
    quiet = lambda *a, **k: None  # noqa: E731
    for row in ROWS:
        strategy = row.split("+")[0]
        over = {"strategy": strategy}
        if job.get("steps"):
            over["steps"] = job["steps"]
        if row.endswith("+pool"):
            over["unlabelled"] = str(pool)
        t0 = time.time()
        r = fit(_cfg(job, root / row.replace("+", "_"), **over), log=quiet, progress=False, task=task)
        if r.metrics is None:
            raise RuntimeError(f"{job['dataset']} seed {job['seed']} {row}: the run was interrupted "
                               f"(signal {r.signal})")
        res[row] = r.metrics["accuracy"]
        res[f"t:{row}"] = round(time.time() - t0, 1)
        if r.metrics.get("unlabelled"):
            res[f"u:{row}"] = r.metrics["unlabelled"]
    return res


def summarise(results: list[dict]) -> str:
    lines = []
    for d in sorted({r["dataset"] for r in results}):
        rs = sorted((r for r in results if r["dataset"] == d), key=lambda r: r["seed"])
        lines += [f"\n### {d} ({rs[0]['n_train']} labels, pool {rs[0]['n_pool']} images, test "
                  f"{rs[0]['n_test']}; {len(rs)} seeds)\n",
                  "| row | accuracy | pool - no pool (per seed) | s/run | AdaBN kept | pseudo-labels kept |",
                  "|---|---:|---:|---:|---:|---:|"]
        for row in ROWS:
            acc = [r[row] for r in rs]
            cell = f"{np.mean(acc):.3f} ± {np.std(acc, ddof=1) if len(acc) > 1 else 0:.3f}"
            delta = ada = kept = "–"
            if row.endswith("+pool"):
                diffs = [r[row] - r[row.split("+")[0]] for r in rs]
                delta = (f"{np.mean(diffs):+.3f} (" + ", ".join(f"{x:+.3f}" for x in diffs) + ")")
                us = [r.get(f"u:{row}") or {} for r in rs]
                ada = f"{sum(bool((u.get('adabn') or {}).get('applied')) for u in us)}/{len(us)}"
                fm = [u.get("fixmatch") for u in us if u.get("fixmatch")]
                if fm:
                    kept = f"{sum(f['kept'] for f in fm) / max(1, sum(f['seen'] for f in fm)):.1%}"
            t = np.mean([r[f"t:{row}"] for r in rs])
            lines.append(f"| {row} | {cell} | {delta} | {t:.0f} | {ada} | {kept} |")
        heldout = []
        for r in rs:
            a = (r.get("u:linear_probe+pool") or {}).get("adabn") or {}
            if a.get("held_out_source") is not None:
                heldout.append(f"{a['held_out_source']:.3f} -> {a['held_out_adabn']:.3f}")
        if heldout:
            lines.append(f"\nAdaBN gate (probe, 5-fold CV accuracy, source -> re-estimated statistics, per seed): "
                         + "; ".join(heldout))
    return "\n".join(lines)


def main() -> None:
    from datasets import image_datasets
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="clipart,digits")
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=None, help="fine-tuning steps (default: the engine's)")
    ap.add_argument("--jobs", type=int, default=1, help="parallel processes")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--out", default="benchmarks/results/unlabelled")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="tk-unlabelled-")
    os.environ.setdefault("TRANSFERKIT_CACHE", str(Path(tmp) / "cache"))
    wanted = a.datasets.split(",")
    data = image_datasets(tmp, wanted)
    jobs = [{"dataset": d, "data": str(p), "shots": a.shots, "seed": sd, "image_size": a.image_size,
             "backbone": "bundled:efficientnet_lite0", "tmp": tmp, "threads": a.threads, "steps": a.steps}
            for (d, p), sd in itertools.product(data.items(), range(a.seeds))]
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results, t0 = [], time.time()
    with mp.get_context("spawn").Pool(a.jobs) as pool:
        for r in pool.imap_unordered(run_job, jobs):
            results.append(r)
            print(f"[{len(results)}/{len(jobs)}] {r['dataset']} seed {r['seed']}: "
                  + ", ".join(f"{row} {r[row]:.3f} ({r['t:' + row]}s)" for row in ROWS), flush=True)
    cmd = "python benchmarks/unlabelled.py " + " ".join(sys.argv[1:])
    Path(str(out) + ".json").write_text(json.dumps({"command": cmd, "seconds": round(time.time() - t0),
                                                    "results": results}, indent=1) + "\n")
    text = (f"# Unlabelled pool next to 5 labels per class\n\n`{cmd}` ({time.time() - t0:.0f}s)\n"
            + summarise(results) + "\n")
    Path(str(out) + ".md").write_text(text)
    print(text)
    shutil.rmtree(tmp, ignore_errors=True)  # the run folders and the feature cache


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
