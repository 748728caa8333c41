"""`contrastive`: contrastive fine-tuning of a text encoder on pairs made from the few labels, then the head.

The idea is SetFit's (Tunstall et al., 2022): with a handful of labelled texts per class there are
few examples but many *pairs* of examples. Pairs of the same class should embed close together,
pairs of different classes apart. The encoder is trained for that on its mean-pooled sentence
features with a cosine-similarity loss (the cosine of the two embeddings regressed onto 1 for a
positive pair, 0 for a negative one), and afterwards the usual head (the L-BFGS logistic probe of
`linear_probe`, C chosen on validation or by cross-validation) is fitted on the features of the
encoder as it now is. This module is our own implementation; it shares no code with setfit.

Cost is bounded: the number of pairs is capped, each pair is seen once, and pairs are batched by
length (pairs of similar length share a batch, so little of each batch is padding) with the order
of the batches shuffled. A step encodes 2 x batch-size texts.

Options, `contrastive[:key=value,...]`:

- `pairs=N`  pairs in total (one optimisation step per `--batch-size` pairs). Default: `--steps`
             (or `--epochs`) x batch size when given, else PAIRS_PER_TEXT per training text, at
             most MAX_PAIRS.
- `lr=X`     the encoder's learning rate in the contrastive phase (default LR, 2e-5). The head is fitted in
             closed form afterwards and takes no learning rate.
- `wise=W`   after the pairs, the encoder kept is (1 - W) x the source encoder + W x the trained one,
             weight by weight (WiSE-FT, Wortsman et al., 2022), and the head is fitted on its features.
             Default WISE, 0.75: on the text benchmark's development seeds (0-2, 16 labels per class;
             results/text_contrastive_wise_dev.md) 0.75 scored +0.0, +0.5 and +0.2 macro-F1 points
             over the trained encoder (1); in an exploration with a scikit-learn head, choosing W on
             the validation split did worse than either. `wise=1` keeps the trained encoder.

Pairs (`make_pairs`): in rounds, every training text in a seeded random order is the anchor of one
positive pair (a random other text of its class) and one negative pair (a random text of another
class), a pair already drawn being redrawn a few times before it is accepted again; so positives
and negatives are balanced, every text takes part equally, and the same seed and data give the same
pairs. A class with a single text has no positive pair.

The training loop is `transferkit.engine.contrastive_phase` (it needs the engine; this module, which
the plan reads, does not). It uses the engine's run folder, `last/` (model, optimizer, RNG, step),
`--stop-after`, `--checkpoint-every/-seconds`, SIGINT/SIGTERM and `--resume`: pairs and batches are a
pure function of (seed, training split), so a resumed run continues exactly with the batch it
stopped before. Validation comes after the head fit (a head-less encoder has nothing to score). It
runs in one process (no multi-GPU data parallelism) and takes no `--reg` or `--unlabelled`.
"""

from __future__ import annotations

import numpy as np
import torch

PAIRS_PER_TEXT = 4    # default pairs per training text: sized by CPU cost (a step encodes 2 x batch texts), not tuned
MAX_PAIRS = 4000      # and at most this many (a large training set gets no more steps than this)
LR = 2e-5             # encoder LR of the contrastive phase
REDRAWS = 5           # attempts to find a pair not drawn yet before a repeat is accepted
WISE = 0.75           # share of the trained encoder in the one kept (the rest: the source); see `wise=W`
OPTIONS = ("pairs", "lr", "wise")


