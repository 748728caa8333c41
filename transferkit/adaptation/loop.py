"""The `adapt` training loop: every step takes one labelled source batch and one unlabelled target
batch through the same network, adds the method's transfer loss to the source cross-entropy, and
takes one optimizer step. Monitoring rows record source validation accuracy (`val_*`) and, when
labelled target test data is given, target accuracy (`target_*`) — those labels are only read to
report, never to train or to select a checkpoint: the model saved is the last step's.

Batches are a pure function of (seed, step), so `--resume` continues exactly: last/ holds weights,
the method's own weights (DANN's discriminator), optimizer state and every RNG state.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch.nn import functional as F

from ..config import ConfigError, save_config
from ..store import checkpoint as ck
from ..engine.build import build_model
from ..engine.input_kind import settle_inputs
from ..store.environment import write_environment
from ..store.runfolder import check_out_dir, claim_out_dir
from ..infer.loaders import eval_loader, make_dataset
from ..infer.predict import predict_probs
from ..progress import step_bar
from ..strategies import freeze_stages, param_groups, plan_strategy, resolve_bn, set_train_mode
from .methods import build_method
from .config import AdaptConfig, read_adapt_config, save_adapt_config
from .domains import Domains, load_domains


@dataclass
class AdaptState:
    step: int = 0
    history: list[dict] = field(default_factory=list)
    running: dict[str, list[float]] = field(default_factory=dict)  # step values since the last row
    done: bool = False


@dataclass
class AdaptResult:
    run_dir: Path
    metrics: dict | None
    state: AdaptState
    interrupted: bool = False


def lr_factor(step: int, total: int, warmup: float) -> float:
    """Linear warm-up over `warmup` of the steps, then cosine decay to zero (as `train`)."""
    w = int(round(total * warmup))
    if step < w:
        return (step + 1) / w
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - w) / max(1, total - w))))


def batch_indices(n: int, batch: int, seed: int, step: int, stream: int) -> tuple[list[int], int]:
    """Items of `step`'s batch and their epoch: one seeded permutation per epoch and stream
    (0 = source, 1 = target), the ragged tail dropped so both domains always give full batches."""
    per_epoch = max(1, n // batch)
    epoch, k = divmod(step, per_epoch)
    g = torch.Generator().manual_seed(seed * 100_003 + stream * 7_919 + epoch)
    return torch.randperm(n, generator=g)[k * batch:(k + 1) * batch].tolist(), epoch


def adapt(cfg: AdaptConfig, *, resume: bool = False, log=print, progress: bool = True) -> AdaptResult:
    """Adapt according to `cfg` and write the run directory; with `resume`, continue `cfg.out`."""
    from ..store.runfolder import writing_run
    if not resume:
        _check_out(cfg)  # before the lock creates the folder
    with writing_run(cfg.out, fresh=not resume, log=log):  # one writer; a failed start leaves nothing
        return _adapt(cfg, resume=resume, log=log, progress=progress)


def _adapt(cfg: AdaptConfig, *, resume: bool, log, progress: bool) -> AdaptResult:
    run = Path(cfg.out)
    state = AdaptState()
    ckpt = None
    if resume:
        cfg = dataclasses.replace(read_adapt_config(run / "adapt.yaml"), stop_after=cfg.stop_after)
        ckpt = ck.find_checkpoint(run, log)  # last/, verified against its checksums (or the copy before it)
        if ckpt is None:
            raise FileNotFoundError(f"{run} has no checkpoint to resume from (last/state.json)")
        state = AdaptState(**ck.read_json(ckpt / "state.json")["state"])
    else:
        _check_out(cfg)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    accel = _accelerator(cfg)
    domains = load_domains(cfg)
    for s in domains.skipped:
        log(f"skipped: {s}")
    # inputs other than RGB pictures: settled from the source data, as `train` settles them
    model, _ = build_model(settle_inputs(cfg.train_config()), domains.classes)
    method = build_method(cfg, model.spec.feature_dim, len(domains.classes))
    phase = _one_phase(cfg, model)
    freeze_stages(model, phase.frozen)
    model.to(accel.device)
    method.to(accel.device)
    optimizer = _optimizer(cfg, model, method, phase)
    if ckpt is not None:
        _load_last(ckpt, model, method, optimizer)
    else:  # data, model and method are valid: only now touch the disk
        _start_run(run, cfg, model, domains, log)
    data = _datasets(model, cfg, domains)
    log(f"source {len(domains.source_train)} train / {len(domains.source_val)} val, target "
        f"{len(domains.target)} unlabelled" + (f" / {len(domains.target_test)} test" if domains.target_test else "")
        + f", {len(domains.classes)} classes; {cfg.method}, strategy {cfg.strategy}, {cfg.steps} steps")
    if not state.done and _train(model, method, optimizer, cfg, state, data, accel, run, log, progress):
        return AdaptResult(run, None, state, interrupted=True)
    state.done = True
    _save_last(run, model, method, optimizer, state)
    from .finish import finish
    metrics = finish(run, cfg, model, state, domains, data, accel, log)
    return AdaptResult(run, metrics, state)


def _accelerator(cfg: AdaptConfig):
    from accelerate import Accelerator
    precision = cfg.precision
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    accel = Accelerator(mixed_precision={"fp32": "no"}.get(precision, precision),
                        cpu=not torch.cuda.is_available())
    if accel.num_processes > 1:
        raise ConfigError("adapt runs in one process (one CPU or GPU); launch it without torchrun/accelerate")
    return accel


def _one_phase(cfg: AdaptConfig, model):
    mult = cfg.backbone_lr_mult if model.spec.source.pretrained else 1.0
    plan = plan_strategy(cfg.strategy, model.spec.num_stages, backbone_lr_mult=mult)
    if len(plan.phases) != 1 or plan.phases[0].head_only or plan.lora:
        raise ConfigError(f"adapt: --strategy {cfg.strategy} is not one phase that trains features; use "
                          "full, partial:K (K >= 1) or stages:A-B (the transfer loss acts on the features)")
    return plan.phases[0]


def _optimizer(cfg: AdaptConfig, model, method, phase) -> torch.optim.Optimizer:
    groups = param_groups(model, phase, lr=cfg.lr, weight_decay=cfg.weight_decay)
    extra = list(method.named_parameters())
    if extra:  # the discriminator learns at the head's rate
        groups.append({"name": "method", "params": [p for _, p in extra], "param_names": [n for n, _ in extra],
                       "lr": cfg.lr, "initial_lr": cfg.lr, "weight_decay": cfg.weight_decay})
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)
    raise ConfigError(f"adapt: unknown --optimizer '{cfg.optimizer}'; use adamw or sgd")


def _check_out(cfg: AdaptConfig) -> None:
    """`train`'s rules for --out (never into the data, never over a user's files or another run),
    and never inside the unlabelled --target folder either."""
    if (Path(cfg.out) / "adapt.yaml").exists():
        raise FileExistsError(f"{cfg.out} already holds an adapt run; pass --resume to continue it or "
                              "choose another --out")
    check_out_dir(cfg.train_config())
    out, target = Path(cfg.out).expanduser().resolve(), Path(cfg.target).expanduser().resolve()
    if target.is_dir() and (out == target or target in out.parents):
        raise ConfigError(f"--out {cfg.out} is inside the --target folder {cfg.target}: a run must not write "
                          "into the data it reads; choose an --out outside it (e.g. runs/NAME)")


def _start_run(run: Path, cfg: AdaptConfig, model, domains: Domains, log) -> None:
    import csv
    import io
    claim_out_dir(cfg.train_config(), log=log)  # run.json: the folder is a transferkit run from now on
    write_environment(run)
    save_adapt_config(cfg, run / "adapt.yaml")
    save_config(cfg.train_config(), run / "config.yaml")  # what predict/evaluate rebuild the model from
    ck.atomic_write_json(run / "source.json", model.spec.source.to_dict())
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["split", "item", "label"])
    w.writeheader()
    w.writerows(domains.split_record())
    ck.atomic_write_text(run / "splits.csv", buf.getvalue())


def _datasets(model, cfg: AdaptConfig, d: Domains) -> SimpleNamespace:
    def ds(items, train, seed):
        return make_dataset(model, items, train=train, augment=cfg.augment and train,
                            image_size=cfg.image_size, seed=seed)

    def loader(items):
        return eval_loader(model, ds(items, False, cfg.seed), cfg.batch_size * 2) if items else None
    # the target's augmentation stream is seeded apart from the source's
    return SimpleNamespace(source=ds(d.source_train, True, cfg.seed), target=ds(d.target, True, cfg.seed + 1),
                           source_val=loader(d.source_val), target_test=loader(d.target_test))


def _batch(ds, idx: list[int], epoch: int):
    items = [ds[(i, epoch)] for i in idx]
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])


def _step(model, method, optimizer, cfg: AdaptConfig, step: int, data, accel) -> dict[str, float]:
    idx_s, ep_s = batch_indices(len(data.source), cfg.batch_size, cfg.seed, step, 0)
    idx_t, ep_t = batch_indices(len(data.target), cfg.batch_size, cfg.seed, step, 1)
    xs, ys = _batch(data.source, idx_s, ep_s)
    xt, _ = _batch(data.target, idx_t, ep_t)  # target labels are never loaded (all -1)
    n = len(xs)
    x, ys = torch.cat([xs, xt]).to(accel.device), ys.to(accel.device)
    with accel.autocast():
        logits, feats = model(x, return_features=True)
        cls = F.cross_entropy(logits[:n].float(), ys)
        transfer, info = method(logits[:n], feats[:n], logits[n:], feats[n:], progress=step / cfg.steps)
        loss = cls + cfg.trade_off * transfer
    accel.backward(loss)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {"train_loss": loss.item(), "cls_loss": cls.item(), "transfer_loss": float(transfer.detach()), **info}


def _monitor(model, data, device, autocast) -> dict:
    """Source validation and (if given) target test accuracy/NLL of the current weights."""
    row = {}
    for prefix, loader in (("val", data.source_val), ("target", data.target_test)):
        if loader is None:
            continue
        probs, y = predict_probs(model, loader, device, autocast=autocast)
        row[f"{prefix}_accuracy"] = round(float((probs.argmax(1) == y).mean()), 6)
        row[f"{prefix}_loss"] = round(float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None)).mean()), 6)
    return row


def _train(model, method, optimizer, cfg: AdaptConfig, state: AdaptState, data, accel, run: Path,
           log, progress: bool) -> bool:
    """Run (or continue) the steps. Returns True when stopped by `stop_after`."""
    bn = resolve_bn(cfg.bn, len(data.source), model.num_classes)
    eval_every = cfg.eval_every or max(1, cfg.steps // 10)
    bar = step_bar(cfg.steps, state.step, cfg.method) if progress else None
    set_train_mode(model, bn)
    method.train()
    t0 = last_save = time.time()
    while state.step < cfg.steps:
        for g in optimizer.param_groups:
            g["lr"] = g["initial_lr"] * lr_factor(state.step, cfg.steps, cfg.warmup)
        for k, v in _step(model, method, optimizer, cfg, state.step, data, accel).items():
            state.running.setdefault(k, []).append(v)
        state.step += 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(state.running['train_loss'][-10:]):.3f}")
        if state.step % eval_every == 0 or state.step == cfg.steps:
            row = {"step": state.step, "lr": optimizer.param_groups[0]["lr"],
                   **{k: round(float(np.mean(v)), 6) for k, v in state.running.items()},
                   "seconds": round(time.time() - t0, 2)}
            row.update(_monitor(model, data, accel.device, accel.autocast))
            set_train_mode(model, bn)
            state.running = {}
            state.history.append(row)
            if bar is None:
                log("step {step}: loss {train_loss:.3f}".format(**row)
                    + "".join(f", {k} {row[k]:.3f}" for k in ("val_accuracy", "target_accuracy") if k in row))
            if time.time() - last_save > 60:  # a full checkpoint at most once a minute
                _save_last(run, model, method, optimizer, state)
                last_save = time.time()
        if cfg.stop_after and state.step >= cfg.stop_after and state.step < cfg.steps:
            _save_last(run, model, method, optimizer, state)
            if bar is not None:
                bar.close()
            log(f"stopped after {state.step} steps; continue with `transferkit adapt --resume {run}`")
            return True
    if bar is not None:
        bar.close()
    return False




def _save_last(run: Path, model, method, optimizer, state: AdaptState) -> None:
    def build(tmp: Path) -> None:
        rng_t, rng_meta = ck.rng_state()
        opt_t, opt_meta = ck.optimizer_to_flat(optimizer)
        ck.atomic_save_tensors(tmp / "model.safetensors", model.state_dict())
        ck.atomic_save_tensors(tmp / "method.safetensors", method.state_dict())
        ck.atomic_save_tensors(tmp / "optimizer.safetensors", opt_t)
        ck.atomic_save_tensors(tmp / "rng.safetensors", rng_t)
        ck.atomic_write_json(tmp / "state.json", {"state": state.__dict__, "rng": rng_meta, "optimizer": opt_meta,
                                                  "param_groups": [g.get("name") for g in optimizer.param_groups]})
    ck.atomic_replace_dir(build, run / "last")


def _load_last(last: Path, model, method, optimizer) -> None:
    meta = ck.read_json(last / "state.json")
    names = [g.get("name") for g in optimizer.param_groups]
    if meta["param_groups"] != names:
        raise RuntimeError(f"cannot resume from {last}: parameter groups {meta['param_groups']} were saved, "
                           f"this run builds {names}")
    model.load_state_dict(ck.load_tensors(last / "model.safetensors"))
    method.load_state_dict(ck.load_tensors(last / "method.safetensors"))
    ck.optimizer_from_flat(optimizer, ck.load_tensors(last / "optimizer.safetensors"), meta["optimizer"])
    ck.set_rng_state(ck.load_tensors(last / "rng.safetensors"), meta["rng"])
