"""`--strategy auto` with `--unlabelled`: keep the pool only if it wins on held-out labels.

At few labels `auto` cross-validates LP-FT over folds of the training labels (choose/cv.py). With an
unlabelled pool the same folds are run twice — without the pool, and with it (AdaBN gated in the
head phase, FixMatch in the fine-tuning phase, at the given `--unlabelled-weight`) — and the pool is
kept only when the best held-out accuracy over the WiSE-FT weights is strictly higher with it.
Both numbers go to OUT/auto/choice.json and metrics.json (`choice.unlabelled`).

Fold runs read the pool from OUT/auto/pool.csv: the pool's images, and — when the pool is the test
split's inputs (transductive) — the training images too, so that each fold's held-out images are
in its pool exactly as the test images are in the final run's (a fold run drops its own training
images from the pool, as every run does).
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

from ..config import TrainConfig


def _write_pool_csv(path: Path, xs: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path"])
        w.writerows([str(Path(x).resolve())] for x in xs)


def cv_pool_or_not(cfg: TrainConfig, task, root: Path, *, k: int, log=print, spare=None):
    """(the CV result auto goes on with, the configuration to train, the record of the choice).
    The returned configuration has `unlabelled=None` when the pool lost (or tied)."""
    from ..data.pool import read_pool
    from .cv import best_wise, cv_finetune
    plain = cv_finetune(dataclasses.replace(cfg, unlabelled=None), task, root / "cv", k=k, log=log, spare=spare)
    pool = read_pool(cfg.unlabelled, task, log=log)
    info = {k_: pool.record[k_] for k_ in ("source", "transductive", "count")}
    if plain is None:
        return None, cfg, {**info, "kept": True, "weight": cfg.unlabelled_weight,
                           "reason": "too few labels per class to cross-validate: the pool is used as given"}
    xs = [e.x for e in pool.items] + ([e.x for e in task.train] if pool.record["transductive"] else [])
    _write_pool_csv(root / "pool.csv", xs)
    log(f"auto: the same {k} folds with the unlabelled pool ({len(pool.items)} images, weight "
        f"{cfg.unlabelled_weight:g})")
    pooled = cv_finetune(dataclasses.replace(cfg, unlabelled=str(root / "pool.csv")), task, root / "cv_pool",
                         k=k, log=log)
    a, b = best_wise(plain["table"]), best_wise(pooled["table"])
    keep = b["accuracy"] > a["accuracy"] + 1e-9
    numbers = (f"held-out accuracy {b['accuracy']:.3f} ± {b['accuracy_se']:.3f} with the pool against "
               f"{a['accuracy']:.3f} ± {a['accuracy_se']:.3f} without")
    record = {**info, "kept": keep, "weight": cfg.unlabelled_weight if keep else 0.0,
              "with_pool": {"accuracy": b["accuracy"], "accuracy_se": b["accuracy_se"], "wise": b["wise"],
                            "table": pooled["table"], "seconds": pooled["seconds"]},
              "without_pool": {"accuracy": a["accuracy"], "accuracy_se": a["accuracy_se"], "wise": a["wise"]},
              "reason": ("auto kept the pool: " if keep else "auto left the pool out: ") + numbers}
    log(record["reason"])
    if keep:
        return pooled, cfg, record
    return plain, dataclasses.replace(cfg, unlabelled=None), record
