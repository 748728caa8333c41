"""Test-time augmentation with augmented views: the image, its mirror and K lightly augmented copies.

A model trained on a handful of images per class is sensitive to how each test image happens to be
framed. Averaging its class probabilities over a few random crops (the `light` policy of
`transferkit.data.images.build_transforms`: crop 0.6-1 of the image, flip, mild colour jitter) on
top of the image and its mirror (`--tta`) evens that out, at K more forward passes per image.

`--tta-views K` sets K; by default it is `DEFAULT_VIEWS` for image runs trained on few labels with
augmentation — fine-tuned on augmented batches, or a linear probe fitted on augmented views
(`infer/probe_views.py`) — and 0 otherwise (heads that never saw an augmented image).
benchmarks/fewshot.py compares the copies against the same splits scored on image + mirror only;
the README holds its results.

The crops of an image are a pure function of (view, its decoded pixels): `predict a.png`, `predict
a.png b.png` and the same image posted to `serve` get the same probabilities, and reruns, resumed
runs and every process of a distributed run see the same pixels. Validation, cross-validation
folds and the test split are all scored this way (`predict_probs(views=K)`), so the held-out
estimate is that of the test score.
"""

from __future__ import annotations

import zlib

import torch
from torch.utils.data import DataLoader, Dataset, Subset

DEFAULT_VIEWS = 4


def resolve_views(cfg, train_items: list, modality: str, *, sees_augmented: bool = True) -> int:
    """`--tta-views` when given; else DEFAULT_VIEWS for image files with --tta, trained on few
    labels (<= 20 per class) with augmentation, else 0. `sees_augmented=False`: the model never
    learns from augmented images (a head-only strategy whose head gets no augmented views: the
    multi-stage probe, prototypes, a name prior), so augmented copies at test time would be inputs
    unlike any it was fitted on (the multi-stage probe scores lower with them) — and the default
    is 0."""
    from pathlib import Path

    from ..data import few_labels
    from ..data.pictures import IMAGE_EXTS
    from .probe_views import n_probe_views
    files_are_images = all(Path(str(e.x)).suffix.lower() in IMAGE_EXTS for e in train_items)
    if not cfg.tta or modality != "image" or not files_are_images:
        return 0
    if cfg.tta_views is not None:
        return int(cfg.tta_views)
    few = few_labels(train_items) and n_probe_views(cfg, len(train_items), modality) > 0
    return DEFAULT_VIEWS if few and sees_augmented else 0


def views_of(cfg, tta: bool | None = None) -> int:
    """How many augmented views a run's saved config asks for (0 when TTA is off or for runs
    written before the option existed)."""
    on = cfg.tta if tta is None else tta
    return int(getattr(cfg, "tta_views", 0) or 0) if on else 0


def view_tensor(im, j: int, transform) -> torch.Tensor:
    """View j of a decoded image: `transform` (random) seeded by j and the image's pixels."""
    raw = im.tobytes() if hasattr(im, "tobytes") else bytes(memoryview(im.numpy()))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(zlib.crc32(raw, zlib.crc32(f"tta/{j}".encode())))
        return transform(im)


def combine(probs: torch.Tensor, mirrored: bool, view_probs: list[torch.Tensor]) -> torch.Tensor:
    """Average of the views: the image/mirror pair counts as two views, each augmented copy one."""
    if not view_probs:
        return probs
    base = 2 if mirrored else 1
    return (probs * base + sum(view_probs)) / (base + len(view_probs))


class _View(Dataset):
    """View j of an image data set (its items through its `view_transform`)."""

    def __init__(self, base, j: int):
        self.base, self.j = base, j

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        x = view_tensor(self.base._image(i), self.j, self.base.view_transform)
        return x, self.base.class_to_idx.get(self.base.items[i].label, -1)


def view_loaders(loader: DataLoader, k: int) -> list[DataLoader]:
    """K loaders over augmented views of `loader`'s items, in the same order; none when the data
    set has no view transform (texts, arrays, signals)."""
    ds, idx = getattr(loader, "dataset", None), None
    if isinstance(ds, Subset):
        ds, idx = ds.dataset, list(ds.indices)
    if k <= 0 or getattr(ds, "view_transform", None) is None:
        return []
    out = []
    for j in range(k):
        view = _View(ds, j)
        out.append(DataLoader(view if idx is None else Subset(view, idx), batch_size=loader.batch_size,
                              shuffle=False, num_workers=loader.num_workers, collate_fn=loader.collate_fn,
                              generator=torch.Generator().manual_seed(0)))
    return out


@torch.no_grad()
def view_features(model, items: list, cfg, device, k: int) -> torch.Tensor:
    """Pooled frozen features `[k, N, D]` of the k test-time views of `items` (the same pixels
    `predict_probs(views=k)` scores), for heads scored on cached features (`compare`)."""
    from .features import extract_views
    from .loaders import eval_loader, make_dataset
    ds = make_dataset(model, items, train=False, augment=False, image_size=cfg.image_size, seed=cfg.seed)
    loaders = view_loaders(eval_loader(model, ds, cfg.batch_size * 2, cfg.num_workers), k)
    return torch.stack([extract_views(model.backbone, vl, device)[0][0] for vl in loaders])
