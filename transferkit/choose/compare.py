"""`transferkit compare`: every strategy x shot count x seed on one task, on identical splits.

For a seed, every strategy sees the same test and validation split and the same sampled training
shots: each cell calls `load_task(..., seed=seed)`, which is deterministic, and every row records a
hash of the split it used so that this can be checked (`identical_splits` in compare.json).

Rows:

- ``probe``: always present. scikit-learn ``LogisticRegression(max_iter=2000)`` (L2, C = 1) on
  frozen pooled features of the backbone, no augmentation: the plain linear probe, the reference
  every fine-tuning strategy has to beat (the linear-evaluation protocol of Kornblith, Shlens & Le,
  "Do Better ImageNet Models Transfer Better?", CVPR 2019, who also tune C).
- ``linear_probe``: exactly what ``transferkit train --strategy linear_probe`` does (the engine's
  `fit_probe` on cached features, C picked on validation or by cross-validation), run on the same cached features: seconds.
- ``STRATEGY[+REG]`` (``full``, ``partial:1``, ``two_phase+l2sp:0.001``, ``full+bss:0.001``; a bare
  ``l2sp`` means ``l2sp:10``, decoupled under AdamW) and ``scratch`` (the same architecture from random initialisation,
  strategy ``full``, lr 3e-3): one engine run per cell in
  ``OUT/cells/<strategy>/<shots>/seed<k>``. A finished cell with the same configuration is reused
  when the command is run again.

The strategy recommended for a shot count is the one with the best mean VALIDATION score over
seeds (`cfg.metric`); the test split only reports. The frozen features of every item are computed
once and shared by the probe rows and all linear-probe cells of every seed and shot count.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from ..config import TrainConfig
from ..data import Task, load_task
from ..strategies.plan import SCRATCH_LR

PROBE = "probe"
DEFAULT_REG = {"l2sp": "l2sp:10"}  # decoupled under AdamW: a pull of lr x 10 per step


# ------------------------------------------------------------------------------------ parsing

def parse_shots(text: str) -> list[int | None]:
    """``"5,10,all"`` -> ``[5, 10, None]`` (None: every training example, no shot sampling)."""
    out: list[int | None] = []
    for part in filter(None, (p.strip() for p in str(text).split(","))):
        if part.lower() == "all":
            out.append(None)
        elif part.isdigit() and int(part) >= 1:
            out.append(int(part))
        else:
            raise ValueError(f"--shots takes whole numbers >= 1 or 'all', comma-separated; got '{part}'")
    if not out:
        raise ValueError("--shots is empty")
    return list(dict.fromkeys(out))


def parse_seeds(text: str | int) -> list[int]:
    """``3`` -> seeds 0, 1, 2; ``"0,5,7"`` -> exactly those."""
    s = str(text).strip()
    try:
        if "," in s:
            return list(dict.fromkeys(int(p) for p in s.split(",") if p.strip()))
        if int(s) >= 1:
            return list(range(int(s)))
    except ValueError:
        pass
    raise ValueError(f"--seeds takes a count (3) or a comma-separated list (0,5,7); got '{s}'")


def shots_label(shots: int | None) -> str:
    return "all" if shots is None else str(shots)


def strategy_overrides(name: str, backbone: str) -> dict:
    """The TrainConfig fields a strategy name sets: ``full+l2sp`` -> strategy full, reg l2sp:10;
    ``scratch`` -> the backbone with ``@random``, strategy full, lr 3e-3."""
    from ..regularizers import parse_regularizer
    base, _, reg = name.strip().partition("+")
    if base == "scratch":
        over = {"backbone": backbone if backbone.endswith("@random") else backbone + "@random",
                "strategy": "full", "lr": SCRATCH_LR}
    else:
        over = {"strategy": base}
    if reg:
        parts = re.split(r"\+(?=\s*[A-Za-z])", reg)
        over["reg"] = "+".join(DEFAULT_REG.get(p.strip(), p.strip()) for p in parts)
        parse_regularizer(over["reg"])
    return over


def is_feature_cell(name: str) -> bool:
    """Cells computed on the cached frozen features instead of a training run."""
    return name == PROBE or name.partition("+")[0] == "linear_probe"


def _check_strategies(names: list[str], backbone=None) -> None:
    """Every name must parse; with the loaded backbone, its stage indices must exist too."""
    from ..strategies import plan_strategy
    for name in names:
        over = strategy_overrides(name, "x:x")
        if over["strategy"] == "auto":  # resolved per cell by transferkit.choose.auto
            continue
        plan_strategy(over["strategy"], backbone.num_stages if backbone is not None else 1000)


# ------------------------------------------------------------------------------------ budget

def estimate_seconds(measured: list[dict], strategy: str, shots: str, steps: int) -> float | None:
    """Seconds a training cell will take: seconds per step measured on earlier cells of the same
    strategy and shots, else the same shots, else the same strategy, else any; None before any."""
    for same in (lambda m: m["strategy"] == strategy and m["shots"] == shots,
                 lambda m: m["shots"] == shots, lambda m: m["strategy"] == strategy, lambda m: True):
        rates = [m["seconds"] / max(1, m["steps"]) for m in measured if same(m)]
        if rates:
            return float(np.mean(rates)) * steps
    return None


def budget_decision(estimate: float | None, left: float, steps: int,
                    min_fraction: float = 0.5) -> tuple[str, int, str]:
    """``("run", steps, "")``, ``("shorten", fewer, why)`` when at least `min_fraction` of the steps
    fit in the `left` seconds, else ``("skip", 0, why)``. An unknown estimate runs."""
    if left <= 0:
        return "skip", 0, "budget spent"
    if estimate is None or estimate <= left:
        return "run", steps, ""
    fewer = int(steps * left / estimate)
    if left / estimate >= min_fraction and fewer >= 1:
        return "shorten", fewer, (f"budget: ~{estimate:.0f}s estimated for {steps} steps, {left:.0f}s "
                                  f"left: shortened to {fewer} steps")
    return "skip", 0, f"budget: ~{estimate:.0f}s estimated, {left:.0f}s left"


# ---------------------------------------------------------------------------- feature cells

class FeatureStore:
    """Frozen pooled features of every item of the task (all seeds' splits), computed once.

    The backbone is loaded after ``torch.manual_seed(seed)``, as the engine does: a pretrained
    backbone gives the same features for every seed, a random-init one (``@random``) needs a store
    per seed (see `feature_stores`).
    """

    def __init__(self, cfg: TrainConfig, tasks: list[Task], seed: int, *, flip: bool, log=print):
        from ..data.feature_cache import feature_cache_for
        from ..models import load_backbone
        from .rank import frozen_features
        t0 = time.time()
        torch.manual_seed(seed)
        self.backbone = load_backbone(cfg.backbone, arch=cfg.arch, pooling=cfg.pooling, max_length=cfg.max_length)
        items = {e.x: e for t in tasks for part in (t.train, t.val, t.test) for e in part}
        self.index = {x: i for i, x in enumerate(items)}
        self.class_to_idx = tasks[0].class_to_idx
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.feats, _, self.flipped = frozen_features(
            self.backbone, list(items.values()), tasks[0].classes, image_size=cfg.image_size,
            batch_size=cfg.batch_size * 2, flip=flip, device=device, cache=feature_cache_for(cfg))
        self.backbone.module.cpu()
        self.seconds = round(time.time() - t0, 2)
        log(f"frozen features of {len(items)} items from {cfg.backbone}: {self.seconds:.1f}s")

    @property
    def pretrained(self) -> bool:
        return self.backbone.source.pretrained

    def get(self, items, flipped: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.tensor([self.index[e.x] for e in items], dtype=torch.long)
        # labels from the items: the same text may appear twice with different labels
        labels = torch.tensor([self.class_to_idx[e.label] for e in items], dtype=torch.long)
        return (self.flipped if flipped else self.feats)[idx], labels


def feature_stores(cfg: TrainConfig, tasks: dict[tuple[int, int | None], Task], seeds: list[int], *,
                   flip: bool, log=print) -> dict[int, FeatureStore]:
    """One shared store for a pretrained backbone; one per seed for a random-init backbone.
    `flip`: also the mirrored images' features (linear_probe cells with augmentation or TTA)."""
    first = FeatureStore(cfg, list(tasks.values()), seeds[0], flip=flip, log=log)
    if first.pretrained:
        return {seed: first for seed in seeds}
    return {seed: first if seed == seeds[0] else
            FeatureStore(cfg, [t for (sd, _), t in tasks.items() if sd == seed], seed, flip=flip, log=log)
            for seed in seeds}


def _metrics(probs: np.ndarray, y: torch.Tensor, classes: list[str]) -> dict:
    from ..report.metrics import classification_metrics
    return classification_metrics(y.numpy(), probs, classes) if len(y) else {}


def feature_cell(name: str, store: FeatureStore, task: Task, cfg: TrainConfig) -> dict:
    """A ``probe`` or ``linear_probe`` cell on cached features: test and validation metrics."""
    from ..engine.headfit import fit_probe, view_probs
    from ..models import attach_head
    tr, ytr = store.get(task.train)
    va, yva = store.get(task.val)
    te, yte = store.get(task.test)
    t0 = time.time()
    choice = None
    if name == PROBE:
        from sklearn.linear_model import LogisticRegression
        clf = LogisticRegression(max_iter=2000).fit(tr.numpy(), ytr.numpy())

        def predict(x):
            p = np.zeros((len(x), len(task.classes)))
            if len(x):
                p[:, clf.classes_] = clf.predict_proba(x.numpy())
            return p
        test_probs, val_probs = predict(te), predict(va)
    else:
        # the engine's linear_probe: the head as build_model seeds it, fitted by fit_probe on the
        # training features (+ mirrored ones when augmenting), C chosen as the engine chooses it
        from ..data import cv_folds
        torch.manual_seed(cfg.seed)
        from ..infer.probe_views import augmented_views, n_probe_views
        from ..infer.tta import resolve_views, view_features
        from ..engine.fit import default_feature_norm as norm
        model = attach_head(store.backbone, task.classes, hidden=cfg.head_hidden, dropout=cfg.head_dropout,
                            feature_norm=norm(dataclasses.replace(cfg, strategy="linear_probe"), task) == "on")
        head = model.head
        flip = store.flipped is not None
        views = torch.stack([tr, store.get(task.train, flipped=True)[0]]) if flip else tr[None]
        tta = cfg.tta and flip
        te_views = torch.stack([te, store.get(task.test, flipped=True)[0]]) if tta else te[None]
        va_views = torch.stack([va, store.get(task.val, flipped=True)[0]]) if tta else va[None]
        score_views = len(views) if tta else 1
        k_aug = n_probe_views(cfg, len(task.train), model.spec.modality)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        if k_aug:  # the augmented copies the engine's probe also learns from (not cached: random crops)
            views = torch.cat([views, augmented_views(model.to(device), task.train, cfg, device, None, k_aug)])
        k_tta = resolve_views(cfg, task.train, model.spec.modality) if tta else 0
        if k_tta:  # scored as a trained run scores them: with its test-time views (infer/tta.py)
            te_views = torch.cat([te_views, view_features(model.to(device), task.test, cfg, device, k_tta)])
            if len(yva):
                va_views = torch.cat([va_views, view_features(model.to(device), task.val, cfg, device, k_tta)])
        choice = fit_probe(head, views, ytr, val=(va_views, yva) if len(yva) else None,
                  folds=cv_folds(ytr.numpy(), cfg.cv_folds, cfg.seed),
                  fit_views=len(views) if cfg.augment else 1, score_views=score_views,
                  label_smoothing=cfg.label_smoothing)
        test_probs, val_probs = view_probs(head, te_views).numpy(), view_probs(head, va_views).numpy()
    test, val = _metrics(test_probs, yte, task.classes), _metrics(val_probs, yva, task.classes)
    est = choice.estimate() if name != PROBE and choice.method == "cv" else {}
    return {"accuracy": test.get("accuracy"), "macro_f1": test.get("macro_f1"),
            "cv_accuracy": est.get("accuracy"), "cv_accuracy_se": est.get("accuracy_se"),
            "val_accuracy": val.get("accuracy"), "val_macro_f1": val.get("macro_f1"),
            "val_loss": val.get("nll"), "train_seconds": round(time.time() - t0, 3)}


def split_hash(rows: list[dict]) -> str:
    """A hash of a split record (rows of split, item, label), independent of row order."""
    keys = sorted((r["split"], r["item"], r["label"]) for r in rows)
    return hashlib.sha256(json.dumps(keys).encode()).hexdigest()[:16]


def _write_splits(path: Path, task: Task) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["split", "item", "label"])
        w.writeheader()
        w.writerows(task.split_record())


