"""L2-SP: weight decay towards the source weights instead of towards zero.

Li, Grandvalet & Davoine, "Explicit inductive bias for transfer learning with convolutional
networks", ICML 2018:

    Omega(w) = alpha / 2 * || w_S - w_S^0 ||_2^2  +  beta / 2 * || w_Sbar ||_2^2

``w_S`` are the parameters shared with the source model (here: the ``backbone.*`` parameters named in
the anchor), ``w_S^0`` their pretrained values, and ``w_Sbar`` the parameters of the new head
(``head.*``). ``|| . ||_2^2`` is the squared Euclidean norm of all those parameters stacked into one
vector, i.e. the sum over every element of every tensor of its square (no mean anywhere).

The term replaces the optimizer's weight decay on the parameters it covers: decaying a backbone weight
towards zero and pulling it towards its source value at the same time would fight each other, so the
parameters it names in ``no_weight_decay`` must go into a parameter group with ``weight_decay=0``.
"""

from __future__ import annotations

import torch
from torch import nn

_BACKBONE = "backbone."
_HEAD = "head."


def anchor_from(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached copies of the model's current ``backbone.*`` parameters, keyed by full name.

    Take it right after loading the pretrained backbone, before any training step.
    """
    return {
        name: p.detach().clone()
        for name, p in model.named_parameters()
        if name.startswith(_BACKBONE)
    }


def _squared_norm(d: torch.Tensor) -> torch.Tensor:
    # Squares of small differences underflow / lose precision in half precision: sum in fp32.
    if d.dtype in (torch.float16, torch.bfloat16):
        d = d.float()
    return torch.sum(d * d)


class L2SP:
    """``alpha/2 * sum (w - w0)^2`` over trainable anchored backbone weights ``+ beta/2 * sum h^2``
    over trainable head weights (Li et al., ICML 2018).

    Args:
        anchor: ``{full parameter name: source value}``, names starting with ``backbone.``
            (see :func:`anchor_from`). Backbone parameters absent from the anchor are not regularized.
        alpha: strength of the pull towards the source weights.
        beta: strength of the plain L2 penalty on the head (0 disables it and leaves the head to the
            optimizer's ordinary weight decay).

    Parameters with ``requires_grad=False`` are skipped before any work is done: a frozen stage
    contributes nothing to the term and costs nothing. Each anchor tensor is moved to its parameter's
    device and dtype once, on first use, and cached.
    """

    def __init__(self, anchor: dict[str, torch.Tensor], alpha: float, beta: float = 0.0):
        if alpha < 0 or beta < 0:
            raise ValueError(f"L2SP needs alpha >= 0 and beta >= 0, got alpha={alpha}, beta={beta}")
        foreign = sorted(k for k in anchor if not k.startswith(_BACKBONE))
        if foreign:
            raise ValueError(
                "L2SP anchor keys must be full backbone parameter names ('backbone.…'); "
                f"got {foreign[:5]}{' …' if len(foreign) > 5 else ''}"
            )
        self.anchor = {k: v.detach() for k, v in anchor.items()}
        self.alpha = float(alpha)
        self.beta = float(beta)
        self._cache: dict[str, torch.Tensor] = {}
        self._checked_model: int | None = None

    def _check_names(self, model: nn.Module) -> None:
        """Every anchor key must be a parameter of the model, with the same shape (once per model)."""
        if self._checked_model == id(model):
            return
        params = dict(model.named_parameters())
        missing = sorted(k for k in self.anchor if k not in params)
        if missing:
            raise ValueError(
                f"L2SP anchor names {len(missing)} parameter(s) the model does not have, "
                f"e.g. {missing[:5]}; was the anchor taken from a different model?"
            )
        for name, ref in self.anchor.items():
            if params[name].shape != ref.shape:
                raise ValueError(
                    f"L2SP anchor shape mismatch for '{name}': anchor {tuple(ref.shape)}, "
                    f"parameter {tuple(params[name].shape)}"
                )
        self._checked_model = id(model)

    def _anchor_like(self, name: str, p: torch.Tensor) -> torch.Tensor:
        ref = self._cache.get(name)
        if ref is None or ref.device != p.device or ref.dtype != p.dtype:
            ref = self.anchor[name].to(device=p.device, dtype=p.dtype)
            self._cache[name] = ref
        return ref

    def __call__(self, model, features=None, feature_maps=None, inputs=None) -> torch.Tensor:
        self._check_names(model)
        shared, head = [], []
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            if name in self.anchor:
                shared.append(_squared_norm(p - self._anchor_like(name, p)))
            elif self.beta > 0 and name.startswith(_HEAD):
                head.append(_squared_norm(p))
        device = next(model.parameters()).device
        total = torch.zeros((), device=device)
        if shared:
            total = total + 0.5 * self.alpha * torch.stack(shared).sum()
        if head:
            total = total + 0.5 * self.beta * torch.stack(head).sum()
        return total

    def no_weight_decay(self, model: nn.Module) -> set[str]:
        """All anchored backbone parameters, plus every ``head.*`` parameter when ``beta > 0``."""
        self._check_names(model)
        names = set(self.anchor)
        if self.beta > 0:
            names |= {n for n, _ in model.named_parameters() if n.startswith(_HEAD)}
        return names

    def __repr__(self) -> str:
        return f"L2SP(alpha={self.alpha}, beta={self.beta}, anchored={len(self.anchor)})"
