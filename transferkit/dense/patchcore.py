"""PatchCore's parts (Roth et al., CVPR 2022), as dense/anomaly.py uses them: patch features on the
stride-8 grid, the greedy k-center coreset, nearest-patch anomaly maps, and the threshold chosen by
K-fold on the training normals (each fold's normals scored against a bank of the others). Constants
and the method in words: dense/anomaly.py's docstring."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.splits import DataError
from .segment_data import load_image

CORESET_SHARE, CORESET_CAP, PROJECTION = 0.1, 20_000, 128
SIGMA, QUANTILE = 4.0, 0.99


class PatchFeatures(torch.nn.Module):
    """Locally averaged stride-8/16 features on the stride-8 grid: [B, C8 + C16, H/8, W/8]."""

    def __init__(self, extractor: torch.nn.Module):
        super().__init__()
        self.extractor = extractor

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = [F.avg_pool2d(f, 3, stride=1, padding=1) for f in self.extractor(x)]
        grid = maps[0].shape[-2:]
        return torch.cat([maps[0]] + [F.interpolate(m, size=grid, mode="bilinear", align_corners=False)
                                      for m in maps[1:]], 1)


def embed(net: PatchFeatures, paths: list[Path], size: int, mean, std, device, batch: int = 16) -> torch.Tensor:
    out = []
    for i in range(0, len(paths), batch):
        x = torch.stack([load_image(p, size, mean, std) for p in paths[i:i + batch]]).to(device)
        out.append(net(x).float().cpu())
    return torch.cat(out)


def _patches(maps: torch.Tensor) -> torch.Tensor:
    return maps.permute(0, 2, 3, 1).reshape(-1, maps.shape[1])


def coreset(patches: torch.Tensor, n_keep: int, seed: int, device="cpu") -> torch.Tensor:
    """Indices of a greedy k-center coreset (distances on a seeded Gaussian random projection).
    n_keep passes over all patches: on the accelerator when there is one."""
    n = patches.shape[0]
    if n_keep >= n:
        return torch.arange(n)
    g = torch.Generator().manual_seed(seed)
    z = patches
    if patches.shape[1] > PROJECTION:
        z = patches @ torch.randn(patches.shape[1], PROJECTION, generator=g) / PROJECTION ** 0.5
    z = z.to(device)
    picked = [int(torch.randint(n, (1,), generator=g))]
    dist = (z - z[picked[0]]).norm(dim=1)
    for _ in range(n_keep - 1):
        i = int(dist.argmax())
        picked.append(i)
        dist = torch.minimum(dist, (z - z[i]).norm(dim=1))
    return torch.tensor(picked)


def build_bank(maps: torch.Tensor, seed: int, device="cpu") -> torch.Tensor:
    patches = _patches(maps)
    n_keep = max(1, min(CORESET_CAP, int(round(patches.shape[0] * CORESET_SHARE))))
    return patches[coreset(patches, n_keep, seed, device)].contiguous()


def score_maps(maps: torch.Tensor, bank: torch.Tensor, size: int, device="cpu") -> np.ndarray:
    """[N, size, size] anomaly maps: nearest-bank-patch distance, upsampled, Gaussian-smoothed."""
    from scipy.ndimage import gaussian_filter
    n, c, h, w = maps.shape
    bank = bank.to(device)
    q = _patches(maps).to(device)
    d = torch.cat([torch.cdist(q[i:i + 4096], bank).min(1).values for i in range(0, len(q), 4096)])
    grid = d.reshape(n, 1, h, w).cpu()
    up = F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=False)[:, 0].numpy()
    return np.stack([gaussian_filter(m, sigma=SIGMA) for m in up])


def folds(n: int, seed: int) -> list[torch.Tensor]:
    """The K-fold split of the n training normals the threshold is chosen on (K = min(5, n))."""
    k = min(5, n)
    if k < 2:
        raise DataError("anomaly training needs at least 2 normal images in train/good (one to score while "
                        "the others form the bank)")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return [order[f::k] for f in range(k)]


def fold_scores(maps: torch.Tensor, held: torch.Tensor, f: int, size: int, seed: int, device) -> np.ndarray:
    """Image scores of the normals `held` out of fold f, against a bank of the others."""
    n = maps.shape[0]
    keep = torch.tensor([i for i in range(n) if i not in set(held.tolist())])
    return score_maps(maps[held], build_bank(maps[keep], seed + f, device), size, device).max(axis=(1, 2))


def threshold_from(scores: np.ndarray, k: int) -> tuple[float, dict]:
    t = float(np.quantile(scores, QUANTILE))
    return t, {"threshold": t, "threshold_rule": f"{QUANTILE} quantile of the {len(scores)} training normals' "
               f"image scores, each scored against a bank built without its fold ({k}-fold); no test labels used",
               "train_scores_leave_out": [round(float(s), 5) for s in scores]}


def leave_out_threshold(maps: torch.Tensor, size: int, seed: int, device) -> tuple[float, dict]:
    """The QUANTILE of the normals' image scores, each image scored by a bank without its fold."""
    split = folds(maps.shape[0], seed)
    scores = np.zeros(maps.shape[0])
    for f, held in enumerate(split):
        scores[held.numpy()] = fold_scores(maps, held, f, size, seed, device)
    return threshold_from(scores, len(split))
