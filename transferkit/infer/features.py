"""Frozen pooled features of a data set, through the on-disk feature cache when it applies.

`features_by_view` is what every frozen-feature path calls (the head phase of `train`, `compare`,
`rank`, `embed`, `knn`, `cluster`). With a `FeatureCache` and deterministic preprocessing, rows
already on disk are read (memory-mapped) and only the missing items go through the backbone;
otherwise everything goes through the backbone. Either way the result is the same tensors.
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from ..data.feature_cache import FeatureCache, item_key, namespace, preprocess_key
from ..models.backbone import weights_hash
from .loaders import eval_loader, flip_batch, make_dataset, to_device


@torch.no_grad()
def _compute(backbone: nn.Module, loader: DataLoader, device, flip: bool, autocast):
    was = backbone.training
    backbone.eval()
    feats, flipped, labels = [], [], []
    from ..progress import progress
    from .length_sort import by_length, in_dataset_order
    loader, order = by_length(loader)  # texts: batches of similar length, less padding
    for x, y in progress(loader, "features"):
        x = to_device(x, device)
        with autocast() if autocast else nullcontext():
            feats.append(backbone(x).float().cpu())
            if flip and flip_batch(x) is not None:
                flipped.append(backbone(flip_batch(x)).float().cpu())
        labels.append(torch.as_tensor(y))
    backbone.train(was)
    flipped = in_dataset_order(torch.cat(flipped), order) if flipped else None
    return in_dataset_order(torch.cat(feats), order), flipped, in_dataset_order(torch.cat(labels), order)


def _autocast_tag(autocast, device_type: str) -> str:
    """'' when the autocast context does nothing (fp32), else the dtype it computes in."""
    if not autocast:
        return ""
    with autocast():
        try:
            on = torch.is_autocast_enabled(device_type)
            dtype = torch.get_autocast_dtype(device_type) if on else None
        except TypeError:  # older torch: no per-device query
            on = torch.is_autocast_enabled()
            dtype = torch.get_autocast_gpu_dtype() if on else None
    return str(dtype) if on else ""


def _spaces(backbone: nn.Module, loader: DataLoader, device, flip: bool, autocast) -> dict | None:
    """{view: (namespace, parts)} for the cache, or None when these features may not be cached."""
    pre = preprocess_key(loader.dataset, loader.collate_fn)
    if pre is None:
        return None
    dev = torch.device(device).type
    tag = dev + (f"+autocast:{_autocast_tag(autocast, dev)}" if _autocast_tag(autocast, dev) else "")
    module = type(backbone).__name__ + (f"/pool:{backbone.pooling}" if hasattr(backbone, "pooling") else "")
    weights = weights_hash(backbone)
    views = ["plain"] + (["flip"] if flip and pre["kind"] == "image" else [])
    return {v: namespace(weights, module, pre, v, tag) for v in views}


def _dataset_labels(ds) -> torch.Tensor:
    return torch.tensor([ds.class_to_idx.get(ex.label, -1) for ex in ds.items], dtype=torch.long)


def features_by_view(backbone: nn.Module, loader: DataLoader, device, *, flip: bool = False,
                     autocast=None, cache: FeatureCache | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(features [N, D], features of the mirrored images [N, D] or None, labels [N]) of the
    frozen `backbone` in eval mode, in the loader's order. The mirrored view exists only with
    `flip` and image data."""
    spaces = _spaces(backbone, loader, device, flip, autocast) if cache is not None else None
    if spaces is None:
        return _compute(backbone, loader, device, flip, autocast)
    ds = loader.dataset
    modality = next(iter(spaces.values()))[1]["preprocess"]["kind"]
    keys = [item_key(ex, modality) for ex in ds.items]
    found = {v: cache.lookup(ns, keys) for v, (ns, _) in spaces.items()}
    todo = sorted(set().union(*(set(m) for _, m in found.values())))
    out = {}
    if todo:
        sub = DataLoader(Subset(ds, todo), batch_size=loader.batch_size, shuffle=False,
                         collate_fn=loader.collate_fn)
        plain, flipped, _ = _compute(backbone, sub, device, "flip" in spaces, autocast)
        fresh = {"plain": plain.numpy(), "flip": flipped.numpy() if flipped is not None else None}
        pos = {i: j for j, i in enumerate(todo)}
        for v, (ns, parts) in spaces.items():
            arr, missing = found[v]
            rows = fresh[v][[pos[i] for i in missing]] if missing else None
            if missing:
                cache.store(ns, parts, [keys[i] for i in missing], rows)
            if arr is None:
                arr = np.zeros((len(keys), fresh[v].shape[1]), dtype=np.float32)
            if missing:
                arr[missing] = rows
            out[v] = arr
    else:
        out = {v: arr for v, (arr, _) in found.items()}
    flipped = torch.from_numpy(out["flip"]) if "flip" in out else None
    return torch.from_numpy(out["plain"]), flipped, _dataset_labels(ds)


