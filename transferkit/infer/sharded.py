"""Evaluation shared by the processes of a distributed run: each item scored exactly once.

Under `torchrun` / `accelerate launch` every process holds the same weights. Each scores its own
share of the items (rank, rank + world, ...), and the shares are gathered and put back in the
data set's order. Nothing is padded to equal shares, so nothing is counted twice (a
DistributedSampler pads the last batch with repeated items, which a metric over the gathered
predictions would count again). One process: plain `predict_probs`.
"""

from __future__ import annotations

import numpy as np
from torch.utils.data import DataLoader, Subset

from .predict import predict_probs


def predict_probs_sharded(model, loader: DataLoader, device, *, tta: bool = False, autocast=None,
                          accel=None, views: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`predict_probs` over all of `loader.dataset`, the work split over `accel`'s processes."""
    if accel is None or accel.num_processes == 1:
        return predict_probs(model, loader, device, tta=tta, autocast=autocast, views=views)
    import torch.distributed as dist
    rank, world, n = accel.process_index, accel.num_processes, len(loader.dataset)
    own = list(range(rank, n, world))
    if own:
        sub = DataLoader(Subset(loader.dataset, own), batch_size=loader.batch_size, shuffle=False,
                         num_workers=loader.num_workers, collate_fn=loader.collate_fn)
        probs, y = predict_probs(model, sub, device, tta=tta, autocast=autocast, views=views)
    else:  # fewer items than processes
        probs, y = np.zeros((0, model.num_classes), dtype=np.float32), np.zeros(0, dtype=np.int64)
    parts: list = [None] * world
    dist.all_gather_object(parts, (own, probs, y))
    all_probs = np.zeros((n, model.num_classes), dtype=probs.dtype)
    all_y = np.zeros(n, dtype=y.dtype)
    seen = np.zeros(n, dtype=np.int64)
    for idx, p, lab in parts:
        all_probs[idx], all_y[idx] = p, lab
        seen[idx] += 1
    if not (seen == 1).all():  # a bug here would silently bias every metric
        raise RuntimeError(f"sharded evaluation scored items {int((seen != 1).sum())} times != once")
    return all_probs, all_y
