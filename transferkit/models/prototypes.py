"""Classifiers on frozen, L2-normalised features from a handful of labels: nearest class mean and k-NN.

Nearest class mean (Mensink et al., TPAMI 2013), in the form of SimpleShot (Wang et al., 2019,
arXiv:1911.04623) and of Prototypical Networks (Snell et al., NeurIPS 2017) with cosine distance:
with z = f / ||f||, the prototype of class c is the normalised mean of its examples,

    p_c = m_c / ||m_c||,   m_c = (1 / |S_c|) sum_{i in S_c} z_i,

and an input is scored by   logit_c(f) = s * <z, p_c>   (softmax gives the class probabilities; the
scale s only changes how sharp they are, never the predicted class).

k-NN: the k training examples with the highest cosine similarity vote, each with weight
exp(sim / T) (T = 0.07, as in Wu et al., CVPR 2018); ties in k go to the nearer examples.

`PrototypeHead` is the nearest-class-mean classifier as a linear layer on normalised features
(weight = s * p_c, no bias), so it trains, saves, reloads and predicts as any head of a TransferModel.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def class_prototypes(feats: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """p_c for every class [C, D] (a class without examples gets a zero row)."""
    z = F.normalize(feats.float(), dim=-1)
    sums = torch.zeros(num_classes, z.shape[1], dtype=z.dtype).index_add_(0, labels.long(), z)
    counts = torch.bincount(labels.long(), minlength=num_classes).clamp_min(1).to(z.dtype)
    return F.normalize(sums / counts[:, None], dim=-1)


def nearest_centroid(train: torch.Tensor, labels: torch.Tensor, query: torch.Tensor,
                     num_classes: int) -> torch.Tensor:
    """Cosine similarity of each query to each class prototype [Q, C] (argmax = the class)."""
    return F.normalize(query.float(), dim=-1) @ class_prototypes(train, labels, num_classes).T


def knn_scores(train: torch.Tensor, labels: torch.Tensor, query: torch.Tensor, num_classes: int,
               k: int = 5, temperature: float = 0.07) -> torch.Tensor:
    """Class scores [Q, C] of a weighted k-NN vote on cosine similarity (rows sum to 1)."""
    sims = F.normalize(query.float(), dim=-1) @ F.normalize(train.float(), dim=-1).T
    k = max(1, min(k, train.shape[0]))
    top, idx = sims.topk(k, dim=1)
    weights = torch.exp((top - top[:, :1]) / temperature)  # shifted for stability; same ratios
    scores = torch.zeros(query.shape[0], num_classes, dtype=weights.dtype)
    scores.scatter_add_(1, labels.long()[idx], weights)
    return scores / scores.sum(1, keepdim=True)


class PrototypeHead(nn.Linear):
    """Nearest class mean as a head: logits = F.linear(f / ||f||, W) with W = s * p_c."""

    def __init__(self, feature_dim: int, num_classes: int):
        super().__init__(feature_dim, num_classes, bias=False)
        nn.init.zeros_(self.weight)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(feats, dim=-1), self.weight)

    @torch.no_grad()
    def fit_prototypes(self, feats: torch.Tensor, labels: torch.Tensor, *,
                       val: tuple[torch.Tensor, torch.Tensor] | None = None,
                       scales: tuple[float, ...] = (3.0, 10.0, 30.0, 100.0)) -> dict:
        """Set W = s * p_c; s is picked from `scales` by validation NLL (10 without validation)."""
        protos = class_prototypes(feats.cpu(), labels.cpu(), self.out_features)
        best = (math.inf, 10.0)
        if val is not None and len(val[1]):
            sims = nearest_centroid(feats.cpu(), labels.cpu(), val[0].cpu(), self.out_features)
            for s in scales:
                nll = F.cross_entropy(s * sims, val[1].cpu().long()).item()
                best = min(best, (nll, s))
        self.weight.copy_((best[1] * protos).to(self.weight))
        acc = math.nan
        if val is not None and len(val[1]):
            acc = (self(val[0].to(self.weight)).argmax(1).cpu() == val[1].cpu()).float().mean().item()
        return {"C": None, "scale": best[1], "val_accuracy": acc}
