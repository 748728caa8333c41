"""Text inference in batches of similar length, results handed back in the data set's order.

A batch of texts is padded to its longest member, so a batch that mixes a 10-token and a
250-token text pays for 250 tokens twice. Scoring the texts sorted by length (characters, a close
stand-in for tokens) makes each batch nearly pad-free; the outputs are put back in the original
order, so callers see no difference beyond float rounding. Images are untouched.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Subset

from ..data.text import TextCollator


def _texts(ds) -> list[str] | None:
    if isinstance(ds, Subset):
        inner = _texts(ds.dataset)
        return None if inner is None else [inner[i] for i in ds.indices]
    items = getattr(ds, "items", None)
    if items is None or not all(isinstance(e.x, str) for e in items):
        return None
    return [e.x for e in items]


def by_length(loader: DataLoader) -> tuple[DataLoader, list[int] | None]:
    """(a loader over the same items in batches of similar length, the order it visits them in),
    or (`loader`, None) when it is not a text DataLoader with a fixed batch size (a list of batches,
    as the server passes, is scored as it is)."""
    if not isinstance(getattr(loader, "collate_fn", None), TextCollator) or not loader.batch_size:
        return loader, None
    texts = _texts(loader.dataset)
    if texts is None or len(texts) <= loader.batch_size:
        return loader, None
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    batches = [order[i:i + loader.batch_size] for i in range(0, len(order), loader.batch_size)]
    return DataLoader(loader.dataset, batch_sampler=batches, num_workers=loader.num_workers,
                      collate_fn=loader.collate_fn), order


def in_dataset_order(rows: torch.Tensor, order: list[int] | None) -> torch.Tensor:
    """Rows computed in `order` (from `by_length`), put back in the data set's order."""
    if order is None:
        return rows
    out = torch.empty_like(rows)
    out[torch.tensor(order)] = rows
    return out
