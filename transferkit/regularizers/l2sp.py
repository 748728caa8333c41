"""L2-SP: weight decay towards the source weights instead of towards zero.

Li, Grandvalet & Davoine, "Explicit inductive bias for transfer learning with convolutional
networks", ICML 2018:

    Omega(w) = alpha / 2 * || w_S - w_S^0 ||_2^2  +  beta / 2 * || w_Sbar ||_2^2

``w_S`` are the parameters shared with the source model (here: the ``backbone.*`` parameters named in
the anchor), ``w_S^0`` their pretrained values, and ``w_Sbar`` the parameters of the new head
(``head.*``). ``|| . ||_2^2`` is the squared Euclidean norm of all those parameters stacked into one
vector, i.e. the sum over every element of every tensor of its square (no mean anywhere).

Two ways to apply it (``form``):

* ``coupled``: ``Omega`` is added to the loss and its gradient goes through the optimizer. With SGD
  this is the paper's method. With Adam(W) the gradient ``alpha (w - w0)`` is divided per parameter by
  Adam's running RMS of the *whole* gradient, so the pull is uneven across parameters and, next to a
  large task gradient, almost nothing.
* ``decoupled`` (the default with AdamW): the pull is applied outside the optimizer, the way AdamW
  applies its weight decay (Loshchilov & Hutter, ICLR 2019), but towards ``w0`` instead of zero. At
  every optimizer step, for every trainable anchored parameter in a group with learning rate ``lr``:

      w <- w - lr * alpha * (w - w0)        (and h <- h - lr * beta * h for the head)

  computed from the values before the step (as AdamW's own decay), i.e. a plain gradient step on
  ``Omega`` with the group's learning rate (``lr * alpha`` capped at 1: at most back to ``w0``). The loss term is then zero (nothing counted twice).
  The per-step pull is ``lr * alpha`` whatever the gradient scale, so ``alpha`` reads as a rate:
  with a backbone LR of 1e-4 and a few hundred steps, alpha of order 1-100 matters.

LoRA (Hu et al., ICLR 2022): when a wrapped weight ``W`` (anchored as ``...base_layer.weight``) has
adapters, the layer computes with ``W + s B A`` (``s`` = ``scaling``), so its distance to the source is

    D = (W - W0) + sum_adapters s B A

and the term is ``alpha/2 ||D||^2`` (``W`` is frozen under ``lora:``, so ``D = s B A``). Its gradient
is ``s D A^T`` for ``B`` and ``s B^T D`` for ``A``; the decoupled form takes a plain step of
``lr * alpha`` times that, for the same reason as above (Adam would rescale it per tensor). Without
this, L2-SP under LoRA anchors weights that never move and does nothing.

Parameters named in ``no_weight_decay`` (the anchored ones, and the head when ``beta > 0``) must go
into a parameter group with ``weight_decay=0``: decaying a backbone weight towards zero and pulling
it towards its source value at the same time would fight each other. (LoRA's ``A`` and ``B`` keep
the optimizer's decay: shrinking them also shrinks ``D``.)
"""

from __future__ import annotations

import torch
from torch import nn

from .parsing import BadPart, number

_BACKBONE = "backbone."
_HEAD = "head."
FORMS = ("coupled", "decoupled")
L2SP_FORMS = FORMS
# ALPHA is a rate: each step pulls a weight's distance to the source down by a fraction lr * ALPHA
# (decoupled form; the coupled form under SGD without momentum is the same). At the default backbone
# LR of 1e-4 (lr 1e-3 x backbone-lr-mult 0.1) and a cosine schedule over ~100-300 steps, the summed
# pull is ~0.005-0.015 x ALPHA: ALPHA = 1 removes ~1% of the drift, 10 ~10%, 100 most of it, 1000
# holds the backbone at the source. The grid spans that range, one decade apart.
L2SP_AUTO_GRID = (1.0, 10.0, 100.0, 1000.0)


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


class _LoraLayer:
    """One adapted weight: the anchored base weight and the (A, B, scale) of each adapter on it."""

    def __init__(self, weight_name: str, weight: nn.Parameter, adapters: list, transpose: bool):
        self.weight_name = weight_name
        self.weight = weight
        self.adapters = adapters  # [(A param, B param, scale)]
        self.transpose = transpose  # PEFT's fan_in_fan_out: W is stored [in, out]

    def params(self) -> list[nn.Parameter]:
        return [self.weight] + [p for a, b, _ in self.adapters for p in (a, b)]

    def delta(self, w0: torch.Tensor) -> torch.Tensor:
        """``D = (W - W0) + sum s B A`` in W's layout."""
        d = self.weight - w0
        for a, b, s in self.adapters:
            ba = b @ a
            d = d + s * (ba.T if self.transpose else ba)
        return d


