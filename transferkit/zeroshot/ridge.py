"""Closed-form linear bridges: ridge regression onto the text embeddings, and ESZSL.

Both keep the `LinearBridge` form v -> M (v - mu) / sigma (so `as_head` and the saved format are the
bridge's), with z = (v - mu) / sigma the standardised image feature and t_i the unit text embedding
of image i's words.

Ridge (the regression map of zero-shot learning, e.g. Palatucci et al., NeurIPS 2009; Shigeto et
al., ECML 2015): with Z [N, D] and T [N, E] stacked,

    M^T = argmin_W ||Z W - T||^2 + alpha s ||W||^2 = Z^T (Z Z^T + alpha s I)^{-1} T,   s = tr(Z Z^T) / N

(the dual form: N images are fewer than D features here, so the solve is N x N).

ESZSL (Romera-Paredes & Torr, "An embarrassingly simple approach to zero-shot learning", ICML 2015,
their Eq. 3 closed form V = (X X^T + gamma I)^{-1} X Y S^T (S S^T + lambda I)^{-1}): with one-hot Y
and centred features, X Y S^T = Z^T T, so V is the ridge map above followed by the text-side factor
(S^T S + beta K/E I)^{-1} over the K distinct training texts S [K, E]; it discounts the directions
of text space that the training texts fill most. The scores z^T V s_j are those of

    M = (S^T S + beta (K / E) I)^{-1} M_ridge         (method="eszsl"; method="ridge" stops at M_ridge)

alpha and beta are unitless: alpha is the penalty over the mean eigenvalue s of the Gram matrix Z Z^T
(s is the mean |z|^2, about D for standardised features), beta over the mean eigenvalue K/E of S^T S.
Choose them by class-disjoint cross-validation (`transferkit.zeroshot.select`), never on the classes to be predicted.
"""

from __future__ import annotations

import torch

from ..models.linear_bridge import LinearBridge


def check_penalties(alpha: float, beta: float) -> None:
    """alpha and beta are penalties: finite and >= 0 (a negative one would make the solve unstable)."""
    for name, value in (("alpha", alpha), ("beta", beta)):
        if not 0 <= value < float("inf"):  # also NaN
            raise ValueError(f"bridge {name} (--{name}) must be a finite number >= 0, got {value:g}: it is a "
                             "penalty relative to the mean eigenvalue (default alpha 100, beta 1)")


def _standardised(feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = feats.double()
    mu = x.mean(0)
    sigma = x.std(0).clamp_min(1e-6) if len(x) > 1 else torch.ones_like(mu)
    return (x - mu) / sigma, mu, sigma


def ridge_weight(z: torch.Tensor, t: torch.Tensor, alpha: float) -> torch.Tensor:
    """[E, D] map M with M z ~ t: min ||Z M^T - T||^2 + alpha s ||M||^2, s = mean |z|^2, in the dual form."""
    lam = alpha * float((z * z).sum(1).mean())
    gram = z @ z.T
    gram.diagonal().add_(max(lam, 1e-12))
    return torch.linalg.solve(gram, t.double()).T @ z          # [E, N] @ [N, D]


def text_side_factor(text_emb: torch.Tensor, beta: float) -> torch.Tensor:
    """ESZSL's (S^T S + beta (K/E) I)^{-1} over the K distinct training texts S [K, E]."""
    s = text_emb.double()
    k, e = s.shape
    m = s.T @ s
    m.diagonal().add_(beta * k / e)
    return torch.linalg.inv(m)


def fit_closed_form(feats: torch.Tensor, targets: torch.Tensor, text_emb: torch.Tensor, method: str = "ridge",
                    alpha: float = 1.0, beta: float = 1.0) -> LinearBridge:
    """A LinearBridge fitted in closed form. feats [N, D]; targets [N] index into text_emb [T, E]."""
    if method not in ("ridge", "eszsl"):
        raise ValueError(f"unknown closed-form bridge '{method}'; use ridge or eszsl")
    check_penalties(alpha, beta)
    z, mu, sigma = _standardised(feats)
    w = ridge_weight(z, text_emb.double()[targets], alpha)
    if method == "eszsl":
        w = text_side_factor(text_emb[torch.unique(targets)], beta) @ w
    bridge = LinearBridge(feats.shape[1], text_emb.shape[1])
    with torch.no_grad():
        bridge.mu.copy_(mu.float())
        bridge.sigma.copy_(sigma.float())
        bridge.proj.weight.copy_(w.float())
    return bridge.eval()
