"""Exploration behind the backbone LR default above a few labels per class (not a result table): per
recipe, one LP-FT run on a data set at N labels per class and one seed, scored on the test split at
every WiSE-FT weight, with how far the backbone moved, next to the strong probe (fewshot.py's bar) on
the same split. Prints JSON lines. Run it on development seeds only (fewshot.DEV_SEEDS).

    python benchmarks/explore_backbone_lr.py --dataset animals --shots 100 --seed 0 --recipes strong,bb01,bb1
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

RECIPES = {
    "bb01": {"backbone_lr_mult": 0.1},                  # the few-label default: backbone at a tenth of the head's LR
    "bb1": {"backbone_lr_mult": 1.0},                   # the backbone at the head's LR
    "bb1_adapt": {"backbone_lr_mult": 1.0, "bn": "adapt"},
    "bb03": {"backbone_lr_mult": 0.3},
}


def run_job(job: dict) -> dict:
    import torch

    import fewshot as fs
    from transferkit.choose.cv import WISE_GRID
    from transferkit.data import load_task
    from transferkit.engine.fit import fit
    torch.set_num_threads(job["threads"])
    task = load_task(job["data"], shots=job["shots"], seed=job["seed"], val_fraction=0.0,
                     test_fraction=job["test_fraction"])
    t0 = time.time()
    if job["recipe"] == "strong":
        r = fs._strong_probe(task, job)
        return {"recipe": "strong", "accuracy": r["accuracy"], "C": r["C"], "seconds": round(time.time() - t0)}
    out = Path(job["tmp"]) / job["recipe"]
    cfg = fs._cfg(job, out, strategy="two_phase", wise=1.0, **RECIPES[job["recipe"]])
    fit(cfg, log=lambda *a, **k: None, progress=False, evaluate_test=False, task=task)
    return {"recipe": job["recipe"], "test_by_wise": fs._test_curve(out, cfg, task, WISE_GRID),
            "moved": fs.moved(out, job["backbone"]), "seconds": round(time.time() - t0)}


def main() -> None:
    from datasets import image_datasets
    from fewshot import DEV_SEEDS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="animals")
    ap.add_argument("--shots", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--recipes", default="strong,bb01,bb1", help=f"strong (the bar) and any of {', '.join(RECIPES)}")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--test-fraction", type=float, default=0.5)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    if a.seed not in DEV_SEEDS:
        ap.error(f"--seed {a.seed}: explore on development seeds ({', '.join(map(str, DEV_SEEDS))}) only")
    tmp = tempfile.mkdtemp(prefix="tk-explore-lr-")
    data = image_datasets(tmp, (a.dataset,))
    if a.dataset not in data:
        ap.error(f"--dataset {a.dataset}: cannot be built here (see benchmarks/datasets.py)")
    base = {"dataset": a.dataset, "data": str(data[a.dataset]), "shots": a.shots, "seed": a.seed,
            "image_size": a.image_size, "backbone": "bundled:efficientnet_lite0", "tmp": tmp,
            "test_fraction": a.test_fraction, "threads": a.threads}
    jobs = [{**base, "recipe": r} for r in a.recipes.split(",")]
    with mp.get_context("spawn").Pool(a.jobs) as pool:
        for r in pool.imap_unordered(run_job, jobs):
            print(json.dumps({"dataset": a.dataset, "shots": a.shots, "seed": a.seed, **r}), flush=True)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
