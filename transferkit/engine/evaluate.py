"""Inference pieces shared by training, evaluation and prediction: loaders, probabilities, features,
and fitting a head on frozen features."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..data import ImageDataset, TextCollator, TextDataset, build_transforms
from ..data.arrays import IMAGE_EXTS, array_transforms
from ..data.images import ArrayDataset
from ..data.splits import Example
from ..models.heads import TransferModel
from .tta import combine, view_loaders


def make_dataset(model: TransferModel, items: list[Example], *, train: bool, augment: bool,
                 image_size: int | None, seed: int, policy: str = "light"):
    cls = {c: i for i, c in enumerate(model.class_names)}
    if model.spec.modality == "text":
        return TextDataset(items, cls)
    pre = model.spec.preprocess
    if all(Path(e.x).suffix.lower() in IMAGE_EXTS for e in items):
        train_tf, eval_tf = build_transforms(pre, image_size, augment, policy)
        ds = ImageDataset(items, cls, train_tf if train else eval_tf, seed=seed, gray=pre.channels == 1)
        if not train:  # what test-time augmentation's extra views are drawn with (engine/tta.py)
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


def _flip(x):
    return torch.flip(x, dims=[3]) if isinstance(x, torch.Tensor) and x.ndim == 4 else None


@torch.no_grad()
def predict_probs(model: TransferModel, loader: DataLoader, device, *, tta: bool = False,
                  autocast=None, progress: str | None = None, views: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities and labels for every item (labels -1 where unknown); `progress`
    names a progress bar. `tta`: averaged with the mirrored image; `views` (with `tta`): and with
    that many augmented copies of each image (engine/tta.py)."""
    from ..progress import progress as bar
    from .length_sort import by_length, in_dataset_order
    was = model.training
    model.eval()
    probs, labels = [], []
    mirrored = False
    loader, order = by_length(loader)  # texts: batches of similar length, less padding
    for x, y in bar(loader, progress):
        x = to_device(x, device)
        with autocast() if autocast else _null():
            logits = model(x).float()
            p = logits.softmax(-1)
            if tta and _flip(x) is not None:
                p = (p + model(_flip(x)).float().softmax(-1)) / 2
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
        with autocast() if autocast else _null():
            out.append(model(to_device(x, device)).float().softmax(-1).cpu())
    return torch.cat(out)


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
    rows computed before are read from disk (transferkit.engine.features)."""
    if cache is not None:
        from .features import features_by_view
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
        with autocast() if autocast else _null():
            feats[0].append(backbone(x).float().cpu())
            if flip and _flip(x) is not None:
                feats[1].append(backbone(_flip(x)).float().cpu())
        labels.append(torch.as_tensor(y))
    backbone.train(was)
    views = [in_dataset_order(torch.cat(f), order) for f in feats if f]
    return torch.stack(views), in_dataset_order(torch.cat(labels), order)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def fit_head(head: nn.Module, feats: torch.Tensor, labels: torch.Tensor, *,
             val: tuple[torch.Tensor, torch.Tensor] | None = None,
             cs: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0, 10.0), max_iter: int = 200,
             label_smoothing: float = 0.0, prior: dict | None = None) -> dict:
    """Fit `head` to convergence on frozen features: L2-regularised multinomial logistic regression
    (full-batch L-BFGS), the first phase of LP-FT (Kumar et al., ICLR 2022).

    The objective is sklearn's: mean cross-entropy + ||W||^2 / (2 C n). With validation features
    the inverse strength C is picked from `cs` by validation accuracy (then NLL); without, C = 1.
    The head's initial state is the same for every C, so the result is deterministic.
    With a `prior` head ({"weight", "bias"}, e.g. class names through a joint image-text space), the
    head starts there and the penalty pulls toward it, ||W - W_prior||^2 (transferkit.zeroshot.prior).
    """
    if hasattr(head, "fit_prototypes"):  # nearest class mean: a closed form, nothing to optimise
        return head.fit_prototypes(feats, labels, val=val)
    device = next(head.parameters()).device
    feats, labels = feats.to(device), labels.to(device)
    centre = {}
    if prior is not None:
        from ..zeroshot.prior import fit_prior_scale, set_head_from_prior
        prior = fit_prior_scale({k: v.to(device) for k, v in prior.items()}, feats, labels)
        set_head_from_prior(head, prior)
        centre = {id(head.weight): prior["weight"]}
        cs = (0.003, 0.01, 0.03) + tuple(cs)
    init = {k: v.clone() for k, v in head.state_dict().items()}
    n = len(labels)
    candidates = cs if val is not None and len(val[1]) else (1.0,)
    best = None
    for c in candidates:
        head.load_state_dict(init)
        lam = 1.0 / (2 * c * n)
        opt = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=max_iter, history_size=20,
                                line_search_fn="strong_wolfe", tolerance_grad=1e-6)
        weights = [p for name, p in head.named_parameters() if p.ndim > 1]

        def closure():
            opt.zero_grad()
            loss = nn.functional.cross_entropy(head(feats), labels, label_smoothing=label_smoothing)
            loss = loss + lam * sum(((w - centre[id(w)] if id(w) in centre else w) ** 2).sum() for w in weights)
            loss.backward()
            return loss

        head.train()
        opt.step(closure)
        score = (0.0, 0.0)
        if val is not None and len(val[1]):
            with torch.no_grad():
                head.eval()
                logits = head(val[0].to(device))
                vy = val[1].to(device)
                acc = (logits.argmax(1) == vy).float().mean().item()
                nll = nn.functional.cross_entropy(logits, vy).item()
            score = (acc, -nll)
        if best is None or score > best[0]:
            best = (score, c, {k: v.clone() for k, v in head.state_dict().items()})
    head.load_state_dict(best[2])
    info = {"C": best[1], "val_accuracy": best[0][0] if val is not None else math.nan}
    if prior is not None:
        info["prior_scale"] = prior["scale"]
    return info
