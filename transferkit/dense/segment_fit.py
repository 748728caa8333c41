"""The segmentation training loop: an smp decoder on the source's encoder, cross-entropy + Dice.

Strategies (`--strategy`): `linear_probe` trains the decoder on the frozen encoder; `full` trains all
(the encoder at lr x backbone_lr_mult); `two_phase` (the default, also for `auto`) trains the decoder
for the first half of the steps, then everything at lr x backbone_lr_mult (LP-FT: Kumar et al.,
ICLR 2022, "Fine-tuning can distort pretrained features"). With `@random` the encoder starts from
random weights and trains at the decoder's rate: the from-scratch baseline.

Batches are a function of the global step (seeded epoch permutations and flips), and `last/` holds
the weights, the optimizer state and the RNG state (store/checkpoint.py, engine/resume.py), so a
run stopped at any step and resumed gives the same weights as one that never stopped.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..config import ConfigError, TrainConfig
from ..strategies.plan import BACKBONE_LR_MULT
from ..store import checkpoint as ck
from ..engine import interrupt
from .metrics import confusion, segmentation_metrics
from .segment_data import load_image, load_pair

STRATEGIES = ("linear_probe", "full", "two_phase")


@dataclass
class Phase:
    name: str
    steps: int
    train_encoder: bool


def plan(cfg: TrainConfig, n_train: int) -> list[Phase]:
    strategy = "two_phase" if cfg.strategy == "auto" else cfg.strategy
    if strategy not in STRATEGIES:
        raise ConfigError(f"--strategy {cfg.strategy}: segmentation trains with {', '.join(STRATEGIES)} "
                          "(or auto = two_phase)")
    per_epoch = max(1, math.ceil(n_train / cfg.batch_size))
    steps = cfg.steps or (cfg.epochs * per_epoch if cfg.epochs else min(600, max(30, 15 * per_epoch)))
    if strategy == "linear_probe":
        return [Phase("decoder", steps, False)]
    if strategy == "full":
        return [Phase("full", steps, True)]
    first = max(1, steps // 2)
    return [Phase("decoder", first, False), Phase("full", max(1, steps - first), True)]


def batch_at(step: int, n: int, batch_size: int, seed: int) -> list[tuple[int, bool]]:
    """(item index, flip) of the batch at global `step`: a stream of seeded epoch permutations."""
    out = []
    for q in range(step * batch_size, (step + 1) * batch_size):
        epoch, pos = divmod(q, n)
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        perm = torch.randperm(n, generator=g)
        flips = torch.rand(n, generator=g) < 0.5
        out.append((int(perm[pos]), bool(flips[pos])))
    return out


class L2SPView(torch.nn.Module):
    """The smp model's parameters under the names L2-SP reads (regularizers/l2sp.py): `backbone.*` for
    the source encoder, `head.*` for the new decoder. It shares the tensors; it owns nothing."""

    def __init__(self, model):
        super().__init__()
        self.backbone = model.encoder.model
        self.head = torch.nn.ModuleDict({n: m for n, m in model.named_children() if n != "encoder"})


def l2sp_for(cfg: TrainConfig, model, pretrained: bool):
    """(view, L2SP) for `--reg l2sp:A[,B][,form]`, anchored on the encoder's current (source) weights;
    None without --reg. Other regularizers are not wired into segmentation yet."""
    if not cfg.reg:
        return None
    from ..regularizers.l2sp import L2SP, anchor_from
    from ..regularizers.spec import parse_regularizer
    specs = parse_regularizer(cfg.reg)
    if len(specs) != 1 or specs[0].kind != "l2sp" or specs[0].is_auto:
        raise ConfigError(f"--reg {cfg.reg}: segmentation takes l2sp:ALPHA[,BETA][,coupled|decoupled] only "
                          "(delta, bss and l2sp:auto are not wired into dense tasks yet)")
    if not pretrained:
        raise ConfigError(f"--reg {cfg.reg}: L2-SP pulls towards the source weights, and {cfg.backbone} has "
                          "none (@random); drop --reg or the @random")
    p = specs[0].params
    view = L2SPView(model)
    form = p.get("form") or ("decoupled" if cfg.optimizer == "adamw" else "coupled")
    return view, L2SP(anchor_from(view), p["alpha"], p.get("beta", 0.0), form=form)


def _lr_factor(step: int, steps: int, warmup: float) -> float:
    w = int(warmup * steps)
    if step < w:
        return (step + 1) / w
    return 0.5 * (1 + math.cos(math.pi * (step - w) / max(1, steps - w)))


def _groups(model, phase: Phase, cfg: TrainConfig, pretrained: bool, reg=None) -> list[dict]:
    mult = (BACKBONE_LR_MULT if cfg.backbone_lr_mult is None else cfg.backbone_lr_mult) if pretrained else 1.0
    enc = list(model.encoder.parameters())
    dec = [p for n, p in model.named_parameters() if not n.startswith("encoder.")]
    for p in enc:
        p.requires_grad_(phase.train_encoder)
    if not phase.train_encoder:
        return [{"name": "decoder", "params": dec, "base_lr": cfg.lr}]
    dec_lr = cfg.lr * mult if cfg.strategy in ("auto", "two_phase") else cfg.lr
    # L2-SP replaces weight decay on the anchored encoder (decay towards 0 would fight the pull to w0)
    enc_wd = 0.0 if reg is not None else cfg.weight_decay
    return [{"name": "decoder", "params": dec, "base_lr": dec_lr},
            {"name": "encoder", "params": enc, "base_lr": cfg.lr * mult, "weight_decay": enc_wd}]


def _optimizer(cfg: TrainConfig, groups: list[dict]):
    for g in groups:
        g["lr"] = g["base_lr"]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def set_modes(model, phase: Phase, cfg: TrainConfig, pretrained: bool) -> None:
    """Train mode, except the encoder's BatchNorm keeps the source's statistics (eval mode) while the
    encoder is frozen, or under --bn eval/frozen/auto for a pretrained encoder (few, small batches)."""
    model.train()
    keep_stats = not phase.train_encoder or (cfg.bn != "adapt" and pretrained)
    if keep_stats:
        for m in model.encoder.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy + soft Dice (Milletari et al., 2016; smp's multiclass DiceLoss)."""
    from segmentation_models_pytorch.losses import DiceLoss
    return F.cross_entropy(logits, target) + DiceLoss(mode="multiclass", from_logits=True)(logits, target)


