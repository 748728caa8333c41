"""`--backbone auto`: choose the source model by cross-validated probe accuracy on the user's labels.

At a few labels per class the source matters as much as the recipe, and which source fits a task is
an empirical question. Each candidate's frozen, pooled features of the training split are scored by a
logistic-regression probe under stratified k-fold cross-validation (mirrored images added to each
training fold and averaged in at test, as the engine's probe does); the candidate with the best mean
held-out accuracy is trained. LogME breaks ties and decides when a class has a single label (nothing
to cross-validate).

`auto` alone lists the bundled sources of the data's modality; `auto:SRC1,SRC2,...` lists the
candidates. `--backbone-budget MINUTES` stops scoring once spent; the unscored are named.
"""

from __future__ import annotations

import dataclasses
import time

from .transferability import CV_FOLDS

AUTO_IMAGE = ("bundled:efficientnet_lite0", "bundled:efficientnet_lite1", "bundled:efficientnet_lite2")
AUTO_TEXT = ("bundled:minilm-l6",)


def candidates(backbone: str, modality: str) -> list[str]:
    """The sources `--backbone auto[:SRC,...]` chooses among."""
    from ..config import auto_backbone_sources
    return auto_backbone_sources(backbone) or list(AUTO_IMAGE if modality == "image" else AUTO_TEXT)


def best_row(rows: list[dict]) -> dict:
    """The row to train: best CV accuracy (LogME breaks ties), or best LogME when nothing was
    cross-validated."""
    scored = [r for r in rows if r.get("cv_accuracy") is not None]
    if scored:
        return max(scored, key=lambda r: (round(r["cv_accuracy"], 6), r["logme"]))
    return max(rows, key=lambda r: r["logme"])


def resolve_backbone(cfg, task, *, cache=None, log=print):
    """(cfg with the chosen source, the evidence) for `cfg.backbone` = auto[:SRC,...]."""
    from .rank import rank_sources
    srcs = candidates(cfg.backbone, task.modality)
    budget = cfg.backbone_budget * 60 if cfg.backbone_budget else None
    log(f"backbone auto: scoring {len(srcs)} source(s) by {CV_FOLDS}-fold cross-validated probe "
        f"accuracy on {len(task.train)} training labels")
    t0 = time.time()
    rows = rank_sources(cfg.data, srcs, task=task, image_size=cfg.image_size, seed=cfg.seed, cv=True,
                        batch_size=cfg.batch_size, cache=cache, budget_seconds=budget, log=log)
    scored = {r["source"] for r in rows}
    unscored = [s for s in srcs if s not in scored]
    best = best_row(rows)
    how = ("cross-validated probe accuracy" if best.get("cv_accuracy") is not None
           else "LogME (a class has one label: nothing to cross-validate)")
    log(f"backbone auto: chose {best['source']} by {how}"
        + (f"; not scored within the budget: {', '.join(unscored)}" if unscored else ""))
    record = {"chosen": best["source"], "by": how, "candidates": srcs, "unscored": unscored,
              "rows": rows, "seconds": round(time.time() - t0, 1)}
    return dataclasses.replace(cfg, backbone=best["source"]), record
