"""Datasets and evaluation loaders for a model's inputs (images, arrays, texts), and moving a batch
to the device."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ..data import ImageDataset, TextCollator, TextDataset, build_transforms
from ..data.arrays import array_transforms
from ..data.pictures import IMAGE_EXTS
from ..data.images import ArrayDataset
from ..data.splits import Example
from ..models.heads import TransferModel


def make_dataset(model: TransferModel, items: list[Example], *, train: bool, augment: bool,
                 image_size: int | None, seed: int, policy: str = "light"):
    cls = {c: i for i, c in enumerate(model.class_names)}
    if model.spec.modality == "text":
        return TextDataset(items, cls)
    pre = model.spec.preprocess
    if all(Path(e.x).suffix.lower() in IMAGE_EXTS for e in items):
        train_tf, eval_tf = build_transforms(pre, image_size, augment, policy)
        ds = ImageDataset(items, cls, train_tf if train else eval_tf, seed=seed, gray=pre.channels == 1)
        if not train:  # what test-time augmentation's extra views are drawn with (infer/tta.py)
            ds.view_transform = build_transforms(pre, image_size, True, "light")[0]
        return ds
    train_tf, eval_tf = array_transforms(pre, image_size, augment)
    return ArrayDataset(items, cls, train_tf if train else eval_tf, pre, seed=seed)


def collate_for(model: TransferModel):
    if model.spec.modality == "text":
        return TextCollator(model.spec.preprocess.tokenizer, model.spec.preprocess.max_length)
    return None


def eval_loader(model: TransferModel, dataset, batch_size: int, num_workers: int = 0) -> DataLoader:
    # its own generator: starting an iterator over a DataLoader draws a seed from the global RNG,
    # which would make dropout in the steps that follow depend on whether features came from the
    # feature cache (no loader) or from the backbone (a loader)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      collate_fn=collate_for(model), generator=torch.Generator().manual_seed(0))


def to_device(x, device):
    if isinstance(x, dict):
        return {k: v.to(device) for k, v in x.items()}
    return x.to(device)


def flip_batch(x):
    """The batch mirrored left-right, or None when it is not a batch of images [B, C, H, W]."""
    return torch.flip(x, dims=[3]) if isinstance(x, torch.Tensor) and x.ndim == 4 else None
