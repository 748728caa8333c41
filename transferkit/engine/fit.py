"""The training loop: one readable function on Accelerate (CPU, one GPU, many GPUs or nodes).

A run walks the phases of its strategy plan. Head-only phases fit the head on cached frozen
features (seconds, not a training run); the others run AdamW/SGD with warm-up + cosine by
optimisation step, validate, keep the best checkpoint and can stop early. `last/` is rewritten at
every validation so `--resume` continues exactly where the run stopped.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..config import TrainConfig
from ..data import Task, few_labels
from ..data.checks import report_data_issues
from ..infer.loaders import eval_loader, make_dataset, to_device
from ..infer.probe_views import plain_probe
from ..infer.tta import resolve_views, views_of
from ..regularizers import capture_feature_maps, feature_map_layers
from ..store import checkpoint as ck
from ..store.fingerprint import check_data_unchanged
from ..store.runfolder import check_out_dir
from ..strategies import freeze_stages, param_groups, plan_strategy, resolve_bn, set_train_mode
from ..strategies.plan import BACKBONE_LR_MULT
from . import interrupt
from .batches import collate_items, train_batches
from .build import build_model, build_regularizers_for, load_task_for, recorded_config, verify_anchor
from .head_phase import head_phase
from .resume import restore_optimizer_and_rng, resume_point
from .run_files import finish, start_run_folder, write_splits
from .run_state import RunState
from . import selection
from .selection import apply_wise, save_best_if_better, save_last, stop_or_checkpoint, validate, wise_applies
from .stage_cache import stage_cache_for
from .tracking import accelerator_kwargs, end_tracking, log_step, start_tracking


@dataclass
class FitResult:
    run_dir: Path
    metrics: dict | None
    state: RunState
    interrupted: bool = False
    signal: int | None = None     # SIGINT/SIGTERM that stopped the run (None: --stop-after or done)
    # the model as training left it (cross-validation scores a fold with it instead of building another)
    model: nn.Module | None = dataclasses.field(default=None, repr=False, compare=False)


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
def total_steps(cfg: TrainConfig, n_train: int) -> int:
    """Optimisation steps of the gradient phases: `--steps`, else `--epochs` passes, else DEFAULT_EPOCHS
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
        evaluate_test: bool = True, task: Task | None = None, choice: dict | None = None,
        spare=None) -> FitResult:
    """Train according to `cfg` and write the run directory; with `resume`, continue `cfg.out`.
    `evaluate_test=False` leaves the test split untouched (model selection runs, e.g. l2sp:auto).
    `task`: train on these splits instead of reading `cfg.data` (the run's splits, read once by
    `train`; cross-validation folds). `cfg` is not changed: what the run settles (its inputs, the
    TTA views) goes into a new config, written to config.yaml.
    `choice`: how the strategy was chosen (`--strategy auto`), recorded in metrics.json.
    `spare`: an `engine.build.SpareModel`, used instead of building when it holds this run's model.
    SIGINT/SIGTERM finish the current step, write `last/` and return an interrupted result."""
    single = os.environ.get("WORLD_SIZE", "1") == "1"  # under torchrun, the launcher owns the signals
    from ..store.runfolder import run_lock
    if not resume and os.environ.get("RANK", "0") == "0":
        check_out_dir(cfg)  # before the lock creates the folder
    lock = run_lock(cfg.out) if cfg.out and (not resume or Path(cfg.out).is_dir()) else nullcontext()
    with lock, interrupt.stop_on_signals(enabled=single):
        return _fit(cfg, resume=resume, log=log, progress=progress, evaluate_test=evaluate_test,
                    task=task, choice=choice, spare=spare)


MANY_LABEL_BACKBONE_LR_MULT = 1.0  # image classification with more than a few labels per class


