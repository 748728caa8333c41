"""Fitting a linear head on frozen features, and choosing its regularisation honestly.

The head is an L2-regularised multinomial logistic regression fitted to convergence by full-batch
L-BFGS (the first phase of LP-FT, Kumar et al., ICLR 2022), with sklearn's objective:
mean cross-entropy + ||W||^2 / (2 C n).

Features come as views `[V, N, D]`: view 0 is the image as it is, view 1 (if any) its mirror image.
Training uses every view of an item as an example; scoring averages the softmax over the views,
which is exactly what test-time augmentation does at test time, so held-out and test scores are
computed the same way.

C is chosen on a validation split when there is one, else by stratified k-fold cross-validation
over the training labels (`transferkit.data.cv_folds`): every label is held out once, the views of
one item never sit on both sides of a fold, and the test split is never looked at. A linear head's
folds are fitted together (one L-BFGS run per C over the sum of their independent objectives),
each C starting from the fits at the one below it: the same minima for a fraction of the
Python-side iterations, which were most of a few-shot probe's time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..models.heads import NormLinear

C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)


def linear_of(head: nn.Module) -> nn.Module:
    """The linear layer of a head (itself, or the last layer of Dropout -> Linear)."""
    return head[-1] if isinstance(head, nn.Sequential) else head


@torch.no_grad()
def set_radius(head: nn.Module, views: torch.Tensor) -> float | None:
    """A head that reads features rescaled to one length (`NormLinear`) gets the mean length of the
    training items' plain features `views[0]` as that length, so that C keeps the scale it has on
    the raw features; the length set, or None for other heads."""
    layer = linear_of(head)
    if not isinstance(layer, NormLinear):
        return None
    layer.radius.fill_(float(views[0].double().norm(dim=-1).mean()))
    return float(layer.radius)


def fit_linear_head(head: nn.Module, X: torch.Tensor, y: torch.Tensor, C: float, *,
                    max_iter: int = 200, label_smoothing: float = 0.0) -> None:
    """Fit `head` (from its current state) on features `X [n, D]` and labels `y [n]`."""
    device = next(head.parameters()).device
    X, y = X.to(device), y.to(device)
    lam = 1.0 / (2 * C * len(y))
    weights = [p for p in head.parameters() if p.ndim > 1]
    opt = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=max_iter, history_size=20,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-6)

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(head(X), y, label_smoothing=label_smoothing)
        loss = loss + lam * sum((w ** 2).sum() for w in weights)
        loss.backward()
        return loss

    head.train()
    opt.step(closure)


@torch.no_grad()
def view_probs(head: nn.Module, views: torch.Tensor) -> torch.Tensor:
    """Softmax probabilities `[N, K]` averaged over the views `[V, N, D]`."""
    was = head.training
    head.eval()
    device = next(head.parameters()).device
    p = torch.stack([head(v.to(device)).float().softmax(-1) for v in views]).mean(0)
    head.train(was)
    return p.cpu()


def score(probs: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(accuracy, mean negative log-likelihood) of probabilities against labels."""
    acc = float((probs.argmax(1) == y).float().mean())
    nll = float(-torch.log(probs[torch.arange(len(y)), y].clamp_min(1e-12)).mean())
    return acc, nll