@torch.no_grad()
def confusion_on(model, items, classes, size, mean, std, device, batch_size: int = 16) -> torch.Tensor:
    model.eval()
    cm = torch.zeros(len(classes), len(classes), dtype=torch.long)
    for i in range(0, len(items), batch_size):
        pairs = [load_pair(it, size, mean, std) for it in items[i:i + batch_size]]
        x = torch.stack([p[0] for p in pairs]).to(device)
        y = torch.stack([p[1] for p in pairs])
        cm += confusion(model(x).argmax(1).cpu(), y, len(classes))
    return cm


@torch.no_grad()
def predict_logits(model, path, size: int, mean, std, device, out_size: tuple[int, int]) -> torch.Tensor:
    """[C, H, W] logits at the image's own size (`out_size` = (H, W)); `path`: a file or an RGB PIL image."""
    model.eval()
    x = load_image(path, size, mean, std).unsqueeze(0).to(device)
    return F.interpolate(model(x), size=out_size, mode="bilinear", align_corners=False)[0].cpu()


def save_last(run: Path, model, optimizer, state) -> None:
    ck.write_last(run, model, optimizer, state.__dict__)


def fit_phases(run: Path, cfg: TrainConfig, model, phases: list[Phase], data: dict, state, last, log,
               pretrained: bool, l2sp=None):
    """Run the phases from `state` on; returns True when stopped (signal or --stop-after)."""
    from ..engine.resume import restore_optimizer_and_rng
    device, train_items = data["device"], data["train"]
    size, mean, std = data["size"], data["mean"], data["std"]
    per_epoch = max(1, math.ceil(len(train_items) / cfg.batch_size))
    every = cfg.eval_every or per_epoch
    clock = ck.CheckpointClock(cfg.checkpoint_every, cfg.checkpoint_seconds, state.global_step, time.time())
    while state.phase < len(phases):
        phase = phases[state.phase]
        optimizer = _optimizer(cfg, _groups(model, phase, cfg, pretrained, l2sp))
        if last is not None:
            restore_optimizer_and_rng(last, run, cfg, state, optimizer, log)
            last = None
        log(f"phase {state.phase + 1}/{len(phases)}: {phase.name} ({phase.steps} steps, encoder "
            f"{'trains' if phase.train_encoder else 'frozen'})")
        stop = False
        while state.step < phase.steps:
            set_modes(model, phase, cfg, pretrained)
            for g in optimizer.param_groups:
                g["lr"] = g["base_lr"] * _lr_factor(state.step, phase.steps, cfg.warmup)
            pairs = [load_pair(train_items[i], size, mean, std, flip=f and cfg.augment)
                     for i, f in batch_at(state.global_step, len(train_items), cfg.batch_size, cfg.seed)]
            x = torch.stack([p[0] for p in pairs]).to(device)
            y = torch.stack([p[1] for p in pairs]).to(device)
            loss = segmentation_loss(model(x), y)
            total = loss + l2sp[1](l2sp[0]) if l2sp else loss  # coupled L2-SP: a loss term
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            if l2sp:
                l2sp[1].before_step(l2sp[0], optimizer)  # decoupled L2-SP: the pull beside the update
            optimizer.step()
            state.step += 1
            state.global_step += 1
            state.running_loss.append(loss.item())
            if state.step % every == 0 or state.step == phase.steps:
                _validate(run, model, state, data, log)
            stop = interrupt.requested() or (cfg.stop_after and state.global_step >= cfg.stop_after)
            if stop or clock.due(state.global_step, time.time()):
                save_last(run, model, optimizer if state.step < phase.steps else None, state)
                clock.saved(state.global_step, time.time())
            if stop and state.step < phase.steps:
                return True
        state.phase += 1
        state.step = 0
        save_last(run, model, None, state)
        if stop:
            return True
    return False


def _validate(run, model, state, data: dict, log) -> None:
    """Mean training loss since the last validation; val mIoU; model.safetensors = the best so far."""
    loss = sum(state.running_loss) / max(1, len(state.running_loss))
    state.running_loss = []
    row = {"step": state.global_step, "phase": state.phase, "train_loss": round(loss, 5)}
    if data["val"]:
        cm = confusion_on(model, data["val"], data["classes"], data["size"], data["mean"], data["std"],
                          data["device"])
        miou = segmentation_metrics(cm, data["classes"])["miou"]
        row["val_miou"] = miou
        score = miou if miou is not None else 0.0
        if score > state.best_score:
            state.best_score, state.best_step = score, state.global_step
            ck.atomic_save_tensors(run / "model.safetensors", model.state_dict())
    state.history.append(row)
    log("step {step}: train loss {train_loss:.4f}".format(**row)
        + (f", val mIoU {row['val_miou']:.4f}" if row.get("val_miou") is not None else ""))
