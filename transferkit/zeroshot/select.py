"""Choosing a bridge's settings by cross-validation over class-disjoint folds of its training pairs.

A zero-shot bridge is judged on classes it never saw, so its settings (the ridge penalty, the
number of hinge steps, ...) are chosen the same way, inside the training data only: the training
classes (`groups`, one per image) are split into folds of whole classes; each candidate is fitted on
the images of the other folds (with only their texts) and scored on the held-in fold's images by
nearest text among that fold's classes, as zero-shot is scored later. This is the protocol of the
zero-shot literature for hyper-parameters (validation classes disjoint from the training and test
classes; Xian et al., "Zero-shot learning - the good, the bad and the ugly", CVPR 2017).
Classes to be predicted later must not be in `groups`: the caller passes only training pairs.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace

import torch

from .bridge import BridgeConfig, fit_bridge


def class_folds(groups: list[str], n_folds: int, seed: int = 0) -> list[list[str]]:
    """The distinct groups shuffled by `seed` and dealt into `n_folds` folds of whole groups."""
    names = sorted(set(groups))
    if n_folds < 2 or len(names) < 2 * n_folds:
        raise ValueError(f"class-disjoint cross-validation needs at least 2 classes per fold: {len(names)} "
                         f"training classes for {n_folds} folds")
    random.Random(seed).shuffle(names)
    return [sorted(names[f::n_folds]) for f in range(n_folds)]


Extra = tuple[torch.Tensor, torch.Tensor, Callable[[list[str]], torch.Tensor]]


def fold_accuracy(cfg: BridgeConfig, feats: torch.Tensor, targets: torch.Tensor, text_emb: torch.Tensor,
                  groups: list[str], fold: list[str], group_emb: dict[str, torch.Tensor] | None = None,
                  extra: Extra | None = None) -> float:
    """Fit `cfg` on the images outside `fold` (their texts only) and score zero-shot on the fold's images:
    nearest among the fold's group texts (`group_emb`, e.g. class descriptions) if given, else among the
    fold images' own texts. `extra` = (feats, targets, allowed): pairs of no group that also train, those
    where allowed(fold) [bool mask] is true (e.g. whose words name none of the fold's classes)."""
    held = torch.tensor([g in fold for g in groups])
    tr_f, tr_t = feats[~held], targets[~held]
    if extra is not None:
        ok = extra[2](fold)
        tr_f, tr_t = torch.cat([tr_f, extra[0][ok]]), torch.cat([tr_t, extra[1][ok]])
    used = torch.unique(tr_t)                                 # only the training side's texts
    remap = torch.full((len(text_emb),), -1, dtype=torch.long)
    remap[used] = torch.arange(len(used))
    bridge, _ = fit_bridge(tr_f, remap[tr_t], text_emb[used], cfg)
    if group_emb is not None:
        names = sorted(fold)
        cand = torch.stack([group_emb[g] for g in names])
        truth = torch.tensor([names.index(g) for g, h in zip(groups, held.tolist()) if h])
    else:
        va_t = torch.unique(targets[held])
        cand = text_emb[va_t]
        truth = torch.searchsorted(va_t, targets[held])
    with torch.no_grad():
        pred = (bridge(feats[held]) @ cand.T).argmax(1)
    return float((pred == truth).float().mean())


def select_bridge(candidates: list[BridgeConfig], feats: torch.Tensor, targets: torch.Tensor,
                  text_emb: torch.Tensor, groups: list[str], *, n_folds: int = 5, repeats: int = 1, seed: int = 0,
                  group_emb: dict[str, torch.Tensor] | None = None,
                  extra: Extra | None = None) -> tuple[BridgeConfig, list[dict]]:
    """The candidate with the best mean fold accuracy (the first on ties), and every candidate's scores.
    `repeats` deals the classes into folds that many times (seeds seed, seed+1, ...), for a steadier mean."""
    if not candidates:
        raise ValueError("select_bridge needs at least one candidate setting")
    folds = [f for r in range(repeats) for f in class_folds(groups, n_folds, seed + r)]
    table = []
    for cfg in candidates:
        accs = [fold_accuracy(cfg, feats, targets, text_emb, groups, f, group_emb, extra) for f in folds]
        table.append({"config": cfg, "folds": accs, "mean": sum(accs) / len(accs)})
    best = max(range(len(table)), key=lambda i: (table[i]["mean"], -i))
    return replace(candidates[best]), table
