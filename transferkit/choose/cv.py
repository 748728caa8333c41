"""Cross-validation of fine-tuning at few labels: what a strategy would score on labels it never saw.

At a handful of labels per class there is nothing to spare for a validation split. Instead, the
training labels are cut into k stratified folds (`transferkit.data.cv_folds`); for each fold the
engine fine-tunes on the other folds (LP-FT: head fitted on frozen features, then everything), and
the held-out fold is scored — with the same test-time augmentation as the test split — at every
WiSE-FT weight w (Wortsman et al., CVPR 2022): w = 0 is the probe the fine-tuning started from,
w = 1 the fine-tuned endpoint. One set of fine-tuning runs therefore estimates the probe, the
fine-tuned model and the interpolations between them on exactly the same held-out labels.

The test split is never touched: fold runs are given a task with no test items. Finished folds
are reused when the same command runs again, so an interrupted choice continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from ..config import TrainConfig, read_config
from ..data import Task, cv_folds
from ..engine.contrastive_phase import START as CONTRASTIVE_START
from ..engine.selection import WISE_GRID


def fold_tasks(task: Task, k: int, seed: int) -> list[tuple[Task, list]]:
    """(training task without val/test, held-out items) per stratified fold of `task.train`."""
    labels = np.array([task.class_to_idx[e.label] for e in task.train])
    out = []
    for tr, te in cv_folds(labels, k, seed):
        sub = Task(task.modality, task.classes, [task.train[i] for i in tr], [], [], [])
        out.append((sub, [task.train[i] for i in te]))
    return out


def _held_out_scores(run: Path, cfg: TrainConfig, classes: list[str], held_out: list, grid,
                     model=None) -> list[dict]:
    """Held-out accuracy/NLL of a finished fold run at each WiSE weight. `model`: the fold run's own
    (its weights are replaced by the run's files at each weight), else one is built."""
    from ..store import checkpoint as ck
    from ..engine.build import build_model
    from ..infer.loaders import eval_loader, make_dataset
    from ..infer.predict import predict_probs
    from ..engine.selection import wise_mix
    from ..engine.headfit import score
    from ..infer.tta import views_of
    run_cfg = read_config(run / "config.yaml")  # as the fold run settled it (its head, its --tta-views)
    if model is None:
        model, _ = build_model(run_cfg, classes)
    ft = ck.load_tensors(run / "model.safetensors")
    lp = ck.load_tensors(run / "lp_model.safetensors") if (run / "lp_model.safetensors").exists() else None
    if lp is None:  # a strategy without a probe phase: only the fine-tuned endpoint exists
        grid = [w for w in grid if w == 1.0]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    loader = eval_loader(model, make_dataset(model, held_out, train=False, augment=False,
                                             image_size=cfg.image_size, seed=cfg.seed), cfg.batch_size * 2)
    rows = []
    for w in grid:
        model.load_state_dict(wise_mix(lp, ft, w) if lp is not None else ft)
        probs, y = predict_probs(model, loader, device, tta=cfg.tta, views=views_of(run_cfg))
        acc, nll = score(torch.from_numpy(probs), torch.from_numpy(y).long())
        rows.append({"wise": w, "accuracy": acc, "nll": nll})
    return rows


def cv_finetune(cfg: TrainConfig, task: Task, root: Path, *, k: int = 3, grid=WISE_GRID,
                strategy: str = "two_phase", log=print, spare=None) -> dict | None:
    """Cross-validate fine-tuning (LP-FT, `two_phase`, by default) on `task.train`: per WiSE weight,
    held-out accuracy mean ± standard error over folds and mean NLL. None when the labels allow no
    fold (a class with a single label). Each fold builds its model once (or takes `spare`'s, an
    `engine.build.SpareModel`), trains it and scores it."""
    from ..engine.fit import default_backbone_lr_mult, default_feature_norm, fit
    from ..engine.input_kind import settle_inputs
    cfg = settle_inputs(cfg, task)  # from the whole training split, as the final run's
    # the folds train the recipe the final run will (a fold has fewer labels per class than it)
    cfg = dataclasses.replace(cfg, backbone_lr_mult=default_backbone_lr_mult(cfg, task),
                              feature_norm=default_feature_norm(dataclasses.replace(cfg, strategy=strategy), task))
    folds = fold_tasks(task, k, cfg.seed)
    if not folds:
        return None
    root.mkdir(parents=True, exist_ok=True)
    per_fold, t0 = [], time.time()
    for i, (sub, held_out) in enumerate(folds):
        run = root / f"fold{i}"
        fcfg = dataclasses.replace(cfg, strategy=strategy, wise=1.0, out=str(run), val=None, test=None,
                                   stop_after=None)
        record = run / "fold.json"
        if record.is_file() and json.loads(record.read_text()).get("config") == fcfg.to_dict():
            per_fold.append(json.loads(record.read_text())["rows"])
            continue
        if run.exists():
            shutil.rmtree(run)  # an unfinished fold of ours: start it again
        result = fit(fcfg, log=lambda *a, **kw: None, progress=False, evaluate_test=False, task=sub, spare=spare)
        rows = _held_out_scores(run, fcfg, task.classes, held_out, grid, model=result.model)
        shutil.rmtree(run / "last", ignore_errors=True)  # the fold's weights stay; its resume state goes
        (run / CONTRASTIVE_START).unlink(missing_ok=True)  # contrastive's copy of the source encoder
        record.write_text(json.dumps({"config": fcfg.to_dict(), "rows": rows}, indent=2) + "\n")
        per_fold.append(rows)
        log(f"  fold {i + 1}/{len(folds)}: held-out accuracy "
            + ", ".join(f"w={r['wise']:g} {r['accuracy']:.3f}" for r in rows))
    table = []
    for j, w in enumerate(r["wise"] for r in per_fold[0]):
        accs = [f[j]["accuracy"] for f in per_fold]
        table.append({"wise": w, "accuracy": float(np.mean(accs)),
                      "accuracy_se": float(np.std(accs, ddof=1) / math.sqrt(len(accs))),
                      "nll": float(np.mean([f[j]["nll"] for f in per_fold]))})
    return {"folds": len(folds), "table": table, "seconds": round(time.time() - t0, 1)}


def best_wise(table: list[dict]) -> dict:
    """The row with the best held-out accuracy; ties go to the lower NLL."""
    return max(table, key=lambda r: (round(r["accuracy"], 9), -r["nll"]))