def _read_splits(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------- training cells

def finished_cell(cfg: TrainConfig) -> dict | None:
    """The row of a cell already trained in `cfg.out` with exactly this configuration, if any."""
    record = Path(cfg.out) / "cell.json"
    if record.is_file():
        saved = json.loads(record.read_text())
        if saved.get("config") == cfg.to_dict():
            return {**saved["row"], "reused": True}
    return None


def train_cell(cfg: TrainConfig, task: Task | None = None) -> dict:
    """One engine run in `cfg.out` (choices such as `auto` and `l2sp:auto` resolved first, as
    `transferkit train` does); the row of a finished cell with this configuration is reused.
    `task`: the cell's splits, read once by `compare` (else each step reads them)."""
    from ..engine.build import SpareModel
    from ..engine.fit import fit
    from .auto import resolve_auto
    from .l2sp_sweep import best_validation, resolve_l2sp_auto
    done = finished_cell(cfg)
    if done is not None:
        return done
    run = Path(cfg.out)
    if run.exists():
        shutil.rmtree(run)  # an unfinished or differently configured cell of this compare
    t0 = time.time()
    quiet = lambda *a, **k: None  # noqa: E731
    spare = SpareModel()
    resolved, choice = (resolve_auto(cfg, log=quiet, task=task, spare=spare) if cfg.strategy == "auto"
                        else (cfg, None))
    result = fit(resolve_l2sp_auto(resolved, log=quiet, task=task), log=quiet, progress=False, choice=choice,
                 task=task, spare=spare)
    m = result.metrics or {}
    has_val = any("val_loss" in r for r in result.state.history)
    best = best_validation(result.state.history, cfg.metric) if has_val else {}
    est = m.get("estimate") or {}
    row = {"accuracy": m.get("accuracy"), "macro_f1": m.get("macro_f1"),
           "val_accuracy": best.get("val_accuracy"), "val_macro_f1": best.get("val_macro_f1"),
           "val_loss": best.get("val_loss"), "train_seconds": round(time.time() - t0, 2),
           "cv_accuracy": est.get("accuracy") if est.get("method") == "cv" else None,
           "cv_accuracy_se": est.get("accuracy_se") if est.get("method") == "cv" else None,
           "resolved_strategy": resolved.strategy, "kept_finetuned": kept_finetuned(m, resolved),
           "split_hash": split_hash(_read_splits(run / "splits.csv"))}
    (run / "cell.json").write_text(json.dumps({"config": cfg.to_dict(), "row": row}, indent=2) + "\n")
    return row


def kept_finetuned(metrics: dict, cfg: TrainConfig) -> bool | None:
    """Whether a run's final weights are its fine-tuned ones (in part, through WiSE-FT) rather than
    the probe it started from: False when a two_phase run ended on its head-fit checkpoint or on
    WiSE weight 0, or when `auto` chose the probe. None for strategies that never fine-tune."""
    if cfg.strategy == "linear_probe":
        return False if (metrics.get("choice") or {}).get("strategy") else None
    wise = (metrics.get("wise") or {}).get("weight")
    if wise is not None and wise == 0.0:
        return False
    if (metrics.get("head_fit") or {}) and metrics.get("selection") == "validation":
        return metrics.get("best_step", -1) > 0
    return True


# ------------------------------------------------------------------------------- the command

def cell_config(base: TrainConfig, name: str, shots: int | None, seed: int, out: Path) -> TrainConfig:
    over = {} if name == PROBE else strategy_overrides(name, base.backbone)
    return dataclasses.replace(base, **over, shots=shots, seed=seed,
                               out=str(out / "cells" / name / shots_label(shots) / f"seed{seed}"))


def _new_row(name: str, shots: int | None, seed: int, task: Task, cfg: TrainConfig) -> dict:
    return {"strategy": name, "shots": shots_label(shots) if shots is None else shots, "seed": seed,
            "backbone": cfg.backbone, "reg": None if is_feature_cell(name) else cfg.reg,
            "n_train": len(task.train), "accuracy": None, "macro_f1": None, "val_accuracy": None,
            "val_macro_f1": None, "val_loss": None, "train_seconds": None, "steps": None,
            "skipped": False, "skip_reason": None, "shortened": False, "shorten_reason": None,
            "run_dir": cfg.out}


def run_compare(base: TrainConfig, strategies: list[str], shots: list[int | None], seeds: list[int],
                out: str | Path, *, budget_minutes: float | None = None, log=print,
                command: str | None = None) -> dict:
    """Run every cell, write OUT/compare.json, compare.md and compare.html, and return the results
    (``rows``, ``summary``, ``recommended``: the strategy per shot count by mean validation score).

    With `budget_minutes`, training cells (seed-major order, so every strategy x shots gets one seed
    before any gets a second) are shortened or skipped when their estimated cost, measured on the
    cells before them, does not fit in what is left; both are recorded in the rows.
    """
    from .compare_report import identical_splits, recommend, summarise, write_outputs
    from ..engine.fit import total_steps
    from .. import dense
    task = dense.resolve_task(base, log=log) if base.data else "classify"
    if dense.is_dense(task):  # a segment/detect/anomaly layout is never read as class folders
        if budget_minutes is not None:
            raise ValueError(f"budget_minutes: a {task} compare runs every cell; pass fewer strategies, shots or seeds")
        from ..dense.compare import run_dense_compare
        return run_dense_compare(task, base, strategies, shots, seeds, out, log=log, command=command)
    t_start, out = time.time(), Path(out)
    strategies = [s for s in dict.fromkeys(s.strip() for s in strategies) if s and s != PROBE]
    if not strategies:
        raise ValueError("compare needs at least one strategy (--strategies linear_probe,full,...)")
    if not base.data:
        raise ValueError("compare needs DATA (a folder, CSV, TSV or JSONL)")
    _check_strategies(strategies, None)  # spelling first: before any data or model is loaded
    tasks = {(seed, s): load_task(base.data, val=base.val, test=base.test, shots=s, seed=seed,
                                  val_fraction=base.val_fraction, test_fraction=base.test_fraction,
                                  text_col=base.text_col, label_col=base.label_col)
             for seed in seeds for s in shots}
    flip = (base.augment or base.tta) and any(is_feature_cell(n) for n in strategies)
    stores = feature_stores(base, tasks, seeds, flip=flip, log=log)
    _check_strategies(strategies, stores[seeds[0]].backbone)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    header = {"data": base.data, "backbone": base.backbone, "strategies": [PROBE] + strategies,
              "shots": [shots_label(s) for s in shots], "seeds": seeds, "budget_minutes": budget_minutes,
              # the recommendation's metric: validation accuracy, a score users read, unless another
              # was asked for (the engine's own checkpoint choice defaults to validation loss)
              "command": command, "metric": "accuracy" if base.metric == "loss" else base.metric,
              "selection_metric": base.metric,
              "feature_seconds": round(sum(st.seconds for st in {id(v): v for v in stores.values()}.values()), 2),
              "base_config": base.to_dict()}

    def add(row: dict) -> None:
        rows.append(row)
        (out / "compare.json").write_text(json.dumps({**header, "rows": rows}, indent=2) + "\n")

    for seed in seeds:  # cheap rows first: seconds each, on the shared features
        for s in shots:
            task = tasks[(seed, s)]
            for name in [PROBE] + [n for n in strategies if is_feature_cell(n)]:
                cfg = cell_config(base, name, s, seed, out)
                _write_splits(Path(cfg.out) / "splits.csv", task)
                add({**_new_row(name, s, seed, task, cfg), **feature_cell(name, stores[seed], task, cfg),
                     "split_hash": split_hash(task.split_record())})
    train_cells = [(seed, s, n) for seed in seeds for s in shots for n in strategies if not is_feature_cell(n)]
    measured: list[dict] = []
    for i, (seed, s, name) in enumerate(train_cells, start=1):
        task, cfg = tasks[(seed, s)], cell_config(base, name, s, seed, out)
        row = {**_new_row(name, s, seed, task, cfg), "steps": total_steps(cfg, len(task.train))}
        tag = f"[{i}/{len(train_cells)}] {name} · {_shots_text(s)} · seed {seed}"
        if budget_minutes is not None and finished_cell(cfg) is None:
            left = budget_minutes * 60 - (time.time() - t_start)
            est = estimate_seconds(measured, name, shots_label(s), row["steps"])
            action, steps, why = budget_decision(est, left, row["steps"])
            if action == "skip":
                log(f"{tag}: skipped ({why})")
                add({**row, "skipped": True, "skip_reason": why})
                continue
            if action == "shorten":
                cfg = dataclasses.replace(cfg, steps=steps, epochs=None)
                row.update(steps=steps, shortened=True, shorten_reason=why)
                log(f"{tag}: {why}")
        row.update(train_cell(cfg, task))
        if not row.get("reused"):
            measured.append({"strategy": name, "shots": shots_label(s), "seconds": row["train_seconds"],
                             "steps": row["steps"]})
        log(f"{tag}: test acc {_fmt(row['accuracy'])}, val {_fmt(row['val_accuracy'])} "
            f"({row['train_seconds']:.1f}s{', reused' if row.get('reused') else ''})")
        add(row)
    names = [PROBE] + strategies
    result = {**header, "rows": rows, "summary": summarise(rows, names, header["shots"]),
              "recommended": recommend(rows, strategies, header["shots"], header["metric"]),
              "identical_splits": identical_splits(rows), "seconds": round(time.time() - t_start, 1)}
    if not result["identical_splits"]:
        log("WARNING: cells of one seed and shot count used different splits (see split_hash)")
    write_outputs(out, result)
    return result


def _shots_text(shots: int | None) -> str:
    return "all labels" if shots is None else f"{shots} shots"


def _fmt(v) -> str:
    return "–" if v is None else f"{v:.3f}"
