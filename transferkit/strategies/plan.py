"""Strategies as values: which stages train in which phase, at which learning rates.

A strategy string becomes a `Plan` of one or more `Phase`s:

- `linear_probe`   backbone frozen, head trains
- `multi_probe`    backbone frozen, head on pooled features of the last stages too, the stages
                   used chosen on held-out data (see transferkit/models/multi_probe.py)
- `partial:K`      the last K stages + head train
- `full`           everything trains
- `two_phase`      LP-FT (Kumar et al., ICLR 2022): fit the head on the frozen backbone first, then
                   unfreeze everything and train with backbone LR = head LR x `backbone_lr_mult`
- `stages:A-B[,C]` (or `freeze=stages:A-B`): freeze exactly those stage indices
- `lora:r=R[,alpha=A]` low-rank adapters on a text encoder (PEFT): head fit first, then adapters + head
- `contrastive[:pairs=N,lr=X,wise=W]` a text encoder fine-tuned on same/different-class pairs (SetFit-style),
                   then the head fitted on its new features (transferkit/strategies/contrastive.py)
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

# backbone LR / head LR where --backbone-lr-mult is not given, except for an image classifier with more
# than a few labels per class (engine/fit.py: default_backbone_lr_mult)
BACKBONE_LR_MULT = 0.1

# the from-scratch baseline (`compare`'s scratch row, classification and dense): `full` from random
# weights, at a rate suited to them rather than the fine-tuning default 1e-3
SCRATCH_LR = 3e-3

STRATEGIES = ("auto", "linear_probe", "multi_probe", "partial:K", "full", "two_phase", "stages:A-B", "lora:r=R", "prototypes",
              "contrastive[:pairs=N]")


@dataclass
class Phase:
    name: str
    frozen: list[int]          # backbone stage indices frozen in this phase
    fraction: float            # share of the optimisation steps spent in this phase
    backbone_lr_mult: float = 1.0
    head_only: bool = False    # only the head trains (features can be cached)
    head_lr_mult: float = 1.0  # head LR / base LR in this phase


@dataclass
class Plan:
    strategy: str
    phases: list[Phase]
    lora: dict | None = field(default=None)
    contrastive: dict | None = field(default=None)  # options of the pair phase (strategies/contrastive.py)
    multi_stage: bool = False  # the head reads pooled features of several stages


def _parse_indices(text: str, n: int) -> list[int]:
    out: set[int] = set()
    for part in filter(None, text.split(",")):
        if "-" in part:
            a, b = part.split("-", 1)
            out.update(range(int(a), int(b) + 1))
        else:
            out.add(int(part))
    bad = [i for i in out if not 0 <= i < n]
    if bad:
        raise ValueError(f"stage {bad[0]} out of range: this backbone has stages 0-{n - 1}")
    return sorted(out)


def plan_strategy(strategy: str, num_stages: int, *, backbone_lr_mult: float = BACKBONE_LR_MULT,
                  head_fraction: float = 0.3) -> Plan:
    """Turn a strategy string into phases for a backbone with `num_stages` stages."""
    s = strategy.strip()
    everything = list(range(num_stages))
    try:
        if s == "linear_probe":
            return Plan(s, [Phase("linear_probe", everything, 1.0, head_only=True)])
        if s == "prototypes":  # nearest class mean on normalised features (models/prototypes.py)
            return Plan(s, [Phase("prototypes", everything, 1.0, head_only=True)])
        if s == "multi_probe":
            return Plan(s, [Phase("multi_probe", everything, 1.0, head_only=True)], multi_stage=True)
        if s == "auto":
            raise ValueError("strategy 'auto' is resolved into a concrete strategy before training "
                             "(transferkit.choose.auto); the engine plans only concrete ones")
        if s == "full":
            return Plan(s, [Phase("full", [], 1.0, backbone_lr_mult=backbone_lr_mult)])
        if s == "two_phase":
            return Plan(s, [Phase("head", everything, head_fraction, head_only=True),
                            # LP-FT: the fitted head moves as slowly as the backbone, so that it is
                            # not pushed to overconfidence on a few dozen images in a few steps
                            Phase("all", [], 1.0 - head_fraction, backbone_lr_mult=backbone_lr_mult,
                                  head_lr_mult=backbone_lr_mult)])
        if s.startswith("partial:"):
            k = int(s.split(":", 1)[1])
            if not 0 <= k <= num_stages:
                raise ValueError(f"partial:K needs 0 <= K <= {num_stages} (stages of this backbone)")
            return Plan(s, [Phase(s, everything[: num_stages - k], 1.0, backbone_lr_mult=backbone_lr_mult,
                                  head_only=k == 0)])
        if s.startswith(("stages:", "freeze=stages:")):
            frozen = _parse_indices(s.split("stages:", 1)[1], num_stages)
            return Plan(s, [Phase(s, frozen, 1.0, backbone_lr_mult=backbone_lr_mult,
                                  head_only=len(frozen) == num_stages)])
        if s == "contrastive" or s.startswith("contrastive:"):
            from .contrastive import parse_options
            return Plan(s, [Phase("contrastive", [], 1.0, backbone_lr_mult=1.0),
                            Phase("head", everything, 0.0, head_only=True)],
                        contrastive=parse_options(s.partition(":")[2]))
        if s.startswith("lora:"):
            opts = dict(kv.split("=", 1) for kv in s.split(":", 1)[1].split(",") if kv)
            unknown = set(opts) - {"r", "alpha", "dropout"}
            if unknown:
                raise ValueError(f"unknown LoRA option '{sorted(unknown)[0]}' (use r=, alpha=, dropout=)")
            r = int(opts.get("r", 8))
            lora = {"r": r, "alpha": float(opts.get("alpha", 2 * r)), "dropout": float(opts.get("dropout", 0.0))}
            # as in LP-FT: fit the head on the (unchanged: LoRA's B starts at zero) features first,
            # so the adapters do not spend their first steps undoing a random head
            return Plan(s, [Phase("head", everything, head_fraction, head_only=True),
                            Phase(s, everything, 1.0 - head_fraction, backbone_lr_mult=1.0)], lora=lora)
    except ValueError as e:
        if "invalid literal" in str(e):
            raise ValueError(f"cannot read strategy '{strategy}': {e}. Forms: {', '.join(STRATEGIES)}") from e
        raise
    base = s.split(":")[0]
    near = difflib.get_close_matches(base, ["auto", "linear_probe", "multi_probe", "partial", "full", "two_phase",
                                            "stages", "lora", "prototypes", "contrastive"], n=1)
    raise ValueError(f"unknown strategy '{strategy}'" + (f"; did you mean '{near[0]}'?" if near else "")
                     + f" Forms: {', '.join(STRATEGIES)}")


def param_groups(model, phase: Phase, *, lr: float, weight_decay: float,
                 layer_decay: float | None = None, no_weight_decay: set[str] | None = None) -> list[dict]:
    """Optimizer parameter groups for the trainable parameters of `phase`.

    Head LR = `lr * phase.head_lr_mult`; backbone stage i of N gets `lr * phase.backbone_lr_mult * layer_decay**(N-1-i)`
    (layer-wise LR decay: earlier, more general stages move less). Biases, norm weights and every
    name in `no_weight_decay` (parameters a regularizer anchors: L2-SP replaces weight decay) get
    weight decay 0. Groups come out in a fixed order, so an optimizer state saved from them loads
    back onto the same parameters after a resume.
    """
    no_wd = no_weight_decay or set()
    n = len(model.spec.stages)
    named = dict(model.named_parameters())
    groups: list[dict] = []

    def add(label: str, names: list[str], group_lr: float) -> None:
        decay = [x for x in names if named[x].requires_grad and named[x].ndim > 1 and x not in no_wd]
        plain = [x for x in names if named[x].requires_grad and (named[x].ndim <= 1 or x in no_wd)]
        for suffix, members, wd in (("decay", decay, weight_decay), ("no_decay", plain, 0.0)):
            if members:
                groups.append({"name": f"{label}.{suffix}", "params": [named[x] for x in members],
                               "param_names": members, "lr": group_lr, "initial_lr": group_lr,
                               "weight_decay": wd})

    for i, stage in enumerate(model.spec.stages):
        scale = phase.backbone_lr_mult * (layer_decay ** (n - 1 - i) if layer_decay else 1.0)
        add(stage.name, [f"backbone.{p}" for p in stage.params], lr * scale)
    extra = [x for x in named if x.startswith("backbone.") and named[x].requires_grad
             and x[len("backbone."):] not in {p for s in model.spec.stages for p in s.params}]
    if extra:  # adapters (LoRA) added after the stages were read
        add("adapters", extra, lr * phase.backbone_lr_mult)
    add("head", [x for x in named if x.startswith("head.")], lr * phase.head_lr_mult)
    if not groups:
        raise ValueError("nothing to train: every parameter is frozen in this phase")
    return groups
