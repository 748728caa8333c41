"""The linear map v -> M (v - mu) / sigma from an image backbone's pooled features into a text
embedding space: what a trained bridge (transferkit.zeroshot) and a joint model's own visual
projection (models/clip.py) both are, so either can score class texts the same way."""

from __future__ import annotations

import torch
from torch import nn


class LinearBridge(nn.Module):
    """v -> M (v - mu) / sigma: image features [B, D] to the text space [B, E]."""

    def __init__(self, feature_dim: int, text_dim: int):
        super().__init__()
        self.proj = nn.Linear(feature_dim, text_dim, bias=False)
        self.register_buffer("mu", torch.zeros(feature_dim))
        self.register_buffer("sigma", torch.ones(feature_dim))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.proj((feats - self.mu) / self.sigma)

    def as_head(self, text_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight [K, D], bias [K]) of the linear head whose logits are t_k . M (v - mu) / sigma."""
        w = (text_emb @ self.proj.weight) / self.sigma
        return w, -(w @ self.mu)
