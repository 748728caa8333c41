"""DELTA in a run: the layers it compares, the frozen source copy, and its channel weights.

The channel weights follow the paper (Li et al., ICLR 2019): a classifier is fitted on the frozen
source features of target training items (the LP-FT head fit, `fit_head`), and each channel of each
compared layer is weighted by how much zeroing it raises that classifier's loss
(`regularizers.delta_channel_weights`). Few items are enough to rank channels, and the cost is one
pass per channel over them, so at most `CHANNEL_WEIGHT_ITEMS` items are used, spread over the classes.
"""

from __future__ import annotations

import copy
import time

import torch
from torch import nn

from ..models.backbone import stage_output
from .headfit import fit_head
from ..infer.features import extract_features
from ..infer.loaders import eval_loader, make_dataset, to_device

CHANNEL_WEIGHT_ITEMS = 64


def delta_layers(model) -> list[str]:
    """The outputs of the top half of the backbone's stages (the paper compares the top blocks)."""
    stages = model.spec.stages
    return [stage_output(model.backbone, s) for s in stages[len(stages) // 2:] if s.modules]


def _spread_over_classes(items: list, n: int, seed: int) -> list:
    """Up to `n` items, taken round-robin over the classes in a seeded order."""
    g = torch.Generator().manual_seed(seed)
    by_label: dict[str, list] = {}
    for i in torch.randperm(len(items), generator=g).tolist():
        by_label.setdefault(items[i].label, []).append(items[i])
    out, queues = [], [by_label[k] for k in sorted(by_label)]
    while len(out) < n and any(queues):
        for q in queues:
            if q and len(out) < n:
                out.append(q.pop())
    return out


def channel_weights_for(cfg, model, source: nn.Module, layers: list[str], items: list, device,
                        log=print) -> dict[str, torch.Tensor]:
    """DELTA channel weights from a head fitted on `source`'s frozen features of training items."""
    from ..regularizers import delta_channel_weights
    t0 = time.time()
    items = _spread_over_classes(items, CHANNEL_WEIGHT_ITEMS, cfg.seed)
    ds = make_dataset(model, items, train=False, augment=False, image_size=cfg.image_size, seed=cfg.seed)
    loader = eval_loader(model, ds, cfg.batch_size, 0)
    feats, labels = extract_features(source, loader, device)
    head = copy.deepcopy(model.head).to(device)  # same architecture, fitted afresh on source features
    fit_head(head, feats, labels)
    batches = [(to_device(x, device), torch.as_tensor(y).to(device)) for x, y in loader]
    weights = delta_channel_weights(source, head, batches, layers, nn.CrossEntropyLoss())
    channels = sum(w.numel() for w in weights.values())
    log(f"DELTA channel weights: {channels} channels in {len(layers)} layers from {len(items)} items "
        f"({time.time() - t0:.1f}s)")
    return weights


def delta_setup(cfg, model, train_items: list | None, device, log=print):
    """`(source copy, layer names, channel weights or None)` for a run's DELTA regularizer."""
    source = copy.deepcopy(model.backbone).to(device).eval().requires_grad_(False)
    layers = delta_layers(model)
    weights = channel_weights_for(cfg, model, source, layers, train_items, device, log) if train_items else None
    return source, layers, weights
