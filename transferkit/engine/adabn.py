"""AdaBN: BatchNorm statistics re-estimated on the target domain.

Li, Wang, Shi, Liu, Hou, "Revisiting Batch Normalization For Practical Domain Adaptation",
arXiv:1603.04779 (2016), Algorithm 1: for every BatchNorm channel j, the mean and variance of its
input over all target images replace the source statistics,

    mu_j = E_t[x_j],   sigma_j^2 = Var_t[x_j],   y_j = gamma_j (x_j - mu_j) / sigma_j + beta_j,

and nothing else changes (gamma, beta and every weight stay the source's).

Here the target images are the unlabelled pool plus the training images. One pass runs the frozen
backbone with its BatchNorm layers normalising by batch statistics (so deeper layers see inputs
normalised the target's way), while hooks accumulate, per channel, the exact mean and (unbiased)
variance of each layer's input over every image; those become `running_mean` / `running_var`.

AdaBN is not applied blindly: `gate` compares the held-out accuracy of the probe on features with
the source statistics and with the re-estimated ones (the head fit's own validation split or
cross-validation folds) and keeps the re-estimated statistics only when they score higher.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..infer.loaders import to_device


def bn_layers(module: nn.Module) -> list[tuple[str, _BatchNorm]]:
    """The BatchNorm layers of `module` that keep running statistics."""
    return [(n, m) for n, m in module.named_modules()
            if isinstance(m, _BatchNorm) and m.track_running_stats and m.running_mean is not None]


def bn_statistics(module: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every BatchNorm running statistic (to restore with `load_bn_statistics`)."""
    out = {}
    for n, m in bn_layers(module):
        out[f"{n}.running_mean"] = m.running_mean.detach().clone()
        out[f"{n}.running_var"] = m.running_var.detach().clone()
    return out


def load_bn_statistics(module: nn.Module, stats: dict[str, torch.Tensor]) -> None:
    for n, m in bn_layers(module):
        m.running_mean.copy_(stats[f"{n}.running_mean"])
        m.running_var.copy_(stats[f"{n}.running_var"])


@torch.no_grad()
def adabn(module: nn.Module, loader, device, autocast=None) -> int:
    """Replace the running statistics of every BatchNorm layer of `module` by the mean and unbiased
    variance of that layer's input over all batches of `loader` (batches of `(x, label)`). Returns
    the number of layers re-estimated; the module's train/eval modes are restored."""
    layers = bn_layers(module)
    if not layers:
        return 0
    sums: dict[str, list] = {n: [0.0, 0.0, 0] for n, _ in layers}

    def hook(name):
        def record(_m, inputs):
            x = inputs[0].detach().double()
            dims = [d for d in range(x.ndim) if d != 1]
            acc = sums[name]
            acc[0] = acc[0] + x.sum(dims)
            acc[1] = acc[1] + (x * x).sum(dims)
            acc[2] += x.numel() // x.shape[1]
        return record

    modes = {m: m.training for m in module.modules()}
    handles = [m.register_forward_pre_hook(hook(n)) for n, m in layers]
    try:
        module.eval()
        for _, m in layers:  # normalise by the batch (the target's statistics), never update running ones
            m.train()
            m.track_running_stats = False
        for x, _ in loader:
            x = to_device(x, device)
            if autocast is not None:
                with autocast():
                    module(x)
            else:
                module(x)
    finally:
        for h in handles:
            h.remove()
        for _, m in layers:
            m.track_running_stats = True  # bn_layers only lists layers that track them
        for m, was in modes.items():
            m.train(was)
    for n, m in layers:
        s, sq, count = sums[n]
        if count < 2:
            continue
        mean = s / count
        var = (sq - count * mean * mean) / (count - 1)
        m.running_mean.copy_(mean.to(m.running_mean.dtype))
        m.running_var.copy_(var.clamp_min(0).to(m.running_var.dtype))
    return len(layers)


def gate(module: nn.Module, loader, device, before, features, held_out, autocast=None):
    """AdaBN only if it helps held out. `before`: the probe's features with the source statistics;
    `features()` extracts them again from `module` as it is; `held_out(f)` is the probe's held-out
    accuracy on such features (None if it cannot be measured). Returns (the features of the kept statistics, a record with both accuracies);
    ties, and no evidence, keep the source statistics."""
    if not bn_layers(module):
        return before, {"applied": False, "reason": "the backbone has no BatchNorm layers"}
    source = bn_statistics(module)
    acc_source = held_out(before)
    n_layers = adabn(module, loader, device, autocast)
    after = features()
    acc_adabn = held_out(after)
    applied = acc_source is not None and acc_adabn is not None and acc_adabn > acc_source + 1e-9
    record = {"applied": applied, "held_out_source": acc_source, "held_out_adabn": acc_adabn,
              "layers": n_layers, "images": len(loader.dataset) if hasattr(loader, "dataset") else None}
    if acc_source is None or acc_adabn is None:
        record["reason"] = "no held-out labels to compare on: source statistics kept"
    if not applied:
        load_bn_statistics(module, source)
        return before, record
    return after, record
