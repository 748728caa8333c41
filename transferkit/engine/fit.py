"""The training loop: one readable function on Accelerate (CPU, one GPU, many GPUs or nodes).

A run walks the phases of its strategy plan. Head-only phases fit the head on cached frozen
features (seconds, not a training run); the others run AdamW/SGD with warm-up + cosine by
optimisation step, validate, keep the best checkpoint and can stop early. `last/` is rewritten at
every validation so `--resume` continues exactly where the run stopped.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..config import TrainConfig, save_config
from ..data import Task, load_task
from ..data.checks import report_data_issues
from ..data.feature_cache import feature_cache_for
from ..strategies import (freeze_stages, param_groups, parameter_summary, plan_strategy, resolve_bn,
                          set_train_mode)
from . import checkpoint as ck
from . import interrupt
from .build import anchor_hash, build_model, build_regularizers_for, verify_anchor
from .resume import restore_optimizer_and_rng, resume_point
from .environment import write_environment
from .runfolder import check_out_dir, claim_out_dir
from .evaluate import (collate_for, eval_loader, extract_features, fit_head, make_dataset,
                       predict_probs, to_device)


@dataclass
class RunState:
    """Where a run is: everything besides tensors that an exact resume needs."""

    phase: int = 0
    step: int = 0                 # optimisation steps done in the current phase
    global_step: int = 0          # across phases
    epoch: int = 0                # data epoch counter (continues across phases)
    batch_in_epoch: int = 0
    best_score: float = -math.inf
    best_step: int = -1
    evals_since_best: int = 0
    history: list[dict] = field(default_factory=list)
    done: bool = False
    head_fit: dict = field(default_factory=dict)
    running_loss: list[float] = field(default_factory=list)  # train losses since the last validation


@dataclass
class FitResult:
    run_dir: Path
    metrics: dict | None
    state: RunState
    interrupted: bool = False
    signal: int | None = None     # SIGINT/SIGTERM that stopped the run (None: --stop-after or done)


def _accelerator(cfg: TrainConfig):
    from accelerate import Accelerator
    precision = cfg.precision
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    return Accelerator(mixed_precision={"fp32": "no"}.get(precision, precision), cpu=not torch.cuda.is_available())


def total_steps(cfg: TrainConfig, n_train: int) -> int:
    """Steps by optimisation step, not epochs: 10 images x 9 classes is a single batch, so an
    "epoch" says nothing there. Default: 10 epochs, but never fewer than 150 steps."""
    per_epoch = max(1, math.ceil(n_train / (cfg.batch_size * cfg.grad_accum)))
    if cfg.steps:
        return cfg.steps
    if cfg.epochs:
        return cfg.epochs * per_epoch
    return max(150, 10 * per_epoch)


def lr_factor(step: int, total: int, warmup: float) -> float:
    """Linear warm-up over `warmup` of the steps, then cosine decay to zero."""
    w = int(round(total * warmup))
    if step < w:
        return (step + 1) / w
    progress = (step - w) / max(1, total - w)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _epoch_batches(n: int, batch: int, seed: int, epoch: int) -> list[list[tuple[int, int]]]:
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n, generator=g).tolist()
    # drop a ragged last batch only when it is tiny next to the rest (it makes noisy BN/grad steps)
    batches = [order[i:i + batch] for i in range(0, n, batch)]
    if len(batches) > 1 and len(batches[-1]) < batch // 4:
        batches = batches[:-1]
    return [[(i, epoch) for i in b] for b in batches]


def fit(cfg: TrainConfig, *, resume: bool = False, log=print, progress: bool = True,
        evaluate_test: bool = True) -> FitResult:
    """Train according to `cfg` and write the run directory; with `resume`, continue `cfg.out`.
    `evaluate_test=False` leaves the test split untouched (model selection runs, e.g. l2sp:auto).
    SIGINT/SIGTERM finish the current step, write `last/` and return an interrupted result."""
    single = os.environ.get("WORLD_SIZE", "1") == "1"  # under torchrun, the launcher owns the signals
    with interrupt.stop_on_signals(enabled=single):
        return _fit(cfg, resume=resume, log=log, progress=progress, evaluate_test=evaluate_test)


def _fit(cfg: TrainConfig, *, resume: bool, log, progress: bool, evaluate_test: bool) -> FitResult:
    run = Path(cfg.out)
    state = RunState()
    if resume:
        cfg, state, resume = resume_point(run, cfg, log)
    elif os.environ.get("RANK", "0") == "0":  # one process judges (and later claims) the folder
        check_out_dir(cfg)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    import random
    random.seed(cfg.seed)

    accel = _accelerator(cfg)
    device = accel.device
    task = load_task(cfg.data, val=cfg.val, test=cfg.test, shots=cfg.shots, seed=cfg.seed,
                     val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction,
                     text_col=cfg.text_col, label_col=cfg.label_col)
    report_data_issues(task, cfg, log)
    model, anchor = build_model(cfg, task.classes)
    if resume and anchor is not None:
        anchor = verify_anchor(run, cfg, model, anchor)
    model.to(device)
    plan = plan_strategy(cfg.strategy, model.spec.num_stages, backbone_lr_mult=_bb_mult(cfg, model))
    regs = build_regularizers_for(cfg, model, anchor, device)
    if not resume and accel.is_main_process:
        # only now, with data, model, strategy and regularizers known to be valid, touch the disk
        _start_run_folder(run, cfg, task, model, anchor, log)
    accel.wait_for_everyone()
    n_sgd = total_steps(cfg, len(task.train))
    sgd_phases = [p for p in plan.phases if not p.head_only]
    share = sum(p.fraction for p in sgd_phases) or 1.0
    phase_steps = [0 if p.head_only else max(1, round(n_sgd * p.fraction / share)) for p in plan.phases]
    autocast = accel.autocast

    train_ds = make_dataset(model, task.train, train=True, augment=cfg.augment,
                            image_size=cfg.image_size, seed=cfg.seed)
    plain_train = make_dataset(model, task.train, train=False, augment=False,
                               image_size=cfg.image_size, seed=cfg.seed)
    val_loader = eval_loader(model, make_dataset(model, task.val, train=False, augment=False,
                                                 image_size=cfg.image_size, seed=cfg.seed),
                             cfg.batch_size * 2, cfg.num_workers)
    if resume:
        model.load_state_dict(ck.load_tensors(resume / "model.safetensors"))
    elif accel.is_main_process:  # resumable from the first second: kill -9 during step 1 loses nothing
        _save_last(run, model, None, state)
    log(f"train {len(task.train)} / val {len(task.val)} / test {len(task.test)} items, "
        f"{len(task.classes)} classes; strategy {plan.strategy}: "
        + " -> ".join(f"{p.name}({'head fit' if p.head_only else f'{s} steps'})"
                      for p, s in zip(plan.phases, phase_steps)))

    interrupted = False
    while state.phase < len(plan.phases) and not state.done:
        phase = plan.phases[state.phase]
        freeze_stages(model, phase.frozen)
        if phase.head_only:
            _head_phase(model, cfg, state, plain_train, val_loader, device, autocast, log)
            _save_best_if_better(run, model, state, state.history[-1], cfg.metric,
                                 write=accel.is_main_process)
            if interrupt.requested():
                state.phase += 1
                _save_last(run, model, None, state)
                return _stopped(run, state)
            resume = None  # the next phase starts from this process's state, not the checkpoint
        else:
            interrupted = _sgd_phase(model, cfg, state, phase, phase_steps[state.phase], train_ds,
                                     val_loader, accel, regs, run, resume, log, progress)
            resume = None
            if interrupted:
                return FitResult(run, None, state, interrupted=True, signal=interrupt.requested())
        state.phase += 1
        state.step = 0
        if accel.is_main_process:
            _save_last(run, model, None, state)
    state.done = True
    if accel.is_main_process:
        _save_last(run, model, None, state)
    accel.wait_for_everyone()  # the best weights are on disk before any process reads them back
    metrics = _finish(run, cfg, model, task, state, device, autocast, log, evaluate_test,
                      write=accel.is_main_process)
    return FitResult(run, metrics, state)


def _start_run_folder(run: Path, cfg: TrainConfig, task: Task, model, anchor, log) -> None:
    claim_out_dir(cfg, overwrite=cfg.overwrite, log=log)
    save_config(cfg, run / "config.yaml")
    write_environment(run)
    _write_splits(run, task)
    ck.atomic_write_json(run / "source.json", model.spec.source.to_dict())
    if cfg.store_anchor and anchor is not None:
        ck.atomic_save_tensors(run / "anchor.safetensors", anchor,
                               {"anchor_hash": anchor_hash(anchor),
                                "weights_hash": model.spec.source.weights_hash})


def _bb_mult(cfg: TrainConfig, model) -> float:
    # a random-init backbone has nothing to preserve: it trains at the head's learning rate
    return cfg.backbone_lr_mult if model.spec.source.pretrained else 1.0


def _head_phase(model, cfg, state: RunState, plain_train, val_loader, device, autocast, log) -> None:
    t0 = time.time()
    loader = eval_loader(model, plain_train, cfg.batch_size * 2, cfg.num_workers)
    cache = feature_cache_for(cfg)  # frozen + deterministic preprocessing: rows come from disk
    feats, labels = extract_features(model.backbone, loader, device, flip=cfg.augment, autocast=autocast,
                                     cache=cache)
    vf = (extract_features(model.backbone, val_loader, device, autocast=autocast, cache=cache)
          if len(val_loader.dataset) else None)
    info = fit_head(model.head, feats, labels, val=vf, label_smoothing=cfg.label_smoothing,
                    prior=getattr(model, "head_prior", None))
    state.head_fit = info
    row = {"phase": state.phase, "step": state.global_step, "epoch": state.epoch, "lr": "",
           "train_loss": "", "seconds": round(time.time() - t0, 2)}
    row.update(_validate(model, val_loader, device, autocast))
    state.history.append(row)
    log(f"head fit on frozen features: C={info['C']}, val acc {row.get('val_accuracy', float('nan')):.4f} "
        f"({row['seconds']:.1f}s)")


def _validate(model, loader, device, autocast) -> dict:
    if not len(loader.dataset):
        return {}
    probs, y = predict_probs(model, loader, device, autocast=autocast)
    from ..report.metrics import classification_metrics
    m = classification_metrics(y, probs, model.class_names)
    return {"val_accuracy": round(m["accuracy"], 6), "val_macro_f1": round(m["macro_f1"], 6),
            "val_loss": round(m["nll"], 6)}


def validation_score(row: dict, metric: str) -> float:
    """Higher is better. `loss` (the default) selects by validation NLL: on the ~100 validation
    items of a few-shot split, accuracy moves in 1% steps and a lucky step of a fine-tuning run
    that is already drifting away from the probe (its NLL rising) would win the selection."""
    if metric == "loss" and "val_loss" in row:
        return -row["val_loss"]
    if f"val_{metric}" in row:
        # ties on accuracy (common on small val sets) go to the lower validation loss
        return row[f"val_{metric}"] - 1e-6 * row.get("val_loss", 0.0)
    return -row.get("train_loss", 0.0) if row.get("train_loss", "") != "" else -math.inf


def _save_best_if_better(run: Path, model, state: RunState, row: dict, metric: str = "loss",
                         write: bool = True) -> bool:
    """Track the best validation score on every process (so early stopping agrees across ranks);
    only the main process writes the weights."""
    score = validation_score(row, metric)
    if score > state.best_score:
        state.best_score, state.best_step, state.evals_since_best = score, state.global_step, 0
        if write:
            _save_model(run / "model.safetensors", model)
        return True
    state.evals_since_best += 1
    return False


def _save_model(path: Path, model) -> None:
    meta = {"source": model.spec.source.id, "weights_hash": model.spec.source.weights_hash,
            "classes": json.dumps(model.class_names)}
    ck.atomic_save_tensors(path, model.state_dict(), meta)


def _save_last(run: Path, model, optimizer, state: RunState) -> None:
    def build(tmp: Path) -> None:
        tensors, rng_meta = ck.rng_state()
        meta = {"run_state": state.__dict__, "rng": rng_meta,
                "frozen_stages": [i for i, s in enumerate(model.spec.stages)
                                  if not any(p.requires_grad for n, p in model.backbone.named_parameters()
                                             if n in set(s.params))]}
        if optimizer is not None:
            opt_t, opt_meta = ck.optimizer_to_flat(optimizer)
            ck.atomic_save_tensors(tmp / "optimizer.safetensors", opt_t)
            meta["optimizer"] = opt_meta
            meta["param_groups"] = [g.get("name") for g in optimizer.param_groups]
        ck.atomic_save_tensors(tmp / "rng.safetensors", tensors)
        ck.atomic_save_tensors(tmp / "model.safetensors", model.state_dict())
        ck.atomic_write_json(tmp / "state.json", meta)
    ck.atomic_replace_dir(build, run / "last")


def _stopped(run: Path, state: RunState) -> FitResult:
    return FitResult(run, None, state, interrupted=True, signal=interrupt.requested())


def _make_optimizer(cfg: TrainConfig, groups: list[dict]):
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)
    raise ValueError(f"unknown optimizer '{cfg.optimizer}'; use adamw or sgd")


def _sgd_phase(model, cfg: TrainConfig, state: RunState, phase, n_steps: int, train_ds, val_loader,
               accel, regs, run: Path, resume: bool, log, progress: bool) -> bool:
    """Run (or continue) one training phase. Returns True if stopped by `stop_after`."""
    no_wd = set().union(*[r.no_weight_decay(model) for r in regs]) if regs else set()
    groups = param_groups(model, phase, lr=cfg.lr, weight_decay=cfg.weight_decay,
                          layer_decay=cfg.layer_decay, no_weight_decay=no_wd)
    optimizer = _make_optimizer(cfg, groups)
    # no gradient left over from the head fit (LBFGS) may join the first step: a resumed run has none
    optimizer.zero_grad(set_to_none=True)
    if resume:
        restore_optimizer_and_rng(resume, run, cfg, state, optimizer, log)
    ddp_model = accel.prepare_model(model) if accel.num_processes > 1 else model
    optimizer = accel.prepare_optimizer(optimizer) if accel.num_processes > 1 else optimizer
    device = accel.device
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    per_epoch = len(_epoch_batches(len(train_ds), cfg.batch_size, cfg.seed, 0))
    eval_every = cfg.eval_every or max(1, per_epoch // cfg.grad_accum)
    bar = _progress(n_steps, state.step, phase.name, progress and accel.is_main_process)
    # the loss window lives in the run state: a resumed run logs the same train_loss as an
    # uninterrupted one
    running, seen, t0 = state.running_loss, 0, time.time()
    clock = ck.CheckpointClock(cfg.checkpoint_every, cfg.checkpoint_seconds, state.step, t0)
    bn = resolve_bn(cfg.bn, len(train_ds), model.num_classes)
    batches, batches_epoch = [], None
    set_train_mode(model, bn)
    while state.step < n_steps:
        if batches_epoch != state.epoch:  # one permutation per epoch, not per step
            batches, batches_epoch = _epoch_batches(len(train_ds), cfg.batch_size, cfg.seed, state.epoch), state.epoch
        if state.batch_in_epoch >= len(batches):
            state.epoch, state.batch_in_epoch = state.epoch + 1, 0
            continue
        micro = batches[state.batch_in_epoch: state.batch_in_epoch + cfg.grad_accum]
        for factor_group in optimizer.param_groups:
            factor_group["lr"] = factor_group["initial_lr"] * lr_factor(state.step, n_steps, cfg.warmup)
        loss_val = 0.0
        for j, idx in enumerate(micro):
            if accel.num_processes > 1:  # each process takes its share of the global batch
                idx = idx[accel.process_index::accel.num_processes]
            x, y = _collate(train_ds, idx, model)
            x, y = to_device(x, device), y.to(device)
            sync = j == len(micro) - 1
            with (nullcontext() if sync or accel.num_processes == 1 else accel.no_sync(ddp_model)):
                with accel.autocast():
                    logits, feats = ddp_model(x, return_features=True)
                    loss = loss_fn(logits.float(), y)
                    for r in regs:
                        loss = loss + r(model, feats, inputs=x)
                accel.backward(loss / len(micro))
            loss_val += loss.item() / len(micro)
            seen += len(idx)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        state.batch_in_epoch += len(micro)
        state.step += 1
        state.global_step += 1
        running.append(loss_val)
        if bar is not None:
            bar.update(1)
            last_val = next((r["val_accuracy"] for r in reversed(state.history) if "val_accuracy" in r), None)
            bar.set_postfix(loss=f"{np.mean(running[-10:]):.3f}",
                            val_acc="-" if last_val is None else f"{last_val:.3f}",
                            items_per_s=f"{seen / max(1e-9, time.time() - t0):.0f}")
        last_step = state.step == n_steps
        if state.step % eval_every == 0 or last_step:
            row = {"phase": state.phase, "step": state.global_step, "epoch": state.epoch,
                   "lr": optimizer.param_groups[-1]["lr"], "train_loss": round(float(np.mean(running)), 6),
                   "seconds": round(time.time() - t0, 2)}
            row.update(_validate(model, val_loader, device, accel.autocast))
            set_train_mode(model, bn)
            running.clear()
            state.history.append(row)
            _save_best_if_better(run, model, state, row, cfg.metric, write=accel.is_main_process)
            stop_early = cfg.patience is not None and state.evals_since_best >= cfg.patience
            if stop_early:
                log(f"early stop at step {state.global_step}: no improvement in {cfg.patience} validations")
                state.step = n_steps
        by_flag = cfg.stop_after and state.global_step >= cfg.stop_after
        if (by_flag or interrupt.requested()) and state.step < n_steps:
            if accel.is_main_process:
                _save_last(run, model, optimizer, state)
            if bar is not None:
                bar.close()
            if by_flag:
                log(f"stopped after {state.global_step} steps; continue with --resume {run}")
            return True
        # last/ by steps and by time (--checkpoint-every, --checkpoint-seconds), whichever comes first
        if accel.is_main_process and state.step < n_steps and clock.due(state.step, time.time()):
            _save_last(run, model, optimizer, state)
            clock.saved(state.step, time.time())
    if bar is not None:
        bar.close()
    return False


def _collate(ds, idx, model):
    items = [ds[i] for i in idx]
    collate = collate_for(model)
    if collate is not None:
        return collate(items)
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])


def _progress(total: int, start: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=start, desc=desc, leave=False, dynamic_ncols=True)


def _write_splits(run: Path, task: Task) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["split", "item", "label"])
    w.writeheader()
    w.writerows(task.split_record())
    ck.atomic_write_text(run / "splits.csv", buf.getvalue())


def _finish(run: Path, cfg: TrainConfig, model, task: Task, state: RunState, device, autocast,
            log, evaluate_test: bool = True, write: bool = True) -> dict:
    """Reload the best weights, evaluate on the test split, write metrics, history and report
    (the files only from the main process)."""
    from ..report import write_report
    from ..report.gallery import worst_errors
    from ..report.metrics import classification_metrics
    errors = None
    if (run / "model.safetensors").exists():
        model.load_state_dict(ck.load_tensors(run / "model.safetensors"))
    elif write:
        _save_model(run / "model.safetensors", model)
    metrics: dict = {"n_train": len(task.train), "n_val": len(task.val), "n_test": len(task.test)}
    if task.test and evaluate_test:
        loader = eval_loader(model, make_dataset(model, task.test, train=False, augment=False,
                                                 image_size=cfg.image_size, seed=cfg.seed),
                             cfg.batch_size * 2, cfg.num_workers)
        probs, y = predict_probs(model, loader, device, tta=cfg.tta, autocast=autocast)
        metrics.update(classification_metrics(y, probs, model.class_names))
        errors = worst_errors(task.test, probs, y, model.class_names)
    metrics["best_step"] = state.best_step
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
    _write_history(run, state.history)
    write_report(run, cfg, model, metrics, state.history, errors=errors)
    log(f"test accuracy {metrics.get('accuracy', float('nan')):.4f}, macro-F1 "
        f"{metrics.get('macro_f1', float('nan')):.4f} -> {run}")
    return metrics


def _write_history(run: Path, history: list[dict]) -> None:
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(history)
    ck.atomic_write_text(run / "history.csv", buf.getvalue())