def default_backbone_lr_mult(cfg: TrainConfig, task: Task) -> float:
    """`backbone_lr_mult` left unset: the head's LR for the backbone (1.0) when an image classifier
    has more than a few labels per class, 0.1 otherwise. At 100 labels per class on silhouettes far
    from ImageNet, 0.1 moved the backbone by 0.04% of its norm; 1.0 raised the fine-tuned endpoint
    by 1.3 and 2.3 points on development seeds 0-1 (benchmarks/explore_backbone_lr.py), and on
    report seeds the table with it is benchmarks/results/fewshot_100shot.md (before:
    fewshot_100shot_bb01.md). At 5-20 labels 0.1 was chosen on development seeds (features worth
    keeping, too few labels to move them well); text encoders (transformers) want a smaller LR than
    a head does."""
    if cfg.backbone_lr_mult is not None:
        return cfg.backbone_lr_mult
    if task.modality == "image" and not few_labels(task.train):
        return MANY_LABEL_BACKBONE_LR_MULT
    return BACKBONE_LR_MULT


PROBE_STRATEGIES = ("linear_probe", "two_phase", "auto")  # a linear head fitted on frozen features


def default_feature_norm(cfg: TrainConfig, task: Task) -> str:
    """`feature_norm` left unset: "on" (the head reads features rescaled to one length,
    models/heads.py NormLinear) where a linear probe is fitted on frozen features of a pretrained
    image source at <= 20 labels per class, else "off". On development seeds (the probe fitted to
    convergence on raw and on rescaled features, paired difference from the strong probe in points,
    benchmarks/results/feature_norm_dev.md): 1 label per class clip art -1.4 -> +1.6, digits
    -0.2 -> +0.2; 5 labels +0.5 -> +0.9 and -0.0 -> -0.0; 20 labels -0.1 -> +0.2 and +0.2 -> +0.2.
    Above 20 labels per class nothing was measured, so nothing changed there; text and dense heads
    were not measured either."""
    if cfg.feature_norm is not None:
        return cfg.feature_norm
    from ..models import parse_source
    pretrained = parse_source(cfg.backbone)[2]
    linear_probe = (cfg.strategy.strip() in PROBE_STRATEGIES and not cfg.head_hidden and not cfg.class_text
                    and cfg.task in ("auto", "classify"))
    return "on" if (linear_probe and pretrained and task.modality == "image" and few_labels(task.train)) else "off"


def backbone_lr_mult(cfg: TrainConfig, model) -> float:
    # a random-init backbone has nothing to preserve: it trains at the head's learning rate. Otherwise
    # the value _fit settled (default_backbone_lr_mult) or config.yaml recorded: never unset here
    return cfg.backbone_lr_mult if model.spec.source.pretrained else 1.0


