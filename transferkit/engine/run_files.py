"""The files of a run folder that `train` writes besides checkpoints: at the start (run.json,
config.yaml, environment.json, splits.csv, the data fingerprint, source.json, the anchor) and at
the end (metrics.json, history.csv, the report), after the best weights are reloaded and tested."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from ..config import TrainConfig, save_config
from ..data import Task
from ..infer.loaders import eval_loader, make_dataset
from ..infer.sharded import predict_probs_sharded
from ..infer.tta import views_of
from ..store import checkpoint as ck
from ..store.environment import write_environment
from ..store.fingerprint import write_fingerprint
from ..store.runfolder import claim_out_dir
from ..strategies import parameter_summary
from .build import anchor_hash
from .run_state import RunState
from . import selection


def start_run_folder(run: Path, cfg: TrainConfig, task: Task, model, anchor, log) -> None:
    claim_out_dir(cfg, overwrite=cfg.overwrite, log=log)
    save_config(cfg, run / "config.yaml")
    write_environment(run)
    write_splits(run, task)
    write_fingerprint(run, task)  # what --resume checks the data against
    ck.atomic_write_json(run / "source.json", model.spec.source.to_dict())
    if cfg.store_anchor and anchor is not None:
        ck.atomic_save_tensors(run / "anchor.safetensors", anchor,
                               {"anchor_hash": anchor_hash(anchor),
                                "weights_hash": model.spec.source.weights_hash})


def write_splits(run: Path, task: Task) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["split", "item", "label"])
    w.writeheader()
    w.writerows(task.split_record())
    ck.atomic_write_text(run / "splits.csv", buf.getvalue())


def finish(run: Path, cfg: TrainConfig, model, task: Task, state: RunState, device, autocast,
            log, evaluate_test: bool = True, write: bool = True, accel=None) -> dict:
    """Reload the best weights, evaluate on the test split (shared by the processes of a
    distributed run, each item once), write metrics, history and report (the files only from the
    main process)."""
    from ..report import write_report
    from ..report.gallery import worst_errors
    from ..report.metrics import classification_metrics
    errors = None
    if (run / "model.safetensors").exists():
        model.load_state_dict(ck.load_tensors(run / "model.safetensors"))
    elif write:
        selection.save_model(run / "model.safetensors", model)
    metrics: dict = {"n_train": len(task.train), "n_val": len(task.val), "n_test": len(task.test)}
    if task.test and evaluate_test:
        loader = eval_loader(model, make_dataset(model, task.test, train=False, augment=False,
                                                 image_size=cfg.image_size, seed=cfg.seed),
                             cfg.batch_size * 2, cfg.num_workers)
        probs, y = predict_probs_sharded(model, loader, device, tta=cfg.tta, views=views_of(cfg), autocast=autocast, accel=accel)
        metrics.update(classification_metrics(y, probs, model.class_names))
        errors = worst_errors(task.test, probs, y, model.class_names)
    metrics["best_step"] = state.best_step
    metrics["selection"] = "validation" if task.val else "final weights (no validation split)"
    metrics["estimate"] = held_out_estimate(state)
    metrics["head_fit"] = {k: v for k, v in state.head_fit.items() if k != "table"} or None
    metrics["wise"] = state.wise or None
    metrics["choice"] = state.choice or None
    from .unlabelled import unlabelled_record
    metrics["unlabelled"] = unlabelled_record(state)
    metrics["phase_seconds"] = state.phase_seconds
    metrics["parameters"] = parameter_summary(model)
    metrics["skipped"] = task.skipped
    metrics["warnings"] = task.warnings
    if not write:
        return metrics
    non_finite = ck.json_safe(metrics)[1]
    if non_finite:  # NaN is not JSON: written as null, and said here and in the file
        metrics["non_finite"] = non_finite
        log(f"warning: the model produced NaN/infinite values ({', '.join(non_finite[:5])}); written as null")
    ck.atomic_write_json(run / "metrics.json", metrics)
    write_history(run, state.history)
    write_report(run, cfg, model, metrics, state.history, errors=errors, step_losses=state.step_losses)
    if "accuracy" in metrics:
        log(f"test accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f} -> {run}")
    else:  # --test-fraction 0, or the caller scores elsewhere: no number to print, and no nan
        log(f"no test split: trained on every item, not scored -> {run} "
            "(score it with: transferkit evaluate RUN TEST_DATA)")
    return metrics


def held_out_estimate(state: RunState) -> dict | None:
    """What to expect before testing: the cross-validated (or validation) accuracy of what was
    trained, mean ± standard error. From `auto`'s evidence when it chose, else from the head fit
    (the probe's estimate; for a fine-tuned run that is the probe it started from, said so).

    `compared` counts the candidates (auto's rows, or the head fit's values of C) the estimate was
    the best of; with more than one it is the maximum of noisy scores, so `optimistic` is set: the
    test score is expected below it."""
    best = (state.choice or {}).get("best")
    if best:
        compared = state.choice.get("compared", len(state.choice["finetune_cv"]["table"]))
        return {"accuracy": best["accuracy"], "accuracy_se": best["accuracy_se"], "method": "cv",
                "folds": state.choice["finetune_cv"]["folds"],
                "of": "the chosen model" if best["wise"] else "the probe",
                "compared": compared, "optimistic": compared > 1}
    est = (state.head_fit or {}).get("estimate")
    if est and est.get("accuracy") is not None:
        trained_more = any(r.get("train_loss", "") != "" for r in state.history)
        compared = len((state.head_fit or {}).get("table") or []) or 1
        return {**est, "of": "the probe phase" if trained_more else "the probe",
                "compared": compared, "optimistic": compared > 1}
    return None


def write_history(run: Path, history: list[dict]) -> None:
    """RUN/history.csv: one row per validation (or head fit), the union of the rows' keys as columns."""
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(history)
    ck.atomic_write_text(run / "history.csv", buf.getvalue())