def _stack(views: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return views.reshape(-1, views.shape[-1]), y.repeat(views.shape[0])


@dataclass
class HeadChoice:
    """What was chosen and the evidence: per candidate C, the held-out accuracy/NLL."""

    C: float
    C_nll: float                     # the C with the lowest held-out NLL (calibrated; LP-FT's start)
    method: str                      # "val" | "cv" | "default"
    table: list[dict] = field(default_factory=list)
    folds: int = 0

    @property
    def best_row(self) -> dict:
        return next((r for r in self.table if r["C"] == self.C), {})

    def estimate(self) -> dict:
        """The held-out estimate of the chosen C: mean ± standard error (over folds)."""
        r = self.best_row
        return {"method": self.method, "folds": self.folds, "accuracy": r.get("accuracy"),
                "accuracy_se": r.get("accuracy_se"), "nll": r.get("nll"), "C": self.C}


def _fit_linear_heads(w: torch.Tensor, b: torch.Tensor, X: torch.Tensor, Y: torch.Tensor, rows: torch.Tensor,
                      C: float, *, max_iter: int = 200, label_smoothing: float = 0.0) -> None:
    """Fit F linear heads at once, in place from their current values (`w [F, K, D]`, `b [F, K]`):
    head f on the rows of `X [n, D]` / `Y [n]` where `rows [F, n]` is 1. The objective is the sum
    of the F objectives `fit_linear_head` minimises; they share no parameter, so its minimum is
    every head's own minimum, reached with one L-BFGS run instead of F (the folds of a
    cross-validation cost one set of Python-side iterations, not F)."""
    n = rows.sum(1)
    lam = 1.0 / (2 * C * n)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-6)

    def closure():
        opt.zero_grad()
        # one [n, D] x [D, F*K] product for all heads, not F: [F, n, K]
        logits = (X @ w.flatten(0, 1).T).view(len(X), *b.shape).transpose(0, 1) + b[:, None, :]
        ce = nn.functional.cross_entropy(logits.flatten(0, 1), Y.repeat(len(w)), reduction="none",
                                         label_smoothing=label_smoothing).view(rows.shape)
        loss = ((ce * rows).sum(1) / n + lam * (w ** 2).sum((1, 2))).sum()
        loss.backward()
        return loss

    opt.step(closure)


def _fitted(head: nn.Module, init: dict, views: torch.Tensor, y: torch.Tensor, train_sets: list, cs, *,
            label_smoothing: float = 0.0):
    """Yield (C, f) once `head` holds the fit at C on training set f (item indices; every view of
    an item is an example), for each C and f.

    A plain `nn.Linear` head fits all training sets of one C together (`_fit_linear_heads`) and
    starts each C from the fits at the next smaller one (warm start along the regularisation path:
    the objective is strictly convex, so the start changes the iterations, not the minimum). Other
    heads fit each (C, f) from `init`."""
    rescaled = isinstance(head, NormLinear)  # a linear layer on rescaled features: the same fits
    if not ((type(head) is nn.Linear or rescaled) and head.bias is not None):
        for c in dict.fromkeys(cs):  # each C once, however often it is listed
            for f, tr in enumerate(train_sets):
                head.load_state_dict(init)
                X, Y = _stack(views[:, tr], y[tr])
                fit_linear_head(head, X, Y, c, label_smoothing=label_smoothing)
                yield c, f
        return
    device = head.weight.device
    X, Y = _stack(views, y)
    X, Y = X.to(device), Y.to(device)
    if rescaled:
        with torch.no_grad():
            X = head.rescale(X)
    rows = torch.zeros(len(train_sets), len(y), device=device)
    for f, tr in enumerate(train_sets):
        rows[f, torch.as_tensor(tr, device=device)] = 1.0
    rows = rows.repeat(1, len(views))                                               # the views of an item
    w = init["weight"].to(device).expand(len(train_sets), -1, -1).clone().requires_grad_(True)
    b = init["bias"].to(device).expand(len(train_sets), -1).clone().requires_grad_(True)
    head.train()
    for c in sorted(set(cs)):
        _fit_linear_heads(w, b, X, Y, rows, c, label_smoothing=label_smoothing)
        for f in range(len(train_sets)):
            with torch.no_grad():
                head.weight.copy_(w[f])
                head.bias.copy_(b[f])
            yield c, f