def _fit(cfg: TrainConfig, *, resume: bool, log, progress: bool, evaluate_test: bool,
         task: Task | None, choice: dict | None, spare=None) -> FitResult:
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
            write_splits(run, task)  # --resume-inexact on changed data: splits.csv says what it trains on
    else:  # the caller's task stays as read: this run's warnings go into its own list
        task = dataclasses.replace(task, warnings=list(task.warnings))
    if not resume:  # a config its caller did not settle (fit called directly): settled from this task
        from .input_kind import settle_inputs
        cfg = settle_inputs(cfg, task)
        # recorded in config.yaml as a number: a resumed run keeps it whatever the default becomes
        cfg = dataclasses.replace(cfg, backbone_lr_mult=default_backbone_lr_mult(cfg, task),
                                  feature_norm=default_feature_norm(cfg, task))
    report_data_issues(task, cfg, log)
    model, anchor = (spare and spare.take(cfg, task.classes)) or build_model(cfg, task.classes)
    cfg = recorded_config(cfg, model)
    if resume and anchor is not None:
        anchor = verify_anchor(run, cfg, model, anchor)
    model.to(device)
    plan = plan_strategy(cfg.strategy, model.spec.num_stages, backbone_lr_mult=backbone_lr_mult(cfg, model))
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
        start_run_folder(run, cfg, task, model, anchor, log)
    accel.wait_for_everyone()
    start_tracking(accel, cfg)
    n_gradient = total_steps(cfg, len(task.train))
    gradient_phases = [p for p in plan.phases if not p.head_only]
    share = sum(p.fraction for p in gradient_phases) or 1.0
    phase_steps = [0 if p.head_only else max(1, round(n_gradient * p.fraction / share)) for p in plan.phases]
    if plan.contrastive is not None:  # its pair budget sets its steps (strategies/contrastive.py)
        from .contrastive_phase import contrastive_phase, phase_steps as pair_steps
        phase_steps[0] = pair_steps(plan.contrastive, cfg, len(task.train), n_gradient)
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
        save_last(run, model, None, state)
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
            head_phase(model, cfg, state, plain_train, val_loader, device, autocast, log,
                        calibrated=then_trains, accel=accel, pool=pool_loader)
            if then_trains and wise_applies(plan) and accel.is_main_process:
                selection.save_model(run / "lp_model.safetensors", model)  # WiSE-FT's other end
            if has_val:
                save_best_if_better(run, model, state, state.history[-1], cfg.metric,
                                     write=accel.is_main_process)
            if interrupt.requested():
                state.phase += 1
                save_last(run, model, None, state)
                end_tracking(accel, None, state.global_step)
                return _stopped(run, state)
            resume = None  # the next phase starts from this process's state, not the checkpoint
        else:
            if plan.contrastive is not None:
                interrupted = contrastive_phase(model, cfg, state, phase, phase_steps[state.phase], task.train,
                                                accel, run, resume, log, progress, plan.contrastive,
                                                make_optimizer=_make_optimizer, lr_factor=lr_factor)
            else:
                interrupted = _gradient_phase(model, cfg, state, phase, phase_steps[state.phase], train_ds,
                                     val_loader, accel, regs, run, resume, log, progress, fixmatch=fixmatch)
            resume = None
            if interrupted:
                end_tracking(accel, None, state.global_step)
                return FitResult(run, None, state, interrupted=True, signal=interrupt.requested())
        state.phase_seconds[phase.name] = round(state.phase_seconds.get(phase.name, 0.0)
                                                + time.time() - t_phase, 2)
        if not has_val and accel.is_main_process:
            selection.save_model(run / "model.safetensors", model)
        state.phase += 1
        state.step = 0
        if accel.is_main_process:
            save_last(run, model, None, state)
    if not state.done and wise_applies(plan) and (run / "lp_model.safetensors").exists():
        accel.wait_for_everyone()
        apply_wise(run, cfg, model, state, val_loader, device, autocast, log,
                    write=accel.is_main_process)
    state.done = True
    if accel.is_main_process:
        save_last(run, model, None, state)
    accel.wait_for_everyone()  # the best weights are on disk before any process reads them back
    metrics = finish(run, cfg, model, task, state, device, autocast, log, evaluate_test,
                      write=accel.is_main_process, accel=accel)
    end_tracking(accel, metrics, state.global_step)
    return FitResult(run, metrics, state, model=model)


def _stopped(run: Path, state: RunState) -> FitResult:
    return FitResult(run, None, state, interrupted=True, signal=interrupt.requested())


def _make_optimizer(cfg: TrainConfig, groups: list[dict]):
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)
    raise ValueError(f"unknown optimizer '{cfg.optimizer}'; use adamw or sgd")


def _gradient_phase(model, cfg: TrainConfig, state: RunState, phase, n_steps: int, train_ds, val_loader,
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
                    if fixmatch is not None:  # pseudo-labels on the unlabelled pool (engine/fixmatch.py)
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
        state.record_loss(loss_val)
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
            row.update(validate(model, val_loader, device, accel.autocast, tta=cfg.tta, views=views_of(cfg), accel=accel,
                                 step=state.global_step))
            set_train_mode(model, bn)
            running.clear()
            state.history.append(row)
            if "val_loss" in row:
                save_best_if_better(run, model, state, row, cfg.metric, write=accel.is_main_process)
            stop_early = cfg.patience is not None and state.evals_since_best >= cfg.patience
            if stop_early:
                log(f"early stop at step {state.global_step}: no improvement in {cfg.patience} validations")
                state.step = n_steps
        # last/ on a stop, and by steps and by time (--checkpoint-every, --checkpoint-seconds)
        if stop_or_checkpoint(run, model, optimizer, state, cfg, n_steps, clock, bar, log,
                              write=accel.is_main_process):
            return True
    if bar is not None:
        bar.close()
    return False


def _collate(ds, idx, model):
    return collate_items([ds[i] for i in idx], model)


def _progress(total: int, start: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from ..progress import step_bar
    return step_bar(total, start, desc)

