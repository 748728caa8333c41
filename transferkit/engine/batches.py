"""Training batches through a torch DataLoader, so `--num-workers` decodes and augments in worker
processes. The batch order stays the engine's own seeded, per-epoch plan (`batches`, lists of
`(index, epoch)`), and the loader starts at any batch of it: a resumed run continues with exactly
the batch it stopped before. Augmentation is a pure function of (seed, epoch, index) (see
data.images.ImageDataset), so the pixels do not depend on which process made them, and the loader
is given its own generator, so creating it never draws from the global RNG that dropout uses.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from ..infer.loaders import collate_for


def collate_items(items: list, model):
    return _Collate(collate_for(model))(items)


class _Collate:
    """The batch maker handed to DataLoader workers: a picklable object holding only the text
    collator (or nothing, for tensors), so workers started by spawn (macOS, Windows) can receive it
    without pickling the model."""

    def __init__(self, collate):
        self.collate = collate

    def __call__(self, items: list):
        if self.collate is not None:
            return self.collate(items)
        return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])


def train_batches(ds, batches: list[list[tuple[int, int]]], start: int, model, *, num_workers: int = 0,
                  seed: int = 0, epoch: int = 0, rank: int = 0, world: int = 1, fetch=None):
    """An iterator over `batches[start:]` (each cut to this process's share), collated. Without
    workers each batch is made in this process when it is asked for, by `fetch(indices)` if given."""
    own = [b[rank::world] if world > 1 else b for b in batches[start:]]
    if num_workers == 0:  # in this process, batch by batch: no worker start-up cost, no second copy of the data
        fetch = fetch or (lambda b: collate_items([ds[i] for i in b], model))
        return (fetch(b) for b in own)
    loader = DataLoader(ds, batch_sampler=own, num_workers=num_workers,
                        collate_fn=_Collate(collate_for(model)),
                        generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return iter(loader)