def choose_c(head: nn.Module, views: torch.Tensor, y: torch.Tensor, *,
             val: tuple[torch.Tensor, torch.Tensor] | None = None, folds: list | None = None,
             cs: tuple[float, ...] = C_GRID, fit_views: int | None = None, score_views: int | None = None,
             label_smoothing: float = 0.0) -> HeadChoice:
    """Pick C by validation (`val` = (views, labels)) or else by the given CV `folds`.

    The head trains on the first `fit_views` views of each item and held-out items are scored on
    their first `score_views` views (all by default). Selection: highest held-out accuracy, ties
    to the lower NLL. Without validation or folds, C = 1."""
    init = {k: v.clone() for k, v in head.state_dict().items()}
    fv, sv = fit_views or len(views), score_views or len(views)
    if val is not None and len(val[1]):
        train_sets, held_out, method, k = [np.arange(len(y))], [(val[0][:sv], val[1])], "val", 0
    elif folds:
        train_sets = [tr for tr, _ in folds]
        held_out, method, k = [(views[:sv, te], y[te]) for _, te in folds], "cv", len(folds)
    else:
        return HeadChoice(C=1.0, C_nll=1.0, method="default")
    scores: dict[float, list[tuple[float, float]]] = {c: [] for c in cs}
    for c, f in _fitted(head, init, views[:fv], y, train_sets, cs, label_smoothing=label_smoothing):
        scores[c].append(score(view_probs(head, held_out[f][0]), held_out[f][1]))
    head.load_state_dict(init)
    rows = []
    for c in cs:
        accs, nlls = [a for a, _ in scores[c]], [n for _, n in scores[c]]
        se = float(np.std(accs, ddof=1) / math.sqrt(len(accs))) if method == "cv" else None
        rows.append({"C": c, "accuracy": float(np.mean(accs)), "accuracy_se": se, "nll": float(np.mean(nlls))})
    best = max(rows, key=lambda r: (round(r["accuracy"], 9), -r["nll"]))
    calibrated = min(rows, key=lambda r: r["nll"])
    return HeadChoice(C=best["C"], C_nll=calibrated["C"], method=method, table=rows, folds=k)


def fit_probe(head: nn.Module, views: torch.Tensor, y: torch.Tensor, *,
              val: tuple[torch.Tensor, torch.Tensor] | None = None, folds: list | None = None,
              calibrated: bool = False, cs: tuple[float, ...] = C_GRID, fit_views: int | None = None,
              score_views: int | None = None, label_smoothing: float = 0.0) -> HeadChoice:
    """Choose C (`choose_c`), then fit `head` on every training view with it.

    `calibrated=True` fits with the C of lowest held-out NLL instead of best accuracy: the start
    for fine-tuning (LP-FT), where a head fitted to near-zero training loss would leave the
    backbone almost no gradient to learn from.
    """
    set_radius(head, views)  # a head on rescaled features: their length from these training views
    choice = choose_c(head, views, y, val=val, folds=folds, cs=cs, fit_views=fit_views,
                      score_views=score_views, label_smoothing=label_smoothing)
    X, Y = _stack(views[:fit_views or len(views)], y)
    fit_linear_head(head, X, Y, choice.C_nll if calibrated else choice.C, label_smoothing=label_smoothing)
    return choice


def fit_multistage_probe(features: nn.Module, head: nn.Module, views: torch.Tensor, y: torch.Tensor, *,
                         val: tuple[torch.Tensor, torch.Tensor] | None = None, folds: list | None = None,
                         fit_views: int | None = None, score_views: int | None = None,
                         label_smoothing: float = 0.0) -> tuple[HeadChoice, int, list[dict]]:
    """The `multi_probe` head: choose how many stage blocks below the final features to use (0 =
    the plain probe) together with C, on held-out data; then standardise and fit.

    `features` is a `MultiStageFeatures` whose buffers are still the identity, and `views` /
    `val` hold its raw features. Returns (the C choice of the kept option, blocks used, the table
    of every option's held-out score)."""
    n_extra = len(features.layers)
    raw = views.reshape(-1, views.shape[-1])
    options = []
    for k in range(n_extra + 1):
        keep = [i < k for i in range(n_extra)] + [True]
        features.standardise(raw, keep)
        shift, scale = features.shift.clone(), features.scale.clone()

        def tf(t):
            return (t - shift) * scale
        vval = (tf(val[0]), val[1]) if val is not None and len(val[1]) else None
        choice = choose_c(head, tf(views), y, val=vval, folds=folds, fit_views=fit_views,
                          score_views=score_views, label_smoothing=label_smoothing)
        options.append((k, keep, choice))
    k, keep, choice = max(options, key=lambda o: (round(o[2].best_row.get("accuracy", 0.0), 9), -o[0],
                                                   -o[2].best_row.get("nll", 0.0)))
    features.standardise(raw, keep)
    X, Y = _stack(((views - features.shift) * features.scale)[:fit_views or len(views)], y)
    fit_linear_head(head, X, Y, choice.C, label_smoothing=label_smoothing)
    table = [{"blocks": kk, "layers": features.layers[:kk], **c.best_row} for kk, _, c in options]
    return choice, k, table


