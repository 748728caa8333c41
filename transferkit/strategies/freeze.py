"""Freezing by stage, the BatchNorm policy, and the trainable/frozen summary.

All of it is written against `TransferModel.spec.stages` (the Backbone contract), so it works for
every architecture without naming one.
"""

from __future__ import annotations

from torch import nn

from ..models.heads import TransferModel

BN_POLICIES = ("frozen", "adapt", "eval")
FEW_SHOT_PER_CLASS = 100


def resolve_bn(policy: str, n_train: int, n_classes: int, pretrained: bool = True) -> str:
    """`auto` is `eval` for a pretrained backbone on few-label training sets (<= 100 examples per
    class on average), else `frozen`. With a few dozen images, batch statistics are noisy and differ
    from the running statistics the head was fitted on in the probe phase, so LP-FT validates
    better with `eval` there.
    A randomly initialised backbone has no running statistics worth keeping (they are the 0/1 of
    initialisation): it always trains its BatchNorm layers in batch-statistics mode, or the
    from-scratch baseline cannot learn at all."""
    if policy != "auto":
        return policy
    if not pretrained:
        return "frozen"
    return "eval" if n_train <= FEW_SHOT_PER_CLASS * max(1, n_classes) else "frozen"


BN_TYPES = (nn.modules.batchnorm._BatchNorm,)


def freeze_stages(model: TransferModel, frozen: list[int] | set[int], *, head: bool = True) -> None:
    """Set `requires_grad` so that backbone stages in `frozen` are fixed and all others train.

    The head always trains (unless `head=False`). Indices refer to `model.spec.stages`.
    """
    stages = model.spec.stages
    bad = [i for i in frozen if not 0 <= i < len(stages)]
    if bad:
        raise ValueError(f"stage index {bad[0]} out of range: this backbone has stages 0-{len(stages) - 1} "
                         f"({', '.join(s.name for s in stages)})")
    params = dict(model.backbone.named_parameters())
    for i, stage in enumerate(stages):
        for name in stage.params:
            params[name].requires_grad_(i not in frozen)
    for p in model.head.parameters():
        p.requires_grad_(head)


def frozen_stages(model: TransferModel) -> list[int]:
    """Indices of stages whose parameters are all frozen (the state `freeze_stages` left)."""
    params = dict(model.backbone.named_parameters())
    return [i for i, s in enumerate(model.spec.stages)
            if s.params and not any(params[n].requires_grad for n in s.params)]


def _fully_frozen(module: nn.Module) -> bool:
    ps = list(module.parameters())
    return bool(ps) and not any(p.requires_grad for p in ps)


def set_train_mode(model: TransferModel, bn_policy: str = "frozen") -> None:
    """`model.train()`, then put frozen parts back in eval mode according to the BatchNorm policy.

    - `frozen` (default): BatchNorm layers whose affine parameters are frozen use their running
      statistics and do not update them; dropout/drop-path inside fully frozen blocks is off, so a
      frozen stage computes exactly what it computed in the source model.
    - `adapt`: as `frozen`, but BatchNorm layers in frozen stages keep updating their running
      statistics to the target data (their weights stay fixed).
    - `eval`: every BatchNorm layer uses running statistics, trainable or not (robust for the tiny
      batches of few-shot fine-tuning).
    """
    if bn_policy not in BN_POLICIES:
        raise ValueError(f"unknown BatchNorm policy '{bn_policy}'; use one of {', '.join(BN_POLICIES)}")
    model.train()
    for module in model.backbone.modules():
        if isinstance(module, BN_TYPES):
            if bn_policy == "eval" or (bn_policy == "frozen" and _fully_frozen(module)):
                module.eval()
        elif any(True for _ in module.children()) and _fully_frozen(module):
            # parameter-free leaves (dropout, drop path) inside a fully frozen block are switched off
            for sub in module.modules():
                if not isinstance(sub, BN_TYPES) and not any(True for _ in sub.parameters(recurse=False)):
                    sub.training = False  # this module only, not its children


def parameter_summary(model: TransferModel) -> list[dict]:
    """One row per stage and one for the head: parameters, trainable, frozen."""
    params = dict(model.backbone.named_parameters())
    rows = []
    for i, stage in enumerate(model.spec.stages):
        total = sum(params[n].numel() for n in stage.params)
        train = sum(params[n].numel() for n in stage.params if params[n].requires_grad)
        rows.append({"index": i, "stage": stage.name, "params": total, "trainable": train,
                     "frozen": total - train})
    in_stages = {n for s in model.spec.stages for n in s.params}
    extra = [p for n, p in params.items() if n not in in_stages]  # adapters (LoRA) added later
    if extra:
        total = sum(p.numel() for p in extra)
        train = sum(p.numel() for p in extra if p.requires_grad)
        rows.append({"index": len(rows), "stage": "adapters", "params": total, "trainable": train,
                     "frozen": total - train})
    total = sum(p.numel() for p in model.head.parameters())
    train = sum(p.numel() for p in model.head.parameters() if p.requires_grad)
    rows.append({"index": len(rows), "stage": "head", "params": total, "trainable": train,
                 "frozen": total - train})
    return rows

