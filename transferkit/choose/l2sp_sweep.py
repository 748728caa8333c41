"""`--reg l2sp:auto[,BETA]`: pick the L2-SP strength alpha on the validation split.

L2-SP (Li, Grandvalet & Davoine, ICML 2018) pulls the fine-tuned weights towards the source weights
with ``alpha / 2 * ||w - w0||^2``; the paper tunes alpha on held-out data, and so do we. For each
alpha in ``L2SP_AUTO_GRID`` a short run (the same configuration and splits, half the steps, L2-SP set
to that alpha) is trained in ``OUT/sweep/alpha_<alpha>``; the alpha whose best checkpoint scores
highest on the validation split (``cfg.metric``; ties go to the lower validation loss) is chosen and
written into the run's ``config.yaml``. The sweep runs never evaluate the test split.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
import time
from pathlib import Path

from ..config import TrainConfig
from ..regularizers import L2SP_AUTO_GRID, parse_regularizer


def with_alpha(reg: str, alpha: float) -> str:
    """``reg`` with its ``l2sp:auto`` part set to ``alpha``: ``l2sp:auto,0.01+bss:0.001`` ->
    ``l2sp:0.001,0.01+bss:0.001,1``."""
    return "+".join(str(s.with_alpha(alpha) if s.is_auto else s) for s in parse_regularizer(reg))


def sweep_steps(cfg: TrainConfig, task=None) -> int:
    """Half the optimisation steps of the full run (at least 1). `task`: the run's splits (else read)."""
    from ..engine.build import load_task_for
    from ..engine.fit import total_steps
    task = task if task is not None else load_task_for(cfg)
    if not task.val:
        raise ValueError("l2sp:auto picks alpha on the validation split, and this task has none: "
                         "give --val DATA or a --val-fraction above 0, or pass l2sp:ALPHA")
    return max(1, total_steps(cfg, len(task.train)) // 2)


def best_validation(history: list[dict], metric: str = "loss", trained_only: bool = False) -> dict:
    """The history row of a run's best checkpoint, by the engine's own selection rule.
    `trained_only`: among the rows of the phases that train by gradient steps (not the head fit on
    frozen features, which is the same for every L2-SP strength and would make them all tie)."""
    from ..engine.selection import validation_score
    rows = [r for r in history if "val_loss" in r and (not trained_only or r.get("train_loss", "") != "")]
    if not rows:
        raise ValueError("the run has no validation rows" + (" after a training step" if trained_only else ""))
    return max(rows, key=lambda r: validation_score(r, metric))


def resolve_l2sp_auto(cfg: TrainConfig, log=print, grid: tuple[float, ...] | None = None, *,
                      task=None) -> TrainConfig:
    """Choose alpha over ``grid`` (default ``L2SP_AUTO_GRID``) and return ``cfg`` with it.

    With a validation split: one short run per alpha (half the steps), scored by the best
    validation row after a training step. With few labels (no validation split): each alpha's
    fine-tuning is cross-validated over the training labels (`transferkit.choose.cv`) and scored
    on held-out folds at its fine-tuned weights. The table is logged and written to
    ``OUT/sweep/sweep.json``; the test split is never used. `task`: the run's splits, read once by
    `train` (else read here); every sweep run trains on them.
    """
    from ..engine.build import load_task_for
    if not cfg.reg or not any(s.is_auto for s in parse_regularizer(cfg.reg)):
        return cfg
    grid = grid or L2SP_AUTO_GRID
    if cfg.out and (Path(cfg.out) / "last").exists():
        raise FileExistsError(f"{cfg.out} already holds a run; pass --resume to continue it or choose "
                              "another --out")
    if cfg.out:  # the sweep writes OUT/sweep: the folder must be ours first
        from ..store.runfolder import claim_out_dir
        claim_out_dir(cfg, overwrite=cfg.overwrite, log=log)
    root = Path(cfg.out) / "sweep" if cfg.out else Path(tempfile.mkdtemp(prefix="transferkit-sweep-"))
    root.mkdir(parents=True, exist_ok=True)
    task = task if task is not None else load_task_for(cfg)
    steps = sweep_steps(cfg, task) if task.val else None
    rows = (_sweep_on_validation(cfg, task, grid, root, steps, log) if task.val
            else _sweep_by_cv(cfg, task, grid, root, log))
    chosen = max(rows, key=lambda r: r["score"])
    for r in rows:
        log(f"  alpha {r['alpha']:<8g} held-out {r['metric']} {r['value']:.4f}  "
            f"({r['seconds']:.1f}s){'  <- chosen' if r is chosen else ''}")
    (root / "sweep.json").write_text(json.dumps({"method": rows[0]["method"], "steps": steps, "grid": list(grid),
                                                 "runs": rows, "chosen": chosen["reg"]}, indent=2) + "\n")
    log(f"l2sp:auto -> {chosen['reg']}")
    return dataclasses.replace(cfg, reg=chosen["reg"])


def _sweep_on_validation(cfg: TrainConfig, task, grid, root: Path, steps: int, log) -> list[dict]:
    from ..engine.fit import fit
    from ..engine.selection import validation_score
    log(f"l2sp:auto: {len(grid)} runs of {steps} steps, alpha by validation {cfg.metric} ({root})")
    rows = []
    for alpha in grid:
        sub = dataclasses.replace(cfg, reg=with_alpha(cfg.reg, alpha), steps=steps, epochs=None,
                                  stop_after=None, out=str(root / f"alpha_{alpha:g}"))
        if Path(sub.out).exists():
            shutil.rmtree(sub.out)  # a sweep run left by an interrupted start: ours to redo
        t0 = time.time()
        result = fit(sub, log=lambda *a, **k: None, progress=False, evaluate_test=False, task=task)
        best = best_validation(result.state.history, cfg.metric, trained_only=True)
        rows.append({"alpha": alpha, "reg": sub.reg, "method": "validation", "metric": f"val_{cfg.metric}",
                     "value": best[f"val_{cfg.metric}"], "val_loss": best.get("val_loss"),
                     "best_step": best["step"], "score": validation_score(best, cfg.metric),
                     "seconds": round(time.time() - t0, 2)})
        for heavy in ("model.safetensors", "last", "lp_model.safetensors"):
            p = Path(sub.out) / heavy
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    return rows


def _sweep_by_cv(cfg: TrainConfig, task, grid, root: Path, log) -> list[dict]:
    from .cv import cv_finetune
    log(f"l2sp:auto: no validation split; each of {len(grid)} strengths cross-validated ({root})")
    rows = []
    for alpha in grid:
        sub = dataclasses.replace(cfg, reg=with_alpha(cfg.reg, alpha), stop_after=None)
        t0 = time.time()
        res = cv_finetune(sub, task, root / f"alpha_{alpha:g}", strategy=cfg.strategy, grid=(1.0,), log=log)
        if res is None:
            raise ValueError("l2sp:auto: too few labels per class to cross-validate (a class has one "
                             "label); give --val DATA or pass l2sp:ALPHA")
        r = res["table"][-1]
        rows.append({"alpha": alpha, "reg": sub.reg, "method": f"{res['folds']}-fold cv", "metric": "accuracy",
                     "value": r["accuracy"], "accuracy_se": r["accuracy_se"], "nll": r["nll"],
                     "score": (round(r["accuracy"], 9), -r["nll"]), "seconds": round(time.time() - t0, 2)})
    return rows