def fit_head(head: nn.Module, feats: torch.Tensor, labels: torch.Tensor, *,
             val: tuple[torch.Tensor, torch.Tensor] | None = None,
             cs: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0, 10.0), max_iter: int = 200,
             label_smoothing: float = 0.0, prior: dict | None = None) -> dict:
    """Fit `head` to convergence on frozen features: L2-regularised multinomial logistic regression
    (full-batch L-BFGS), the first phase of LP-FT (Kumar et al., ICLR 2022).

    The objective is sklearn's: mean cross-entropy + ||W||^2 / (2 C n). With validation features
    the inverse strength C is picked from `cs` by validation accuracy (then NLL); without, C = 1.
    The head's initial state is the same for every C, so the result is deterministic.
    With a `prior` head ({"weight", "bias"}, e.g. class names through a joint image-text space), the
    head starts there and the penalty pulls toward it, ||W - W_prior||^2 (transferkit.zeroshot.prior).
    """
    if hasattr(head, "fit_prototypes"):  # nearest class mean: a closed form, nothing to optimise
        return head.fit_prototypes(feats, labels, val=val)
    device = next(head.parameters()).device
    feats, labels = feats.to(device), labels.to(device)
    centre = {}
    if prior is not None:
        from ..zeroshot.prior import fit_prior_scale, set_head_from_prior
        prior = fit_prior_scale({k: v.to(device) for k, v in prior.items()}, feats, labels)
        set_head_from_prior(head, prior)
        centre = {id(head.weight): prior["weight"]}
        cs = (0.003, 0.01, 0.03) + tuple(cs)
    init = {k: v.clone() for k, v in head.state_dict().items()}
    n = len(labels)
    candidates = cs if val is not None and len(val[1]) else (1.0,)
    best = None
    for c in candidates:
        head.load_state_dict(init)
        lam = 1.0 / (2 * c * n)
        opt = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=max_iter, history_size=20,
                                line_search_fn="strong_wolfe", tolerance_grad=1e-6)
        weights = [p for name, p in head.named_parameters() if p.ndim > 1]

        def closure():
            opt.zero_grad()
            loss = nn.functional.cross_entropy(head(feats), labels, label_smoothing=label_smoothing)
            loss = loss + lam * sum(((w - centre[id(w)] if id(w) in centre else w) ** 2).sum() for w in weights)
            loss.backward()
            return loss

        head.train()
        opt.step(closure)
        score = (0.0, 0.0)
        if val is not None and len(val[1]):
            with torch.no_grad():
                head.eval()
                logits = head(val[0].to(device))
                vy = val[1].to(device)
                acc = (logits.argmax(1) == vy).float().mean().item()
                nll = nn.functional.cross_entropy(logits, vy).item()
            score = (acc, -nll)
        if best is None or score > best[0]:
            best = (score, c, {k: v.clone() for k, v in head.state_dict().items()})
    head.load_state_dict(best[2])
    info = {"C": best[1], "val_accuracy": best[0][0] if val is not None else math.nan}
    if prior is not None:
        info["prior_scale"] = prior["scale"]
    return info
