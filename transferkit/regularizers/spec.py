"""Parse regularizer strings such as ``l2sp:0.01``, ``l2sp:auto`` or ``l2sp:0.01+bss:0.001``.

Accepted forms (parts joined with ``+``, each kind at most once)::

    l2sp:ALPHA[,BETA][,FORM]  L2-SP, pull towards source weights (ALPHA), L2 on the new head (BETA,
                        default 0). FORM is `decoupled` (the pull is applied beside the optimizer step,
                        like AdamW's weight decay: the default with AdamW) or `coupled` (a loss term
                        that goes through the optimizer: the default with SGD); see regularizers.l2sp
    l2sp:auto[,BETA][,FORM]  L2-SP with ALPHA chosen by the engine from L2SP_AUTO_GRID
    delta:ALPHA         DELTA feature-map regularizer
    bss:ETA[,K]         Batch Spectral Shrinkage of the K (default 1) smallest singular values
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field, replace

KINDS = ("l2sp", "delta", "bss")
# ALPHA is a rate: each step pulls a weight's distance to the source down by a fraction lr * ALPHA
# (decoupled form; the coupled form under SGD without momentum is the same). At the default backbone
# LR of 1e-4 (lr 1e-3 x backbone-lr-mult 0.1) and a cosine schedule over ~100-300 steps, the summed
# pull is ~0.005-0.015 x ALPHA: ALPHA = 1 removes ~1% of the drift, 10 ~10%, 100 most of it, 1000
# holds the backbone at the source. The grid spans that range, one decade apart.
L2SP_AUTO_GRID = (1.0, 10.0, 100.0, 1000.0)
L2SP_FORMS = ("coupled", "decoupled")
FORMS = ("l2sp:ALPHA[,BETA][,coupled|decoupled], l2sp:auto[,BETA][,coupled|decoupled], delta:ALPHA, "
         "bss:ETA[,K]; join several with '+', e.g. l2sp:10+bss:0.001")


@dataclass(frozen=True)
class RegularizerSpec:
    """One parsed regularizer.

    ``params`` by kind: ``l2sp`` → ``{"alpha": float | "auto", "beta": float}`` plus ``"form"``
    (``"coupled"`` / ``"decoupled"``) when one was written (absent: chosen by the optimizer);
    ``delta`` → ``{"alpha": float}``; ``bss`` → ``{"eta": float, "k": int}``.
    ``str(spec)`` gives back a string that :func:`parse_regularizer` accepts.
    """

    kind: str
    params: dict = field(default_factory=dict)

    @property
    def is_auto(self) -> bool:
        """True for ``l2sp:auto``: the engine must pick alpha (see ``L2SP_AUTO_GRID``)."""
        return self.params.get("alpha") == "auto"

    def with_alpha(self, alpha: float) -> RegularizerSpec:
        """A copy with ``alpha`` set, e.g. to resolve ``l2sp:auto`` after the sweep."""
        return replace(self, params={**self.params, "alpha": float(alpha)})

    def __str__(self) -> str:
        p = self.params
        if self.kind == "l2sp":
            form = p.get("form")
            beta = f",{p['beta']}" if p.get("beta") or form else ""
            return f"l2sp:{p['alpha']}{beta}" + (f",{form}" if form else "")
        if self.kind == "delta":
            return f"delta:{p['alpha']}"
        return f"bss:{p['eta']},{p['k']}"


def _error(part: str, why: str) -> ValueError:
    return ValueError(f"bad regularizer '{part}': {why}. Accepted forms: {FORMS}")


def _number(part: str, name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise _error(part, f"{name} must be a number, got '{text}'") from None
    if not math.isfinite(value) or value < 0:
        raise _error(part, f"{name} must be a finite number >= 0, got '{text}'")
    return value


def _count(part: str, name: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise _error(part, f"{name} must be a whole number >= 1, got '{text}'") from None
    if value < 1:
        raise _error(part, f"{name} must be a whole number >= 1, got '{text}'")
    return value


def _parse_part(part: str) -> RegularizerSpec:
    if not part:
        raise _error(part, "empty part (a stray '+')")
    kind, sep, rest = part.partition(":")
    kind = kind.strip().lower()
    if kind not in KINDS:
        near = difflib.get_close_matches(kind, KINDS, n=1, cutoff=0.5)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        raise _error(part, f"unknown kind '{kind}'{hint}")
    args = [a.strip() for a in rest.split(",")] if sep else []
    if not args or not args[0]:
        raise _error(part, f"'{kind}' needs a value after ':'")
    if kind == "l2sp":
        form = args.pop().lower() if len(args) > 1 and args[-1].lower() in L2SP_FORMS else None
        if len(args) > 2:
            raise _error(part, "l2sp takes ALPHA[,BETA][,coupled|decoupled]")
        if len(args) == 2 and args[1].isalpha():
            raise _error(part, f"the form must be one of {', '.join(L2SP_FORMS)}, got '{args[1]}'")
        alpha = "auto" if args[0].lower() == "auto" else _number(part, "ALPHA", args[0])
        beta = _number(part, "BETA", args[1]) if len(args) == 2 else 0.0
        params = {"alpha": alpha, "beta": beta}
        if form:
            params["form"] = form
        return RegularizerSpec("l2sp", params)
    if kind == "delta":
        if len(args) != 1:
            raise _error(part, "delta takes a single ALPHA")
        return RegularizerSpec("delta", {"alpha": _number(part, "ALPHA", args[0])})
    if len(args) > 2:
        raise _error(part, "bss takes ETA[,K]")
    k = _count(part, "K", args[1]) if len(args) == 2 else 1
    return RegularizerSpec("bss", {"eta": _number(part, "ETA", args[0]), "k": k})


def parse_regularizer(spec: str) -> list[RegularizerSpec]:
    """Parse ``"l2sp:0.01"`` or ``"l2sp:0.01+bss:0.001"`` into a list of specs (always a list, one
    entry per ``+``-separated part, in the order written).

    Raises ``ValueError`` naming the bad part, the nearest valid kind for a misspelt one, and the
    accepted forms.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"empty regularizer spec. Accepted forms: {FORMS}")
    # Split on '+' only before a kind name, so an exponent such as 1e+3 stays whole.
    specs = [_parse_part(part.strip()) for part in re.split(r"\+(?=\s*[A-Za-z]|\s*$)", spec)]
    seen: set[str] = set()
    for s in specs:
        if s.kind in seen:
            raise ValueError(f"regularizer '{s.kind}' given twice in '{spec}'. Accepted forms: {FORMS}")
        seen.add(s.kind)
    return specs
