"""The training loop: one readable function on Accelerate (CPU, one GPU, many GPUs or nodes).

A run walks the phases of its strategy plan. Head-only phases fit the head on cached frozen
features (seconds, not a training run); the others run AdamW/SGD with warm-up + cosine by
optimisation step, validate, keep the best checkpoint and can stop early. `last/` is rewritten at
every validation so `--resume` continues exactly where the run stopped.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..config import TrainConfig, save_config
from ..data import Task, cv_folds, few_labels
from ..data.checks import report_data_issues
from ..data.feature_cache import feature_cache_for
from ..models.multistage import MultiStageFeatures
from ..regularizers import capture_feature_maps, feature_map_layers
from ..strategies import (freeze_stages, param_groups, parameter_summary, plan_strategy, resolve_bn,
                          set_train_mode)
from ..store import checkpoint as ck
from . import interrupt
from .batches import collate_items, train_batches
from .build import anchor_hash, build_model, build_regularizers_for, load_task_for, verify_anchor
from ..store.environment import write_environment
from ..store.fingerprint import check_data_unchanged, write_fingerprint
from ..infer.loaders import eval_loader, make_dataset, to_device
from .headfit import fit_multistage_probe, fit_probe
from ..infer.probe_views import augmented_views, frozen_views, n_probe_views, plain_probe, view_counts
from ..infer.tta import resolve_views, views_of
from .resume import restore_optimizer_and_rng, resume_point
from .run_state import RunState
from .tracking import accelerator_kwargs, end_tracking, log_evaluation, log_step, start_tracking
from ..store.runfolder import check_out_dir, claim_out_dir
from ..infer.sharded import predict_probs_sharded
from .stage_cache import stage_cache_for


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
    return Accelerator(mixed_precision={"fp32": "no"}.get(precision, precision), cpu=not torch.cuda.is_available(),
                       **accelerator_kwargs(cfg))


# Default schedule, fixed by benchmarks/fewshot.py: passes over the training set, with a floor
# (a 20-image task still gets enough steps to move) and a ceiling (a large one stays affordable).
DEFAULT_EPOCHS = 15
MIN_STEPS = 30
MAX_STEPS = 600
# WiSE-FT (Wortsman et al., CVPR 2022) weight of the fine-tuned weights when no validation split
# can choose it (few labels): measured by benchmarks/fewshot.py.
WISE_DEFAULT = 0.5
WISE_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)


def total_steps(cfg: TrainConfig, n_train: int) -> int:
    """Optimisation steps of the SGD phases: `--steps`, else `--epochs` passes, else DEFAULT_EPOCHS
    passes over the training set bounded by [MIN_STEPS, MAX_STEPS]."""
    per_epoch = max(1, math.ceil(n_train / (cfg.batch_size * cfg.grad_accum)))
    if cfg.steps:
        return cfg.steps
    if cfg.epochs:
        return cfg.epochs * per_epoch
    return max(MIN_STEPS, min(MAX_STEPS, DEFAULT_EPOCHS * per_epoch))


def augment_policy(cfg: TrainConfig, task: Task) -> str:
    """`auto`: `strong` at few labels per class (the backbone memorises a handful of images within a
    few epochs otherwise), `light` with more."""
    if cfg.augment_policy != "auto":
        return cfg.augment_policy
    return "strong" if few_labels(task.train) else "light"


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
        evaluate_test: bool = True, task: Task | None = None, choice: dict | None = None) -> FitResult:
    """Train according to `cfg` and write the run directory; with `resume`, continue `cfg.out`.
    `evaluate_test=False` leaves the test split untouched (model selection runs, e.g. l2sp:auto).
    `task`: train on these splits instead of reading `cfg.data` (cross-validation folds).
    `choice`: how the strategy was chosen (`--strategy auto`), recorded in metrics.json.
    SIGINT/SIGTERM finish the current step, write `last/` and return an interrupted result."""
    single = os.environ.get("WORLD_SIZE", "1") == "1"  # under torchrun, the launcher owns the signals
    from ..store.runfolder import run_lock
    if not resume and os.environ.get("RANK", "0") == "0":
        check_out_dir(cfg)  # before the lock creates the folder
    lock = run_lock(cfg.out) if cfg.out and (not resume or Path(cfg.out).is_dir()) else nullcontext()
    with lock, interrupt.stop_on_signals(enabled=single):
        return _fit(cfg, resume=resume, log=log, progress=progress, evaluate_test=evaluate_test,
                    task=task, choice=choice)


def _fit(cfg: TrainConfig, *, resume: bool, log, progress: bool, evaluate_test: bool,
         task: Task | None, choice: dict | None) -> FitResult:
    run = Path(cfg.out)
    state = RunState()
    if resume:
        cfg, state, resume = resume_point(run, cfg, log)
    elif os.environ.get("RANK", "0") == "0":  # one process judges (and later claims) the folder
        check_out_dir(cfg)
    if choice:
        state.choice = choice
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    import random
    random.seed(cfg.seed)

    accel = _accelerator(cfg)
    device = accel.device
    if task is None:
        task = load_task_for(cfg)
        if resume and check_data_unchanged(run, cfg, task, log) and accel.is_main_process:
            _write_splits(run, task)  # --resume-inexact on changed data: splits.csv says what it trains on
    report_data_issues(task, cfg, log)
    model, anchor = build_model(cfg, task.classes)
    if resume and anchor is not None:
        anchor = verify_anchor(run, cfg, model, anchor)
    model.to(device)
    plan = plan_strategy(cfg.strategy, model.spec.num_stages, backbone_lr_mult=_bb_mult(cfg, model))
    if not resume:  # recorded in config.yaml, so evaluate and predict score as the test split was
        seen = plain_probe(model) or not all(p.head_only for p in plan.phases)
        cfg = dataclasses.replace(cfg, tta_views=resolve_views(cfg, task.train, model.spec.modality,
                                                               sees_augmented=seen))
    regs = build_regularizers_for(cfg, model, anchor, device, task.train, log)
    from .unlabelled import setup_unlabelled  # --unlabelled: AdaBN and FixMatch (read before any write)
    pool_loader, fixmatch = setup_unlabelled(cfg, task, model, plan, state, resume=bool(resume), log=log,
                                             num_processes=accel.num_processes)
    if not resume and accel.is_main_process:
        # only now, with data, model, strategy and regularizers known to be valid, touch the disk
        _start_run_folder(run, cfg, task, model, anchor, log)
    accel.wait_for_everyone()
    start_tracking(accel, cfg)
    n_sgd = total_steps(cfg, len(task.train))
    sgd_phases = [p for p in plan.phases if not p.head_only]
    share = sum(p.fraction for p in sgd_phases) or 1.0
    phase_steps = [0 if p.head_only else max(1, round(n_sgd * p.fraction / share)) for p in plan.phases]
    autocast = accel.autocast

    train_ds = make_dataset(model, task.train, train=True, augment=cfg.augment,
                            image_size=cfg.image_size, seed=cfg.seed, policy=augment_policy(cfg, task))
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
    has_val = len(task.val) > 0  # else: no selection by validation, the final weights are kept
    while state.phase < len(plan.phases) and not state.done:
        phase = plan.phases[state.phase]
        freeze_stages(model, phase.frozen)
        t_phase = time.time()
        if phase.head_only:
            then_trains = state.phase + 1 < len(plan.phases)
            _head_phase(model, cfg, state, plain_train, val_loader, device, autocast, log,
                        calibrated=then_trains, accel=accel, pool=pool_loader)
            if then_trains and _wise_applies(plan) and accel.is_main_process:
                _save_model(run / "lp_model.safetensors", model)  # WiSE-FT's other end
            if has_val:
                _save_best_if_better(run, model, state, state.history[-1], cfg.metric,
                                     write=accel.is_main_process)
            if interrupt.requested():
                state.phase += 1
                _save_last(run, model, None, state)
                end_tracking(accel, None, state.global_step)
                return _stopped(run, state)
            resume = None  # the next phase starts from this process's state, not the checkpoint
        else:
            interrupted = _sgd_phase(model, cfg, state, phase, phase_steps[state.phase], train_ds,
                                     val_loader, accel, regs, run, resume, log, progress, fixmatch=fixmatch)
            resume = None
            if interrupted:
                end_tracking(accel, None, state.global_step)
                return FitResult(run, None, state, interrupted=True, signal=interrupt.requested())
        state.phase_seconds[phase.name] = round(state.phase_seconds.get(phase.name, 0.0)
                                                + time.time() - t_phase, 2)
        if not has_val and accel.is_main_process:
            _save_model(run / "model.safetensors", model)
        state.phase += 1
        state.step = 0
        if accel.is_main_process:
            _save_last(run, model, None, state)
    if not state.done and _wise_applies(plan) and (run / "lp_model.safetensors").exists():
        accel.wait_for_everyone()
        _apply_wise(run, cfg, model, state, val_loader, device, autocast, log,
                    write=accel.is_main_process)
    state.done = True
    if accel.is_main_process:
        _save_last(run, model, None, state)
    accel.wait_for_everyone()  # the best weights are on disk before any process reads them back
    metrics = _finish(run, cfg, model, task, state, device, autocast, log, evaluate_test,
                      write=accel.is_main_process, accel=accel)
    end_tracking(accel, metrics, state.global_step)
    return FitResult(run, metrics, state)


def _start_run_folder(run: Path, cfg: TrainConfig, task: Task, model, anchor, log) -> None:
    claim_out_dir(cfg, overwrite=cfg.overwrite, log=log)
    save_config(cfg, run / "config.yaml")
    write_environment(run)
    _write_splits(run, task)
    write_fingerprint(run, task)  # what --resume checks the data against
    ck.atomic_write_json(run / "source.json", model.spec.source.to_dict())
    if cfg.store_anchor and anchor is not None:
        ck.atomic_save_tensors(run / "anchor.safetensors", anchor,
                               {"anchor_hash": anchor_hash(anchor),
                                "weights_hash": model.spec.source.weights_hash})


def _bb_mult(cfg: TrainConfig, model) -> float:
    # a random-init backbone has nothing to preserve: it trains at the head's learning rate
    return cfg.backbone_lr_mult if model.spec.source.pretrained else 1.0


def _head_phase(model, cfg, state: RunState, plain_train, val_loader, device, autocast, log,
                calibrated: bool = False, accel=None, pool=None) -> None:
    """Fit the head on frozen features, C chosen on validation or by cross-validation.
    `calibrated`: fine-tuning follows, so fit with the C of best held-out NLL (see fit_probe)."""
    t0 = time.time()
    loader = eval_loader(model, plain_train, cfg.batch_size * 2, cfg.num_workers)
    cache = feature_cache_for(cfg)  # frozen + deterministic preprocessing: rows come from disk
    views, labels, val = frozen_views(model, cfg, loader, val_loader, device, autocast, cache)
    folds = [] if val is not None else cv_folds(labels.numpy(), cfg.cv_folds, cfg.seed)
    if pool is not None:  # AdaBN, kept only if the probe scores better held out (engine/unlabelled.py)
        from .unlabelled import adabn_in_head_phase
        views, val = adabn_in_head_phase(model, cfg, state, pool, loader, val_loader, views, labels, val, folds,
                                         device, autocast, cache)
    prior = getattr(model, "head_prior", None)
    how_views = view_counts(cfg, views)
    k_aug = n_probe_views(cfg, len(labels), model.spec.modality) if plain_probe(model) else 0
    if k_aug:  # augmented copies to learn from, after the views that score (probe_views.py)
        views = torch.cat([views, augmented_views(model, plain_train.items, cfg, device, autocast, k_aug)])
        how_views["fit_views"] = len(views)
    extra = {"probe_views": k_aug} if k_aug else {}
    if hasattr(model.head, "fit_prototypes"):  # --strategy prototypes: class means, nothing to fit
        from .headfit import fit_head
        X, Y = views[:how_views["fit_views"]].reshape(-1, views.shape[-1]), labels.repeat(how_views["fit_views"])
        info = fit_head(model.head, X, Y, val=(val[0][0], val[1]) if val is not None else None)
        from .headfit import HeadChoice
        # no C to choose: the one free number is the scale, picked by validation NLL when there is one
        choice = HeadChoice(C=1.0, C_nll=1.0, method="val" if val is not None else "default")
        extra = {"scale": info["scale"]}
    elif prior is not None:  # class names as the head's prior (transferkit.zeroshot.prior)
        from .headfit import fit_head
        X, Y = views[:how_views["fit_views"]].reshape(-1, views.shape[-1]), labels.repeat(how_views["fit_views"])
        vf = (val[0][0], val[1]) if val is not None else None
        info = fit_head(model.head, X, Y, val=vf, label_smoothing=cfg.label_smoothing, prior=prior)
        from .headfit import HeadChoice
        choice = HeadChoice(C=info["C"], C_nll=info["C"], method="val" if vf else "default")
        extra = {"prior_scale": info.get("prior_scale")}
    elif isinstance(model.backbone, MultiStageFeatures):
        choice, blocks, options = fit_multistage_probe(model.backbone, model.head, views, labels, val=val,
                                                       folds=folds, label_smoothing=cfg.label_smoothing,
                                                       **how_views)
        extra = {"blocks": blocks, "layers": model.backbone.layers[:blocks], "options": options}
        log(f"multi-stage probe: {blocks} stage block(s) below the final features "
            f"({', '.join(model.backbone.layers[:blocks]) or 'final features only'})")
    else:
        choice = fit_probe(model.head, views, labels, val=val, folds=folds, calibrated=calibrated,
                           label_smoothing=cfg.label_smoothing, **how_views)
    C = choice.C_nll if calibrated else choice.C
    state.head_fit = {"C": C, "C_best_accuracy": choice.C, "C_best_nll": choice.C_nll,
                      "method": choice.method, "folds": choice.folds, "table": choice.table,
                      "estimate": choice.estimate(), **extra}
    if "scale" in extra:
        state.head_fit.update(C=None, C_best_accuracy=None, C_best_nll=None,
                              estimate={**choice.estimate(), "C": None})
    row = {"phase": state.phase, "step": state.global_step, "epoch": state.epoch, "lr": "",
           "train_loss": "", "seconds": round(time.time() - t0, 2)}
    row.update(_validate(model, val_loader, device, autocast, tta=cfg.tta, views=views_of(cfg), accel=accel,
                         step=state.global_step))
    state.history.append(row)
    if "scale" in extra:
        log(_prototypes_line(extra["scale"], choice.method, row))
        return
    est = choice.estimate()
    how = {"val": "on validation", "cv": f"by {choice.folds}-fold cross-validation",
           "default": "by default (too few labels to cross-validate)"}[choice.method]
    log(f"head fit on frozen features: C={C} chosen {how}"
        + (f", held-out accuracy {est['accuracy']:.4f}" if est.get("accuracy") is not None else "")
        + (f" ± {est['accuracy_se']:.4f}" if est.get("accuracy_se") is not None else "")
        + f" ({row['seconds']:.1f}s)")


def _prototypes_line(scale: float, method: str, row: dict) -> str:
    how = "on validation NLL" if method == "val" else "by default (no validation split)"
    acc = f", val acc {row['val_accuracy']:.4f}" if "val_accuracy" in row else ""
    return (f"prototype head (nearest class mean, no C): scale {scale:g} chosen {how}{acc} "
            f"({row['seconds']:.1f}s)")


def _wise_applies(plan) -> bool:
    """WiSE-FT interpolates between the probe (source backbone + fitted head) and the fine-tuned
    weights: it needs a head phase followed by a phase that trains the whole backbone."""
    return (len(plan.phases) == 2 and plan.phases[0].head_only and not plan.phases[1].frozen
            and not plan.lora)


def wise_mix(lp: dict, ft: dict, w: float) -> dict:
    """(1 - w) * lp + w * ft for floating tensors; integer buffers (BatchNorm's counter) from ft."""
    return {k: ((1 - w) * lp[k].to(device=v.device, dtype=v.dtype) + w * v) if v.is_floating_point() else v
            for k, v in ft.items()}


def _apply_wise(run: Path, cfg: TrainConfig, model, state: RunState, val_loader, device, autocast,
                log, write: bool = True) -> None:
    """WiSE-FT (Wortsman et al., CVPR 2022): replace the fine-tuned weights by an interpolation
    with the probe solution. The weight is `--wise`, else chosen on the validation split, else
    WISE_DEFAULT (few labels: fixed by the benchmark; `--strategy auto` chooses it by CV)."""
    lp = ck.load_tensors(run / "lp_model.safetensors")
    ft = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if cfg.wise is not None:
        w, how, rows = float(cfg.wise), "given", []
    elif len(val_loader.dataset):
        rows = []
        for cand in WISE_GRID:
            model.load_state_dict(wise_mix(lp, ft, cand))
            rows.append({"wise": cand, **_validate(model, val_loader, device, autocast, tta=cfg.tta, views=views_of(cfg))})
        best = max(rows, key=lambda r: validation_score(r, cfg.metric))
        w, how = best["wise"], "on validation"
    else:
        w, how, rows = WISE_DEFAULT, "default", []
    model.load_state_dict(wise_mix(lp, ft, w))
    state.wise = {"weight": w, "chosen": how, "table": rows}
    log(f"WiSE-FT: weights = {1 - w:g} x probe + {w:g} x fine-tuned ({how})")
    if write:
        _save_model(run / "model.safetensors", model)


def _validate(model, loader, device, autocast, tta: bool = False, accel=None, step: int = 0,
              views: int = 0) -> dict:
    """Validation metrics, scored exactly as the test split is (same test-time augmentation);
    with `accel`, also sent to its experiment trackers at `step`."""
    if not len(loader.dataset):
        return {}
    probs, y = predict_probs_sharded(model, loader, device, tta=tta, autocast=autocast, accel=accel,
                                     views=views)
    from ..report.metrics import classification_metrics
    m = classification_metrics(y, probs, model.class_names)
    log_evaluation(accel, m, model.class_names, step)
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
               accel, regs, run: Path, resume: bool, log, progress: bool, fixmatch=None) -> bool:
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
    bn = resolve_bn(cfg.bn, len(train_ds), model.num_classes, pretrained=model.spec.source.pretrained)
    batches, batches_epoch = [], None
    maps_at = feature_map_layers(regs)  # layers a regularizer reads (DELTA), hooked in the one forward
    feed, feed_at = None, None
    set_train_mode(model, bn)
    cache = stage_cache_for(model, cfg, phase.frozen, train_ds, maps_at, accel, log)  # partial:K, no augment
    while state.step < n_steps:
        if batches_epoch != state.epoch:  # one permutation per epoch, not per step
            batches, batches_epoch = _epoch_batches(len(train_ds), cfg.batch_size, cfg.seed, state.epoch), state.epoch
        if state.batch_in_epoch >= len(batches):
            state.epoch, state.batch_in_epoch = state.epoch + 1, 0
            continue
        micro = batches[state.batch_in_epoch: state.batch_in_epoch + cfg.grad_accum]
        if cache is None and feed_at != (state.epoch, state.batch_in_epoch):  # a new epoch, or a resumed run
            feed = train_batches(train_ds, batches, state.batch_in_epoch, model, num_workers=cfg.num_workers,
                                 seed=cfg.seed, epoch=state.epoch, rank=accel.process_index,
                                 world=accel.num_processes, fetch=lambda b: _collate(train_ds, b, model))
        for factor_group in optimizer.param_groups:
            factor_group["lr"] = factor_group["initial_lr"] * lr_factor(state.step, n_steps, cfg.warmup)
        loss_val = 0.0
        for j, idx in enumerate(micro):
            if accel.num_processes > 1:  # each process takes its share of the global batch
                idx = idx[accel.process_index::accel.num_processes]
            x, y = cache.inputs(idx) if cache is not None else next(feed)
            x, y = to_device(x, device), y.to(device)
            sync = j == len(micro) - 1
            with (nullcontext() if sync or accel.num_processes == 1 else accel.no_sync(ddp_model)):
                with accel.autocast(), capture_feature_maps(model.backbone, maps_at) as maps:
                    logits, feats = ddp_model(x, return_features=True)
                    loss = loss_fn(logits.float(), y)
                    for r in regs:
                        loss = loss + r(model, feats, feature_maps=maps, inputs=x)
                    if fixmatch is not None:  # pseudo-labels on the unlabelled pool (adaptation/fixmatch.py)
                        loss = loss + fixmatch(ddp_model, state.global_step, j, device)
                accel.backward(loss / len(micro))
            loss_val += loss.item() / len(micro)
            seen += len(idx)
        for r in regs:  # decoupled pulls (L2-SP with AdamW) act beside the optimizer's update
            getattr(r, "before_step", lambda *_: None)(model, optimizer)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        state.batch_in_epoch += len(micro)
        feed_at = (state.epoch, state.batch_in_epoch)
        state.step += 1
        state.global_step += 1
        running.append(loss_val)
        log_step(accel, state.global_step, loss_val, optimizer.param_groups[-1]["lr"])
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
            row.update(_validate(model, val_loader, device, accel.autocast, tta=cfg.tta, views=views_of(cfg), accel=accel,
                                 step=state.global_step))
            set_train_mode(model, bn)
            running.clear()
            state.history.append(row)
            if "val_loss" in row:
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
    return collate_items([ds[i] for i in idx], model)


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
        _save_model(run / "model.safetensors", model)
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
    write_report(run, cfg, model, metrics, state.history, errors=errors)
    log(f"test accuracy {metrics.get('accuracy', float('nan')):.4f}, macro-F1 "
        f"{metrics.get('macro_f1', float('nan')):.4f} -> {run}")
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
