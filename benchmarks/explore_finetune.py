"""Exploration behind the fine-tuning defaults (not a result table): for each recipe variant, one
LP-FT run per (data set, seed) at N shots, scored on the test split at every WiSE-FT weight, next to
the plain probe on the same split. Prints JSON lines; `--jobs` runs variants in parallel processes."""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def plain_probe(task, backbone: str, image_size: int) -> float:
    """sklearn LogisticRegression (C=1) on frozen pooled features, no augmentation: the bar."""
    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegression

    from transferkit.infer.features import extract_views
    from transferkit.infer.loaders import eval_loader, make_dataset
    from transferkit.models import attach_head, load_backbone
    torch.manual_seed(0)
    model = attach_head(load_backbone(backbone), task.classes)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(dev)

    def feats(items):
        ds = make_dataset(model, items, train=False, augment=False, image_size=image_size, seed=0)
        v, y = extract_views(model.backbone, eval_loader(model, ds, 128), dev)
        return v[0].numpy(), y.numpy()
    Xtr, ytr = feats(task.train)
    Xte, yte = feats(task.test)
    clf = LogisticRegression(max_iter=3000).fit(Xtr, ytr)
    return float(np.mean(clf.predict(Xte) == yte))


def run_job(job: dict) -> dict:
    import torch

    from transferkit.config import make_config
    from transferkit.data import load_task
    from transferkit.store import checkpoint as ck
    from transferkit.engine.build import build_model
    from transferkit.infer.loaders import eval_loader, make_dataset
    from transferkit.infer.predict import predict_probs
    from transferkit.engine.fit import fit
    from transferkit.engine.selection import wise_mix
    torch.set_num_threads(job["threads"])
    task = load_task(job["data"], shots=job["shots"], seed=job["seed"], val_fraction=0.0)
    out = Path(job["tmp"]) / f"{job['name']}_{job['dataset']}_{job['seed']}"
    t0 = time.time()
    if job["name"] == "probe":
        return {**job, "accuracy": plain_probe(task, job["backbone"], job["image_size"]),
                "seconds": round(time.time() - t0, 1)}
    cfg = make_config(None, data=job["data"], backbone=job["backbone"], out=str(out), shots=job["shots"],
                      seed=job["seed"], image_size=job["image_size"], strategy="two_phase", wise=1.0,
                      precision="fp32", val_fraction=0.0, **job["opts"])
    fit(cfg, log=lambda *a, **k: None, progress=False, evaluate_test=False, task=task)
    model, _ = build_model(cfg, task.classes)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(dev)
    lp, ft = ck.load_tensors(out / "lp_model.safetensors"), ck.load_tensors(out / "model.safetensors")
    loader = eval_loader(model, make_dataset(model, task.test, train=False, augment=False,
                                             image_size=cfg.image_size, seed=0), 128)
    accs = {}
    for w in (0.0, 0.25, 0.5, 0.75, 1.0):
        model.load_state_dict(wise_mix(lp, ft, w))
        p, y = predict_probs(model, loader, dev, tta=True)
        accs[str(w)] = float((p.argmax(1) == y).mean())
    return {**job, "accuracy_by_wise": accs, "seconds": round(time.time() - t0, 1)}


def main() -> None:
    from datasets import image_datasets
    ap = argparse.ArgumentParser()
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--image-size", type=int, default=112)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="runs/explore.jsonl")
    ap.add_argument("--variants", default="all")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="tk-explore-")
    data = image_datasets(tmp, ("clipart", "digits"))  # the sets the defaults were explored on
    variants = {
        "light_e15": {"augment_policy": "light", "epochs": 15},
        "strong_e15": {"augment_policy": "strong", "epochs": 15},
        "strong_e30": {"augment_policy": "strong", "epochs": 30},
        "light_e30": {"augment_policy": "light", "epochs": 30},
        "strong_e30_bb03": {"augment_policy": "strong", "epochs": 30, "backbone_lr_mult": 0.3},
        "strong_e30_lr3e3": {"augment_policy": "strong", "epochs": 30, "lr": 3e-3},
        "strong_e60": {"augment_policy": "strong", "epochs": 60},
        "strong_e30_sgd": {"augment_policy": "strong", "epochs": 30, "optimizer": "sgd", "lr": 1e-2},
    }
    if a.variants != "all":
        variants = {k: v for k, v in variants.items() if k in a.variants.split(",")}
    jobs = [{"name": n, "opts": o, "dataset": d, "data": str(p), "seed": s, "shots": a.shots,
             "image_size": a.image_size, "backbone": "bundled:efficientnet_lite0", "tmp": tmp,
             "threads": a.threads}
            for (n, o), (d, p), s in itertools.product([("probe", {})] + list(variants.items()),
                                                       data.items(), range(a.seeds))]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    with open(a.out, "w") as f, mp.get_context("spawn").Pool(a.jobs) as pool:
        for r in pool.imap_unordered(run_job, jobs):
            r.pop("tmp"), r.pop("data")
            f.write(json.dumps(r) + "\n")
            f.flush()
            print(json.dumps(r), flush=True)
    shutil.rmtree(tmp, ignore_errors=True)  # the run folders


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
