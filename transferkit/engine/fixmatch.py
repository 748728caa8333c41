"""FixMatch in its simplest form: confident pseudo-labels on weak views teach strong views.

Sohn et al., "FixMatch: Simplifying Semi-Supervised Learning with Consistency and Confidence",
NeurIPS 2020, Eq. (4). Each training step also draws mu * B unlabelled images u_b; the model
predicts on a weakly augmented view alpha(u_b) (flip and a small shifted crop, no gradient),
q_b = p(y | alpha(u_b)), and the loss on the strongly augmented view A(u_b) is

    l_u = 1 / (mu B) * sum_b 1[max(q_b) >= tau] * H(argmax(q_b), p(y | A(u_b)))

added to the supervised loss as l_s + lambda * l_u. The strong view is the engine's `strong`
policy (random resized crop, flip, TrivialAugmentWide; data.images.build_transforms), which stands
in for the paper's RandAugment / CTAugment.

Which images a step draws, and their augmentations, are a pure function of (seed, step,
micro-batch), never of the global RNG or of how far the process got: a resumed run draws the same.
"""

from __future__ import annotations

import zlib

import torch
from torch import nn

from .batches import collate_items


def fixmatch_loss(logits_weak: torch.Tensor, logits_strong: torch.Tensor, threshold: float,
                  weight: float = 1.0) -> tuple[torch.Tensor, int]:
    """lambda * l_u of Eq. (4) and how many pseudo-labels passed the threshold. The mean is over
    all mu * B unlabelled images, kept or not (as in the paper)."""
    probs = logits_weak.detach().float().softmax(-1)
    conf, pseudo = probs.max(-1)
    mask = (conf >= threshold).float()
    ce = nn.functional.cross_entropy(logits_strong.float(), pseudo, reduction="none")
    return weight * (ce * mask).mean(), int(mask.sum().item())


def _weak_transform(pre, image_size: int | None):
    """alpha(.): the eval resize and centre crop, a horizontal flip and a reflect-padded random crop
    (shift of up to 12.5% of the side)."""
    from torchvision.transforms import v2 as T
    size = image_size or pre.size
    interp = {"bicubic": T.InterpolationMode.BICUBIC, "bilinear": T.InterpolationMode.BILINEAR,
              "nearest": T.InterpolationMode.NEAREST}.get(pre.interpolation, T.InterpolationMode.BICUBIC)
    from ..data.images import CapAspect
    return T.Compose([CapAspect(), T.Resize(int(round(size / pre.crop_pct)), interpolation=interp),
                      T.CenterCrop(size),
                      T.RandomHorizontalFlip(), T.RandomCrop(size, padding=max(1, size // 8), padding_mode="reflect"),
                      T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(list(pre.mean), list(pre.std))])


class FixMatch:
    """The unlabelled term of one run: `term(model, step, micro, device)` returns lambda * l_u for
    the `micro`-th micro-batch of optimisation step `step`, and counts kept pseudo-labels in
    `record` (a dict kept in the run state, so the counts survive a resume)."""

    def __init__(self, model, items: list, *, batch_size: int, ratio: int, threshold: float, weight: float,
                 image_size: int | None, seed: int, record: dict):
        from ..data import ImageDataset, build_transforms
        pre = model.spec.preprocess
        gray = pre.channels == 1
        strong_tf, _ = build_transforms(pre, image_size, True, "strong")
        self.weak = ImageDataset(items, {}, _weak_transform(pre, image_size), seed=seed, gray=gray)
        self.strong = ImageDataset(items, {}, strong_tf, seed=seed + 1, gray=gray)
        self.n = ratio * batch_size
        self.threshold, self.weight, self.seed = threshold, weight, seed
        self.model = model
        self.record = record
        record.setdefault("seen", 0)
        record.setdefault("kept", 0)

    def draw(self, step: int, micro: int) -> list[int]:
        """The pool indices of this micro-batch: a function of (seed, step, micro) only."""
        g = torch.Generator().manual_seed(zlib.crc32(f"pool/{self.seed}/{step}/{micro}".encode()))
        size = len(self.weak)
        if self.n <= size:
            return torch.randperm(size, generator=g)[:self.n].tolist()
        return torch.randint(size, (self.n,), generator=g).tolist()

    def __call__(self, model, step: int, micro: int, device) -> torch.Tensor:
        idx = self.draw(step, micro)
        key = f"u{step}.{micro}"  # the augmentation's "epoch": one fresh draw per step
        xw, _ = collate_items([self.weak[(i, key)] for i in idx], self.model)
        xs, _ = collate_items([self.strong[(i, key)] for i in idx], self.model)
        with torch.no_grad():
            logits_weak = model(xw.to(device))
        loss, kept = fixmatch_loss(logits_weak, model(xs.to(device)), self.threshold, self.weight)
        self.record["seen"] += len(idx)
        self.record["kept"] += kept
        return loss
