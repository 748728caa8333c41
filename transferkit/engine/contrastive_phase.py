"""The encoder phase of `--strategy contrastive`: pairs of training texts, a cosine-similarity loss
on mean-pooled features, length-sorted batches (the pairs, batches and loss are in
transferkit/strategies/contrastive.py, with the rationale). At its end the encoder is interpolated
towards the source (`wise=W`); the head is fitted afterwards by the head phase, on the features of
the encoder as this phase leaves it."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from ..infer.loaders import collate_for, to_device
from ..store import checkpoint as ck
from ..strategies import freeze_stages, param_groups
from ..strategies.contrastive import MAX_PAIRS, PAIRS_PER_TEXT, cosine_pair_loss, make_pairs, pair_batches
from .resume import restore_optimizer_and_rng
from .selection import save_model, stop_or_checkpoint
from .tracking import log_step

START = "contrastive_start.safetensors"  # the source encoder, the other end of the interpolation


def n_pairs(opts: dict, cfg, n_train: int, gradient_steps: int | None = None) -> int:
    """How many pairs the phase trains on: `pairs=N`, else `gradient_steps` (the engine's steps from
    --steps or --epochs) x batch size when either flag is given, else PAIRS_PER_TEXT per text, at
    most MAX_PAIRS."""
    if opts.get("pairs"):
        return int(opts["pairs"])
    if (cfg.steps or cfg.epochs) and gradient_steps:
        return gradient_steps * cfg.batch_size
    return max(cfg.batch_size, min(MAX_PAIRS, PAIRS_PER_TEXT * n_train))


def phase_steps(opts: dict, cfg, n_train: int, gradient_steps: int | None = None) -> int:
    return math.ceil(n_pairs(opts, cfg, n_train, gradient_steps) / cfg.batch_size)


def contrastive_phase(model, cfg, state, phase, n_steps: int, train_items: list, accel, run: Path,
                      resume, log, progress: bool, opts: dict, *, make_optimizer, lr_factor) -> bool:
    """Train the encoder on pairs for `n_steps` steps (or continue a resumed phase). The head does not
    train here. Returns True when stopped (`--stop-after`, a signal) with `last/` written.
    `make_optimizer(cfg, groups)` and `lr_factor(step, total, warmup)` are the engine's (fit.py), so
    --optimizer and the warm-up + cosine schedule mean what they mean for every strategy."""
    if accel.num_processes > 1:
        raise ValueError("strategy 'contrastive' runs in one process; start it without torchrun/accelerate launch")
    class_to_idx = {c: i for i, c in enumerate(model.class_names)}
    labels = [class_to_idx[e.label] for e in train_items]
    texts = [e.x for e in train_items]
    pairs = make_pairs(labels, n_steps * cfg.batch_size, cfg.seed)
    batches = pair_batches(pairs, [len(t) for t in texts], cfg.batch_size, cfg.seed)[:n_steps]
    if state.step == 0:
        n_pos = sum(1 for p in pairs if p[2] == 1.0)
        log(f"contrastive: {len(pairs)} pairs ({n_pos} same-class, {len(pairs) - n_pos} different-class) "
            f"from {len(texts)} texts, {len(batches)} length-sorted batches of {cfg.batch_size}")
    wise = opts.get("wise", 1.0)
    if wise < 1 and state.step == 0 and not (run / START).exists():  # on disk: a resumed phase mixes with it too
        save_model(run / START, model)
    freeze_stages(model, phase.frozen, head=False)  # the head is fitted afterwards, on the new features
    groups = param_groups(model, phase, lr=opts["lr"], weight_decay=cfg.weight_decay, layer_decay=cfg.layer_decay)
    optimizer = make_optimizer(cfg, groups)
    optimizer.zero_grad(set_to_none=True)
    if resume:
        restore_optimizer_and_rng(resume, run, cfg, state, optimizer, log)
    collate = collate_for(model)  # the run's tokenizer and max length; each batch padded to its longest text
    device = accel.device
    model.train()
    bar = None
    if progress and accel.is_main_process:
        from ..progress import step_bar
        bar = step_bar(n_steps, state.step, phase.name)
    running, t0 = state.running_loss, time.time()
    clock = ck.CheckpointClock(cfg.checkpoint_every, cfg.checkpoint_seconds, state.step, t0)
    log_every = max(1, n_steps // 10)
    while state.step < n_steps:
        batch = [pairs[k] for k in batches[state.step]]
        enc, _ = collate([(texts[i], 0) for i, _, _ in batch] + [(texts[j], 0) for _, j, _ in batch])
        target = torch.tensor([t for _, _, t in batch], device=device)
        for g in optimizer.param_groups:
            g["lr"] = g["initial_lr"] * lr_factor(state.step, n_steps, cfg.warmup)
        with accel.autocast():
            z = model.backbone(to_device(enc, device))
            loss = cosine_pair_loss(z[:len(batch)], z[len(batch):], target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        state.global_step += 1
        running.append(float(loss.item()))
        log_step(accel, state.global_step, running[-1], optimizer.param_groups[-1]["lr"])
        if bar is not None:
            bar.update(1)
            bar.set_postfix(pair_loss=f"{np.mean(running[-10:]):.4f}")
        if state.step % log_every == 0 or state.step == n_steps:
            state.history.append({"phase": state.phase, "step": state.global_step, "epoch": state.epoch,
                                  "lr": optimizer.param_groups[-1]["lr"],
                                  "train_loss": round(float(np.mean(running)), 6),
                                  "seconds": round(time.time() - t0, 2)})
            running.clear()
        if stop_or_checkpoint(run, model, optimizer, state, cfg, n_steps, clock, bar, log):
            return True
    if bar is not None:
        bar.close()
    if wise < 1 and (run / START).exists():
        _interpolate_encoder(model, run / START, wise)
        log(f"contrastive: encoder kept = {1 - wise:g} x source + {wise:g} x trained (wise={wise:g})")
    elif wise < 1:  # a run begun by a transferkit that kept no copy (it kept the trained encoder), resumed now
        log(f"contrastive: no copy of the source encoder in {run} ({START}): the trained encoder is kept, "
            f"as when the run began (wise={wise:g} not applied)")
    model.eval()
    return False


@torch.no_grad()
def _interpolate_encoder(model, start: Path, wise: float) -> None:
    """Every floating-point weight of the backbone becomes (1 - wise) x its value in `start` (the
    source, saved when the phase began) + wise x its trained value; the head is fitted afterwards."""
    source = ck.load_tensors(start)
    for name, t in model.backbone.state_dict().items():
        if t.is_floating_point():
            t.copy_(((1 - wise) * source["backbone." + name].to(t.device, torch.float32)
                     + wise * t.float()).to(t.dtype))
