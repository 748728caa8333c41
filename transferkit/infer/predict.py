"""Softmax probabilities of a model over a loader, with test-time augmentation (tta.py) when asked."""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..models.heads import TransferModel
from .loaders import flip_batch, to_device
from .tta import combine, view_loaders


@torch.no_grad()
def predict_probs(model: TransferModel, loader: DataLoader, device, *, tta: bool = False,
                  autocast=None, progress: str | None = None, views: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities and labels for every item (labels -1 where unknown); `progress`
    names a progress bar. `tta`: averaged with the mirrored image; `views` (with `tta`): and with
    that many augmented copies of each image (infer/tta.py)."""
    from ..progress import progress as bar
    from .length_sort import by_length, in_dataset_order
    was = model.training
    model.eval()
    probs, labels = [], []
    mirrored = False
    loader, order = by_length(loader)  # texts: batches of similar length, less padding
    for x, y in bar(loader, progress):
        x = to_device(x, device)
        with autocast() if autocast else nullcontext():
            logits = model(x).float()
            p = logits.softmax(-1)
            if tta and flip_batch(x) is not None:
                p = (p + model(flip_batch(x)).float().softmax(-1)) / 2
                mirrored = True
        probs.append(p.cpu())
        labels.append(torch.as_tensor(y))
    probs = in_dataset_order(torch.cat(probs), order)
    extra = view_loaders(loader, views) if tta else []
    probs = combine(probs, mirrored, [_probs_of(model, vl, device, autocast) for vl in extra])
    model.train(was)
    return probs.numpy(), in_dataset_order(torch.cat(labels), order).numpy()


def _probs_of(model, loader: DataLoader, device, autocast) -> torch.Tensor:
    out = []
    for x, _ in loader:
        with autocast() if autocast else nullcontext():
            out.append(model(to_device(x, device)).float().softmax(-1).cpu())
    return torch.cat(out)
