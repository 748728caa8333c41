"""A bridge from an image backbone's pooled features into a text encoder's embedding space (DeViSE).

DeViSE (Frome et al., "DeViSE: A Deep Visual-Semantic Embedding Model", NeurIPS 2013) keeps a
pretrained image model and a pretrained text embedding frozen and learns a linear map M between them,
trained with a hinge rank loss (their Eq. 1): for an image feature v with label text embedding t_y
and the embeddings t_j of the other labels,

    loss(v, y) = sum_{j != y} max(0, margin - t_y . M v + t_j . M v)

with unit-norm text embeddings t and margin 0.1. A label that never had an image is then predicted
by the nearest text embedding: argmax_j t_j . M v (zero-shot).

The default is not this loss but the closed-form ESZSL map of `transferkit.zeroshot.ridge` (the same
linear form; Romera-Paredes & Torr, ICML 2015): from a few hundred pairs the hinge-trained map
memorises them, and class-disjoint cross-validation on the training classes
(`transferkit.zeroshot.select`) chose ESZSL, which fits in a fraction of the time; the README's
zero-shot benchmark holds the numbers. `loss="hinge"` is the DeViSE map.

`loss="softmax"` is the other alternative: cross-entropy over the same scores with the image embedding
L2-normalised and a temperature tau, i.e. softmax(t_j . M v / (|M v| tau)) (the class-text form of
the contrastive loss of CLIP, Radford et al., ICML 2021).

The map is linear on standardised features, M (v - mu) / sigma, so for K class texts T [K, E] it is
exactly a linear classification head W = T M diag(1/sigma), b = -W mu: that is what `head_prior` in
`transferkit.zeroshot.prior` uses as a prior for a few-label head.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ..models.linear_bridge import LinearBridge

BRIDGE_FILE = "bridge.safetensors"
BRIDGE_META = "bridge.json"


def hinge_rank_loss(scores: torch.Tensor, labels: torch.Tensor, margin: float = 0.1) -> torch.Tensor:
    """DeViSE's Eq. 1, averaged over the batch. `scores[i, j] = t_j . M v_i` for every label text j."""
    true = scores.gather(1, labels[:, None])                    # [B, 1]
    viol = (margin - true + scores).clamp_min(0.0)               # [B, K]
    viol = viol.masked_fill(nn.functional.one_hot(labels, scores.shape[1]).bool(), 0.0)
    return viol.sum(1).mean()


def softmax_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, labels: torch.Tensor,
                 temperature: float = 0.05) -> torch.Tensor:
    """Cross-entropy over cosine scores between image embeddings and unit text embeddings."""
    scores = nn.functional.normalize(image_emb, dim=-1) @ text_emb.T / temperature
    return nn.functional.cross_entropy(scores, labels)


@dataclass
class BridgeConfig:
    """How a bridge was trained (written to bridge.json next to the weights)."""

    backbone: str = "bundled:efficientnet_lite0"   # image source whose pooled features are mapped
    text_encoder: str = "bundled:minilm-l6"        # text source whose embedding space is the target
    loss: str = "eszsl"                            # eszsl | ridge (closed form) | hinge (DeViSE Eq. 1) | softmax
    margin: float = 0.1                            # hinge margin (the paper's 0.1)
    temperature: float = 0.05                      # softmax temperature
    steps: int = 300                               # full-batch AdamW steps on cached features
    lr: float = 1e-3
    weight_decay: float = 1e-4
    alpha: float = 100.0                           # ridge/eszsl: image-side penalty (transferkit.zeroshot.ridge)
    beta: float = 1.0                              # eszsl: text-side penalty
    seed: int = 0
    image_size: int | None = None                  # image size the features were extracted at

    def __post_init__(self):  # before any feature is extracted
        from .ridge import check_penalties
        check_penalties(self.alpha, self.beta)


def fit_bridge(feats: torch.Tensor, targets: torch.Tensor, text_emb: torch.Tensor,
               cfg: BridgeConfig) -> tuple[LinearBridge, list[float]]:
    """Train a LinearBridge on frozen features.

    feats [N, D] image features; targets [N] index of each image's text in `text_emb` [T, E]
    (unit-norm rows). Every other text of the set is a negative, as DeViSE's sum over labels j.
    Returns the bridge and the loss every 50 steps.
    """
    if cfg.loss in ("ridge", "eszsl"):
        from .ridge import fit_closed_form
        return fit_closed_form(feats, targets, text_emb, cfg.loss, cfg.alpha, cfg.beta), []
    if cfg.loss not in ("hinge", "softmax"):
        raise ValueError(f"unknown bridge loss '{cfg.loss}'; use hinge, softmax, ridge or eszsl")
    torch.manual_seed(cfg.seed)
    bridge = LinearBridge(feats.shape[1], text_emb.shape[1])
    bridge.mu.copy_(feats.mean(0))
    bridge.sigma.copy_(feats.std(0).clamp_min(1e-6))
    nn.init.normal_(bridge.proj.weight, std=1.0 / feats.shape[1])
    opt = torch.optim.AdamW(bridge.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    curve = []
    for step in range(cfg.steps):
        emb = bridge(feats)
        if cfg.loss == "hinge":
            loss = hinge_rank_loss(emb @ text_emb.T, targets, cfg.margin)
        else:
            loss = softmax_loss(emb, text_emb, targets, cfg.temperature)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == cfg.steps - 1:
            curve.append(round(loss.item(), 6))
    bridge.eval()
    return bridge, curve


def save_bridge(out: str | Path, bridge: LinearBridge, cfg: BridgeConfig, extra: dict | None = None) -> None:
    from ..store import checkpoint as ck
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ck.atomic_save_tensors(out / BRIDGE_FILE, {k: v.contiguous() for k, v in bridge.state_dict().items()})
    ck.atomic_write_json(out / BRIDGE_META, {"config": asdict(cfg),
                                              "feature_dim": bridge.proj.in_features,
                                              "text_dim": bridge.proj.out_features, **(extra or {})})


def load_bridge(path: str | Path) -> tuple[LinearBridge, BridgeConfig]:
    """A bridge directory written by `transferkit bridge` (bridge.safetensors + bridge.json)."""
    from ..store import checkpoint as ck
    d = Path(path)
    if not (d / BRIDGE_FILE).is_file() or not (d / BRIDGE_META).is_file():
        raise FileNotFoundError(f"{d} is not a bridge directory (needs {BRIDGE_FILE} and {BRIDGE_META}; "
                                "train one with 'transferkit bridge PAIRS --out DIR')")
    meta = json.loads((d / BRIDGE_META).read_text())
    cfg = BridgeConfig(**meta["config"])
    bridge = LinearBridge(int(meta["feature_dim"]), int(meta["text_dim"]))
    bridge.load_state_dict(ck.load_tensors(d / BRIDGE_FILE), strict=True)
    bridge.eval()
    return bridge, cfg
