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
import importlib
import re
from dataclasses import dataclass, field, replace

from .l2sp import L2SP_AUTO_GRID, L2SP_FORMS  # noqa: F401  (their public spelling is regularizers.spec)
from .parsing import BadPart

# kind -> its module in this package. The module says how the kind is written and built:
#   SPEC_FORMS: tuple[str, ...]       the accepted spellings, for messages
#   parse(args: list[str]) -> dict    the params of `KIND:ARG,...`; raises parsing.BadPart
#   spell(params) -> str              back to a string that parse accepts
#   build(params, ctx) -> regularizer (ctx: regularizers.BuildContext)
# A new regularizer is its module and one line here.
KINDS = {
    "l2sp": "l2sp",
    "delta": "delta",
    "bss": "bss",
}


def kind_module(kind: str):
    return importlib.import_module(f".{KINDS[kind]}", __package__)


FORMS = (", ".join(f for kind in KINDS for f in kind_module(kind).SPEC_FORMS)
         + "; join several with '+', e.g. l2sp:10+bss:0.001")


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
        return kind_module(self.kind).spell(self.params)


def _error(part: str, why: str) -> ValueError:
    return ValueError(f"bad regularizer '{part}': {why}. Accepted forms: {FORMS}")


def _parse_part(part: str) -> RegularizerSpec:
    if not part:
        raise _error(part, "empty part (a stray '+')")
    kind, sep, rest = part.partition(":")
    kind = kind.strip().lower()
    if kind not in KINDS:
        near = difflib.get_close_matches(kind, list(KINDS), n=1, cutoff=0.5)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        raise _error(part, f"unknown kind '{kind}'{hint}")
    args = [a.strip() for a in rest.split(",")] if sep else []
    if not args or not args[0]:
        raise _error(part, f"'{kind}' needs a value after ':'")
    try:
        return RegularizerSpec(kind, kind_module(kind).parse(args))
    except BadPart as e:
        raise _error(part, str(e)) from None


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
