"""Rank candidate source models on a target task before training anything.

Each source is scored on the frozen pooled features of the target's training split:

- LogME (You et al., ICML 2021): the log evidence of a Bayesian linear model from the features to
  the one-hot labels (see `transferkit.choose.transferability.logme`). Works for any backbone.
- LEEP (Nguyen et al., ICML 2020): how well the source's own classifier outputs, pushed through the
  empirical conditional P(target | source class), predict the target labels (`transferkit.choose.transferability.leep`).
  Only for sources that keep their classifier (`Backbone.source_head`, e.g. ImageNet models).

Higher is better for both; only scores computed on the same data are comparable. A ranking costs one
forward pass over the training split per source: seconds to minutes, not a training run.
"""

from __future__ import annotations

import time

import torch

from ..data import load_task
from ..infer.features import frozen_features
from ..models import Backbone, attach_head, load_backbone
from .transferability import cv_probe_accuracy, leep, logme


@torch.no_grad()
def score_source(backbone: Backbone, feats: torch.Tensor, labels: torch.Tensor) -> dict:
    """LogME of the features, and LEEP when the backbone kept its source classifier."""
    t0 = time.time()
    row = {"logme": logme(feats.double().numpy(), labels.numpy())}
    row["logme_seconds"] = round(time.time() - t0, 3)
    row["leep"] = None
    if backbone.source_head is not None:
        head = backbone.source_head.to(feats.device).eval()
        probs = head(feats).double().softmax(-1).numpy()
        row["leep"] = leep(probs, labels.numpy())
    return row


def rank_sources(data: str, backbones: list[str | Backbone], *, shots: int | None = None,
                 seed: int = 0, image_size: int | None = None, batch_size: int = 64,
                 val: str | None = None, test: str | None = None, val_fraction: float = 0.2,
                 test_fraction: float = 0.2, text_col: str = "text", label_col: str = "label",
                 pooling: str | None = None, max_length: int | None = None, cache=None,
                 task=None, cv: bool = False, budget_seconds: float | None = None,
                 log=print) -> list[dict]:
    """Score every source on the frozen features of DATA's training split (the same split that
    `transferkit train` with this seed/shots would use) and return rows sorted by LogME, best first.

    `backbones` are source ids (`bundled:efficientnet_lite0`, `timm:NAME@random`, ...) or already
    loaded `Backbone`s. Each row: source, logme, leep (None without a source classifier),
    feature_dim, n, seconds (load + features + scores). With `cv`, also the cross-validated
    accuracy of a logistic-regression probe (`cv_accuracy`, `cv_accuracy_se`, `cv_folds`; None when
    a class has a single label), images with their mirrored copies. `task`: the already loaded
    splits (DATA is then not read again). `budget_seconds`: sources after the budget is spent are
    not scored (their rows are missing).
    """
    if not backbones:
        raise ValueError("rank needs at least one backbone (--backbones SRC1,SRC2,...)")
    if task is None:
        task = load_task(data, val=val, test=test, shots=shots, seed=seed, val_fraction=val_fraction,
                         test_fraction=test_fraction, text_col=text_col, label_col=label_col)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    start = time.time()
    for src in backbones:
        if budget_seconds is not None and rows and time.time() - start > budget_seconds:
            log(f"{src if isinstance(src, str) else src.source.id}: not scored (budget spent)")
            continue
        t0 = time.time()
        torch.manual_seed(seed)  # a random-init source (`@random`) is then the one `train` would build
        bb = src if isinstance(src, Backbone) else load_backbone(src, pooling=pooling, max_length=max_length)
        if bb.modality != task.modality:
            raise ValueError(f"{bb.source.id} is a {bb.modality} model but {data} holds {task.modality} data")
        flip = cv and bb.modality == "image"
        feats, labels, flipped = frozen_features(bb, task.train, task.classes, image_size=image_size,
                                                 batch_size=batch_size, device=device, cache=cache, flip=flip)
        row = {"source": bb.source.id, **score_source(bb, feats, labels),
               "feature_dim": int(feats.shape[1]), "n": int(len(labels))}
        if cv:
            est = cv_probe_accuracy(feats.double().cpu().numpy(), labels.cpu().numpy(),
                                    None if flipped is None else flipped.double().cpu().numpy(), seed=seed)
            row.update({"cv_accuracy": est and est["accuracy"], "cv_accuracy_se": est and est["accuracy_se"],
                        "cv_folds": est and est["folds"]})
        row["seconds"] = round(time.time() - t0, 2)
        log(f"{row['source']}: LogME {row['logme']:.4f}"
            + (f", LEEP {row['leep']:.4f}" if row["leep"] is not None else "")
            + (f", CV probe accuracy {row['cv_accuracy']:.3f} ± {row['cv_accuracy_se']:.3f}"
               if row.get("cv_accuracy") is not None else "")
            + f" ({row['seconds']:.1f}s)")
        rows.append(row)
        del bb
    rows.sort(key=lambda r: -r["logme"])
    for i, r in enumerate(rows, start=1):
        r["rank"] = i
    return rows


def format_ranking(rows: list[dict]) -> str:
    """A Markdown table of `rank_sources` rows (with the CV probe column when it was computed)."""
    cv = any("cv_accuracy" in r for r in rows)
    lines = ["| rank | source | LogME | LEEP |" + (" CV probe accuracy |" if cv else "") + " feature dim | n | seconds |",
             "|---:|---|---:|---:|" + ("---:|" if cv else "") + "---:|---:|---:|"]
    for r in rows:
        lp = "–" if r["leep"] is None else f"{r['leep']:.4f}"
        acc = "" if not cv else (" – |" if r.get("cv_accuracy") is None
                                 else f" {r['cv_accuracy']:.3f} ± {r['cv_accuracy_se']:.3f} |")
        lines.append(f"| {r['rank']} | {r['source']} | {r['logme']:.4f} | {lp} |{acc} {r['feature_dim']} | "
                     f"{r['n']} | {r['seconds']:.1f} |")
    return "\n".join(lines)
