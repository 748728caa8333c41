"""Class names as a prior for a few-label head, and zero-shot classification.

Through a joint space (a DeViSE bridge or CLIP), the text embedding t_k of class k's description
gives a linear head before any label: logits_k(v) = s * t_k . M (v - mu) / sigma (see
`LinearBridge.as_head`). With no label this head is the zero-shot classifier. With a few labels, the
head is fitted by L2-regularised logistic regression pulled toward that head instead of toward zero:

    min_W,b  mean CE(W v + b, y) + ||W - s W_0||^2 / (2 C n)

the head-level analogue of L2-SP (Li et al., ICML 2018: anchor to the starting point, not the
origin), with the text-derived head as the starting point. The scale s (a temperature) is fitted on
the labelled features first; C is chosen on validation like the plain probe's.
"""

from __future__ import annotations

import torch
from torch import nn

from .space import JointSpace


def head_prior(space: JointSpace, texts: list[str]) -> dict[str, torch.Tensor]:
    """{"weight": [K, D], "bias": [K]} of the unscaled text-derived linear head for `texts`."""
    with torch.no_grad():
        w, b = space.image_map.as_head(space.embed_texts(texts))
    return {"weight": w.float(), "bias": b.float()}


def fit_prior_scale(prior: dict[str, torch.Tensor], feats: torch.Tensor, labels: torch.Tensor) -> dict:
    """The prior scaled by the s in [1e-2, 1e4] (log grid) that minimises the labelled data's NLL."""
    with torch.no_grad():
        base = feats.float() @ prior["weight"].T + prior["bias"]
        grid = torch.logspace(-2, 4, 61)
        nll = torch.stack([nn.functional.cross_entropy(s * base, labels) for s in grid])
        s = float(grid[int(nll.argmin())])
    return {"weight": prior["weight"] * s, "bias": prior["bias"] * s, "scale": s}


def set_head_from_prior(head: nn.Module, prior: dict[str, torch.Tensor]) -> None:
    """Copy a prior into a linear head (the head starts where the prior is)."""
    if not isinstance(head, nn.Linear):
        raise ValueError("a class-name prior needs a linear head: leave --head-hidden unset")
    with torch.no_grad():
        head.weight.copy_(prior["weight"])
        head.bias.copy_(prior["bias"])


def zero_shot_probs(space: JointSpace, feats: torch.Tensor, texts: list[str],
                    temperature: float = 0.01) -> torch.Tensor:
    """[N, K] probabilities from the cosine of image and class-text embeddings (CLIP's 1/100 scale)."""
    return (space.scores(feats, texts) / temperature).softmax(-1)


def attach_name_prior(model, cfg) -> None:
    """For `train --class-text FILE [--bridge DIR]`: start the head at the class-name head and keep it
    as `model.head_prior`, the centre of the head fit's penalty (engine.headfit.fit_head)."""
    from ..config import ConfigError
    from .classtext import read_class_text
    from .space import load_space
    if model.spec.modality != "image":
        raise ConfigError("--class-text maps class words onto image features; this backbone is a text model")
    table = read_class_text(cfg.class_text, model.class_names)
    spec = cfg.bridge or (cfg.backbone if model.spec.joint is not None else None)
    if spec is None:
        raise ConfigError(f"--class-text {cfg.class_text} needs --bridge DIR (trained with 'transferkit bridge') "
                          "or a joint image-text backbone (--backbone clip:NAME_OR_DIR)")
    space = load_space(spec, model.spec)
    if space.backbone != cfg.backbone:
        raise ConfigError(f"--bridge {spec} maps the features of '{space.backbone}', but this run uses "
                          f"'{cfg.backbone}'; train a bridge for this backbone or use --backbone {space.backbone}")
    if space.weights_hash and space.weights_hash != model.spec.source.weights_hash:
        raise ConfigError(f"--bridge {spec} was trained on other weights of '{cfg.backbone}' "
                          f"({space.weights_hash}, now {model.spec.source.weights_hash}); retrain the bridge")
    prior = head_prior(space, [table[c] for c in model.class_names])
    set_head_from_prior(model.head, prior)
    model.head_prior = prior