def parse_options(text: str) -> dict:
    """`pairs=N,lr=X,wise=W` -> {"pairs": N or None, "lr": X, "wise": W}; an unknown key or a bad
    value is a ValueError."""
    opts = dict(kv.split("=", 1) if "=" in kv else (kv, "") for kv in text.split(",") if kv)
    unknown = set(opts) - set(OPTIONS)
    if unknown:
        raise ValueError(f"unknown contrastive option '{sorted(unknown)[0]}' (use pairs=N, lr=X, wise=W)")
    try:
        pairs = int(opts["pairs"]) if "pairs" in opts else None
        lr = float(opts.get("lr", LR))
        wise = float(opts.get("wise", WISE))
    except ValueError:
        raise ValueError(f"cannot read contrastive options '{text}': pairs=N takes a whole number, "
                         "lr=X and wise=W numbers (e.g. contrastive:pairs=2000,lr=2e-5,wise=1)") from None
    if pairs is not None and pairs < 1:
        raise ValueError("contrastive:pairs=N needs N >= 1")
    if not 0 < lr <= 1:
        raise ValueError("contrastive:lr=X needs 0 < X <= 1")
    if not 0 < wise <= 1:
        raise ValueError("contrastive:wise=W needs 0 < W <= 1 (1 keeps the trained encoder)")
    return {"pairs": pairs, "lr": lr, "wise": wise}


def make_pairs(labels: list[int] | np.ndarray, count: int, seed: int) -> list[tuple[int, int, float]]:
    """`count` pairs (i, j, target): target 1.0 for two texts of one class, 0.0 for two classes.
    Balanced, seeded, repeats avoided while unseen pairs are easy to find (module docstring)."""
    y = np.asarray(labels)
    if len(np.unique(y)) < 2:
        raise ValueError("contrastive fine-tuning needs at least two classes in the training split")
    rng = np.random.default_rng(seed)
    members = {c: np.flatnonzero(y == c) for c in np.unique(y)}
    seen: set[tuple[int, int]] = set()
    pairs: list[tuple[int, int, float]] = []

    def draw(i: int, same: bool) -> int | None:
        pool = members[y[i]] if same else None
        if same and len(pool) < 2:
            return None
        j = -1
        for _ in range(REDRAWS):
            if same:
                j = int(pool[rng.integers(len(pool))])
                while j == i:
                    j = int(pool[rng.integers(len(pool))])
            else:
                j = int(rng.integers(len(y)))
                while y[j] == y[i]:
                    j = int(rng.integers(len(y)))
            if (min(i, j), max(i, j)) not in seen:
                break
        return j

    while len(pairs) < count:
        before = len(pairs)
        for i in rng.permutation(len(y)).tolist():
            for same in (True, False):
                j = draw(i, same)
                if j is None:
                    continue
                seen.add((min(i, j), max(i, j)))
                pairs.append((i, j, 1.0 if same else 0.0))
                if len(pairs) == count:
                    return pairs
        if len(pairs) == before:  # cannot happen with two classes; guards an endless loop
            break
    return pairs


def pair_batches(pairs: list[tuple[int, int, float]], lengths: list[int], batch_size: int,
                 seed: int) -> list[list[int]]:
    """Indices into `pairs`, in batches of pairs of similar length (the longer text of each pair),
    the batches in a seeded random order."""
    order = sorted(range(len(pairs)), key=lambda k: (max(lengths[pairs[k][0]], lengths[pairs[k][1]]), k))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    g = torch.Generator().manual_seed(seed * 100_003 + 7)
    return [batches[k] for k in torch.randperm(len(batches), generator=g).tolist()]


def cosine_pair_loss(u: torch.Tensor, v: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error between cos(u, v) and the pair's target (1 same class, 0 different)."""
    return torch.nn.functional.mse_loss(torch.nn.functional.cosine_similarity(u.float(), v.float(), dim=-1),
                                        target.float())


def check_usable(cfg, modality: str) -> None:
    """Before any file is written: the strategy trains text encoders, with nothing else in the loss."""
    if modality != "text":
        raise ValueError(f"strategy 'contrastive' fine-tunes text encoders; {cfg.backbone} is an "
                         f"{modality} model (use two_phase, partial:K or full)")
    for name, flag in (("reg", "--reg"), ("unlabelled", "--unlabelled")):
        if getattr(cfg, name, None):
            raise ValueError(f"strategy 'contrastive' takes no {flag}: its encoder phase trains on pairs "
                             "only (use two_phase or lora:r=R for a regularised or semi-supervised run)")
