"""Augmented views of the training images for the head fitted on frozen features.

A probe fitted on one view per image learns the few pictures it was given, pixel for pixel. Giving
it, for every training image, a few randomly cropped, mirrored and colour-jittered copies (the
`light` policy of `transferkit.data.images.build_transforms`) as extra examples of the same label is
the frozen-feature form of data augmentation: the backbone runs a few more forward passes (no
backward), and the head sees what varies within a class (benchmarks/fewshot.py's `linear_probe`
row has them on; the README holds its results).

Views are laid out after the plain (and mirrored) ones: `[plain, mirrored, aug_1 .. aug_k]`. The
head trains on all of them; held-out folds, validation and test are scored on the plain and mirrored
views only, exactly as test-time augmentation scores the test split. The crops of an image are a
pure function of (seed, view, index), so reruns and resumed runs see the same pixels; they are not
stored in the feature cache (the cache holds deterministic preprocessing only).
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

MAX_VIEWS = 8          # augmented views per image at few labels
VIEW_BUDGET = 4000     # at most this many extra forward passes: fewer views per image as data grows
_EPOCH_BASE = 10_000   # view j reads the augmentation stream of "epoch" _EPOCH_BASE + j


def frozen_views(model, cfg, train_loader, val_loader, device, autocast, cache=None):
    """(train views `[V, N, D]`, train labels, (val views, val labels) or None): the pooled features
    the head phase fits and scores on, plain and, for images with augmentation or TTA, mirrored."""
    from .features import extract_views
    image = model.spec.modality == "image"
    views, labels = extract_views(model.backbone, train_loader, device, flip=image and (cfg.augment or cfg.tta),
                                  autocast=autocast, cache=cache)
    val = None
    if len(val_loader.dataset):
        val = extract_views(model.backbone, val_loader, device, flip=image and cfg.tta, autocast=autocast,
                            cache=cache)
    return views, labels, val


def view_counts(cfg, views) -> dict:
    """`fit_views`/`score_views` for headfit: train on every view with --augment, score on every
    view with TTA (before augmented copies are appended)."""
    return {"fit_views": len(views) if cfg.augment else 1, "score_views": len(views) if cfg.tta else 1}


def plain_probe(model) -> bool:
    """A plain linear head on the final features: not the multi-stage probe, prototypes or a name
    prior (the heads that augmented views and the AdaBN gate apply to)."""
    from ..models.multi_probe import MultiStageFeatures
    return not (isinstance(model.backbone, MultiStageFeatures) or getattr(model, "head_prior", None) is not None
                or hasattr(model.head, "fit_prototypes"))


def n_probe_views(cfg, n_train: int, modality: str) -> int:
    """`--probe-views` when given, else MAX_VIEWS bounded by VIEW_BUDGET / n_train (0 for text,
    without --augment, or for large training sets)."""
    if modality != "image" or not cfg.augment:
        return 0
    if cfg.probe_views is not None:
        return int(cfg.probe_views)
    return max(0, min(MAX_VIEWS, VIEW_BUDGET // max(1, n_train)))


class _ViewOf(Dataset):
    """One augmented pass over `ds`: item i drawn with the augmentation of epoch `epoch`."""

    def __init__(self, ds, epoch: int):
        self.ds, self.epoch = ds, epoch

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i):
        return self.ds[(i, self.epoch)]


@torch.no_grad()
def augmented_views(model, items, cfg, device, autocast, k: int) -> torch.Tensor:
    """Pooled frozen features `[k, N, D]` of k augmented copies of every item."""
    from .features import extract_views
    from .loaders import eval_loader, make_dataset
    ds = make_dataset(model, items, train=True, augment=True, image_size=cfg.image_size, seed=cfg.seed,
                      policy="light")
    out = []
    for j in range(k):
        loader = eval_loader(model, _ViewOf(ds, _EPOCH_BASE + j), cfg.batch_size * 2, cfg.num_workers)
        views, _ = extract_views(model.backbone, loader, device, autocast=autocast)
        out.append(views[0])
    return torch.stack(out)