def frozen_features(backbone, items, classes: list[str], *, image_size: int | None = None,
                    batch_size: int = 64, flip: bool = False, device: str | torch.device = "cpu",
                    cache: FeatureCache | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Pooled features of `items` (Examples) from a frozen `Backbone`, eval transforms, no augmentation.

    Returns (features [N, D], labels [N] (-1 for a label not in `classes`), features of the mirrored
    images [N, D] or None). The mirrored pass runs only with `flip` and image data; it is what the
    engine adds to the training features of a head fit when augmentation is on. With a
    `FeatureCache`, rows computed before by any command are read from disk.
    """
    from ..models import attach_head
    model = attach_head(backbone, classes)  # the head is unused: it carries the class order
    ds = make_dataset(model, items, train=False, augment=False, image_size=image_size, seed=0)
    module = backbone.module.to(device)
    feats, flipped, labels = features_by_view(module, eval_loader(model, ds, batch_size), device,
                                              flip=flip, cache=cache)
    return feats, labels, flipped


@torch.no_grad()
def extract_features(backbone: nn.Module, loader: DataLoader, device, *, flip: bool = False,
                     autocast=None, cache=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features of the frozen backbone (eval mode); with `flip`, the mirrored images too
    (appended after all the originals)."""
    views, labels = extract_views(backbone, loader, device, flip=flip, autocast=autocast, cache=cache)
    return views.reshape(-1, views.shape[-1]), labels.repeat(views.shape[0])


@torch.no_grad()
def extract_views(backbone: nn.Module, loader: DataLoader, device, *, flip: bool = False,
                  autocast=None, cache=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features as views `[V, N, D]` (V = 2 with `flip` for images: as is, mirrored) and
    labels `[N]`, the backbone in eval mode. With a `FeatureCache` (transferkit.data.feature_cache)
    rows computed before are read from disk (transferkit.infer.features)."""
    if cache is not None:
        plain, flipped, labels = features_by_view(backbone, loader, device, flip=flip, autocast=autocast,
                                                  cache=cache)
        return torch.stack([plain] + ([flipped] if flipped is not None else [])), labels
    was = backbone.training
    backbone.eval()
    feats: list[list[torch.Tensor]] = [[], []]
    labels = []
    from ..progress import progress as bar
    from .length_sort import by_length, in_dataset_order
    loader, order = by_length(loader)  # texts: batches of similar length, less padding
    for x, y in bar(loader, "features"):
        x = to_device(x, device)
        with autocast() if autocast else nullcontext():
            feats[0].append(backbone(x).float().cpu())
            if flip and flip_batch(x) is not None:
                feats[1].append(backbone(flip_batch(x)).float().cpu())
        labels.append(torch.as_tensor(y))
    backbone.train(was)
    views = [in_dataset_order(torch.cat(f), order) for f in feats if f]
    return torch.stack(views), in_dataset_order(torch.cat(labels), order)