def _lora_layers(model: nn.Module, anchor: dict) -> list[_LoraLayer]:
    """PEFT LoRA layers whose base weight is anchored (duck-typed: ``lora_A``/``lora_B``/``scaling``)."""
    layers = []
    for name, mod in model.named_modules():
        if not (isinstance(getattr(mod, "lora_A", None), nn.ModuleDict) and hasattr(mod, "scaling")):
            continue
        weight_name = f"{name}.base_layer.weight"
        if weight_name not in anchor or not len(mod.lora_A):
            continue
        adapters = []
        for key, a_mod in mod.lora_A.items():
            a, b = a_mod.weight, mod.lora_B[key].weight
            if a.ndim != 2 or b.ndim != 2:
                raise ValueError(f"L2SP supports LoRA on Linear layers only; '{name}' has a "
                                 f"{type(a_mod).__name__} adapter")
            adapters.append((a, b, float(mod.scaling[key])))
        layers.append(_LoraLayer(weight_name, mod.base_layer.weight, adapters,
                                 bool(getattr(mod, "fan_in_fan_out", False))))
    return layers


class L2SP:
    """``alpha/2 * sum (w - w0)^2`` over trainable anchored backbone weights ``+ beta/2 * sum h^2``
    over trainable head weights (Li et al., ICML 2018); LoRA layers count ``w - w0 = s B A``.

    Args:
        anchor: ``{full parameter name: source value}``, names starting with ``backbone.``
            (see :func:`anchor_from`). Backbone parameters absent from the anchor are not regularized.
        alpha: strength of the pull towards the source weights.
        beta: strength of the plain L2 penalty on the head (0 disables it and leaves the head to the
            optimizer's ordinary weight decay).
        form: ``"coupled"`` (a loss term) or ``"decoupled"`` (a pull applied by :meth:`before_step`,
            the loss term is zero); see the module docstring.

    Parameters with ``requires_grad=False`` are skipped before any work is done: a frozen stage
    contributes nothing to the term and costs nothing. Each anchor tensor is moved to its parameter's
    device and dtype once, on first use, and cached.
    """

    def __init__(self, anchor: dict[str, torch.Tensor], alpha: float, beta: float = 0.0,
                 form: str = "coupled"):
        if alpha < 0 or beta < 0:
            raise ValueError(f"L2SP needs alpha >= 0 and beta >= 0, got alpha={alpha}, beta={beta}")
        if form not in FORMS:
            raise ValueError(f"L2SP form must be one of {FORMS}, got '{form}'")
        foreign = sorted(k for k in anchor if not k.startswith(_BACKBONE))
        if foreign:
            raise ValueError(
                "L2SP anchor keys must be full backbone parameter names ('backbone.…'); "
                f"got {foreign[:5]}{' …' if len(foreign) > 5 else ''}"
            )
        self.anchor = {k: v.detach() for k, v in anchor.items()}
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.form = form
        self._cache: dict[str, torch.Tensor] = {}
        self._checked_model: int | None = None
        self._lora: list[_LoraLayer] = []

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
        self._lora = _lora_layers(model, self.anchor)
        self._checked_model = id(model)

    def _anchor_like(self, name: str, p: torch.Tensor) -> torch.Tensor:
        ref = self._cache.get(name)
        if ref is None or ref.device != p.device or ref.dtype != p.dtype:
            ref = self.anchor[name].to(device=p.device, dtype=p.dtype)
            self._cache[name] = ref
        return ref

    def _plain_params(self, model: nn.Module):
        """``(name, p, kind)`` for trainable anchored (kind "shared") and head (kind "head") parameters
        that are not handled as part of a LoRA layer."""
        in_lora = {layer.weight_name for layer in self._lora}
        for name, p in model.named_parameters():
            if not p.requires_grad or name in in_lora:
                continue
            if name in self.anchor:
                yield name, p, "shared"
            elif self.beta > 0 and name.startswith(_HEAD):
                yield name, p, "head"

    def penalty(self, model: nn.Module) -> torch.Tensor:
        """``Omega`` itself (whatever the form), with gradients to the trainable parameters."""
        self._check_names(model)
        shared, head = [], []
        for name, p, kind in self._plain_params(model):
            if kind == "shared":
                shared.append(_squared_norm(p - self._anchor_like(name, p)))
            else:
                head.append(_squared_norm(p))
        for layer in self._lora:
            if any(p.requires_grad for p in layer.params()):
                shared.append(_squared_norm(layer.delta(self._anchor_like(layer.weight_name, layer.weight))))
        device = next(model.parameters()).device
        total = torch.zeros((), device=device)
        if shared:
            total = total + 0.5 * self.alpha * torch.stack(shared).sum()
        if head:
            total = total + 0.5 * self.beta * torch.stack(head).sum()
        return total

    def __call__(self, model, features=None, feature_maps=None, inputs=None) -> torch.Tensor:
        if self.form == "decoupled":  # applied by before_step; nothing to add to the loss
            self._check_names(model)
            return torch.zeros((), device=next(model.parameters()).device)
        return self.penalty(model)

    @torch.no_grad()
    def before_step(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Decoupled form: pull each trainable parameter the optimizer updates towards its anchor by
        ``lr * alpha`` (the head towards 0 by ``lr * beta``), from its value before the step. Call
        it right before ``optimizer.step()``. Does nothing in the coupled form."""
        if self.form != "decoupled":
            return
        self._check_names(model)
        lr = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
        for name, p, kind in self._plain_params(model):
            if id(p) not in lr:
                continue
            if kind == "shared":  # a pull past the source (lr * alpha > 1) would overshoot: snap to it
                p.sub_(p - self._anchor_like(name, p), alpha=min(1.0, lr[id(p)] * self.alpha))
            else:
                p.mul_(1.0 - min(1.0, lr[id(p)] * self.beta))
        for layer in self._lora:
            if not any(id(p) in lr for p in layer.params()):
                continue
            d = layer.delta(self._anchor_like(layer.weight_name, layer.weight))  # before any update
            updates = []
            if id(layer.weight) in lr:
                updates.append((layer.weight, d))
            for a, b, s in layer.adapters:
                dd = d.T if layer.transpose else d  # [out, in], the layout of B @ A
                updates += [(b, s * dd @ a.T), (a, s * b.T @ dd)]
            for p, grad in updates:
                if id(p) in lr:
                    p.sub_(grad, alpha=lr[id(p)] * self.alpha)

    def no_weight_decay(self, model: nn.Module) -> set[str]:
        """All anchored backbone parameters, plus every ``head.*`` parameter when ``beta > 0``."""
        self._check_names(model)
        names = set(self.anchor)
        if self.beta > 0:
            names |= {n for n, _ in model.named_parameters() if n.startswith(_HEAD)}
        return names

    def __repr__(self) -> str:
        lora = f", lora_layers={len(self._lora)}" if self._lora else ""
        return (f"L2SP(alpha={self.alpha}, beta={self.beta}, form={self.form}, "
                f"anchored={len(self.anchor)}{lora})")


# --reg l2sp:... (regularizers/spec.py)
SPEC_FORMS = ("l2sp:ALPHA[,BETA][,coupled|decoupled]", "l2sp:auto[,BETA][,coupled|decoupled]")


def parse(args: list[str]) -> dict:
    form = args.pop().lower() if len(args) > 1 and args[-1].lower() in L2SP_FORMS else None
    if len(args) > 2:
        raise BadPart("l2sp takes ALPHA[,BETA][,coupled|decoupled]")
    if len(args) == 2 and args[1].isalpha():
        raise BadPart(f"the form must be one of {', '.join(L2SP_FORMS)}, got '{args[1]}'")
    alpha = "auto" if args[0].lower() == "auto" else number("ALPHA", args[0])
    beta = number("BETA", args[1]) if len(args) == 2 else 0.0
    params = {"alpha": alpha, "beta": beta}
    if form:
        params["form"] = form
    return params


def spell(p: dict) -> str:
    form = p.get("form")
    beta = f",{p['beta']}" if p.get("beta") or form else ""
    return f"l2sp:{p['alpha']}{beta}" + (f",{form}" if form else "")


def build(p: dict, ctx) -> L2SP:
    if p.get("alpha") == "auto":
        raise ValueError(
            "l2sp:auto must be resolved before building: sweep alpha over "
            f"L2SP_AUTO_GRID={L2SP_AUTO_GRID} and build with spec.with_alpha(alpha)"
        )
    if ctx.anchor is None:
        raise ValueError("l2sp needs the source weights: pass anchor=anchor_from(model) taken before training")
    form = p.get("form") or ("decoupled" if ctx.optimizer == "adamw" else "coupled")
    reg = L2SP(ctx.anchor, p["alpha"], p.get("beta", 0.0), form=form)
    reg.no_weight_decay(ctx.model)  # checks anchor names and shapes against the model now
    return reg
