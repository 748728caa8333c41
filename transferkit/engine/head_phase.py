"""The head phase of a run: the head fitted on frozen features (a linear probe with C chosen on
validation or by cross-validation, the multi-stage probe, class prototypes, or a head pulled
toward a class-name prior), then scored on validation like any other phase."""

from __future__ import annotations

import time

import torch

from ..data import cv_folds
from ..data.feature_cache import feature_cache_for
from ..infer.loaders import eval_loader
from ..infer.probe_views import augmented_views, frozen_views, n_probe_views, plain_probe, view_counts
from ..infer.tta import views_of
from ..models.multi_probe import MultiStageFeatures
from .headfit import fit_multistage_probe, fit_probe, linear_of
from .run_state import RunState
from .selection import validate


def head_phase(model, cfg, state: RunState, plain_train, val_loader, device, autocast, log,
                calibrated: bool = False, accel=None, pool=None) -> None:
    """Fit the head on frozen features, C chosen on validation or by cross-validation.
    `calibrated`: fine-tuning follows, so fit with the C of best held-out NLL (see fit_probe)."""
    t0 = time.time()
    loader = eval_loader(model, plain_train, cfg.batch_size * 2, cfg.num_workers)
    cache = feature_cache_for(cfg)  # frozen + deterministic preprocessing: rows come from disk
    views, labels, val = frozen_views(model, cfg, loader, val_loader, device, autocast, cache)
    folds = [] if val is not None else cv_folds(labels.numpy(), cfg.cv_folds, cfg.seed)
    if pool is not None:  # AdaBN, kept only if the probe scores better held out (engine/unlabelled.py)
        from .unlabelled import adabn_in_head_phase
        views, val = adabn_in_head_phase(model, cfg, state, pool, loader, val_loader, views, labels, val, folds,
                                         device, autocast, cache)
    prior = getattr(model, "head_prior", None)
    how_views = view_counts(cfg, views)
    k_aug = n_probe_views(cfg, len(labels), model.spec.modality) if plain_probe(model) else 0
    if k_aug:  # augmented copies to learn from, after the views that score (probe_views.py)
        views = torch.cat([views, augmented_views(model, plain_train.items, cfg, device, autocast, k_aug)])
        how_views["fit_views"] = len(views)
    extra = {"probe_views": k_aug} if k_aug else {}
    if hasattr(model.head, "fit_prototypes"):  # --strategy prototypes: class means, nothing to fit
        from .headfit import fit_head
        X, Y = views[:how_views["fit_views"]].reshape(-1, views.shape[-1]), labels.repeat(how_views["fit_views"])
        info = fit_head(model.head, X, Y, val=(val[0][0], val[1]) if val is not None else None)
        from .headfit import HeadChoice
        # no C to choose: the one free number is the scale, picked by validation NLL when there is one
        choice = HeadChoice(C=1.0, C_nll=1.0, method="val" if val is not None else "default")
        extra = {"scale": info["scale"]}
    elif prior is not None:  # class names as the head's prior (transferkit.zeroshot.prior)
        from .headfit import fit_head
        X, Y = views[:how_views["fit_views"]].reshape(-1, views.shape[-1]), labels.repeat(how_views["fit_views"])
        vf = (val[0][0], val[1]) if val is not None else None
        info = fit_head(model.head, X, Y, val=vf, label_smoothing=cfg.label_smoothing, prior=prior)
        from .headfit import HeadChoice
        choice = HeadChoice(C=info["C"], C_nll=info["C"], method="val" if vf else "default")
        extra = {"prior_scale": info.get("prior_scale")}
    elif isinstance(model.backbone, MultiStageFeatures):
        choice, blocks, options = fit_multistage_probe(model.backbone, model.head, views, labels, val=val,
                                                       folds=folds, label_smoothing=cfg.label_smoothing,
                                                       **how_views)
        extra = {"blocks": blocks, "layers": model.backbone.layers[:blocks], "options": options}
        log(f"multi-stage probe: {blocks} stage block(s) below the final features "
            f"({', '.join(model.backbone.layers[:blocks]) or 'final features only'})")
    else:
        choice = fit_probe(model.head, views, labels, val=val, folds=folds, calibrated=calibrated,
                           label_smoothing=cfg.label_smoothing, **how_views)
        if (radius := getattr(linear_of(model.head), "radius", None)) is not None:  # set by fit_probe
            extra["feature_radius"] = float(radius)  # --feature-norm: the length features were rescaled to
    C = choice.C_nll if calibrated else choice.C
    state.head_fit = {"C": C, "C_best_accuracy": choice.C, "C_best_nll": choice.C_nll,
                      "method": choice.method, "folds": choice.folds, "table": choice.table,
                      "estimate": choice.estimate(), **extra}
    if "scale" in extra:
        state.head_fit.update(C=None, C_best_accuracy=None, C_best_nll=None,
                              estimate={**choice.estimate(), "C": None})
    row = {"phase": state.phase, "step": state.global_step, "epoch": state.epoch, "lr": "",
           "train_loss": "", "seconds": round(time.time() - t0, 2)}
    row.update(validate(model, val_loader, device, autocast, tta=cfg.tta, views=views_of(cfg), accel=accel,
                         step=state.global_step))
    state.history.append(row)
    if "scale" in extra:
        log(_prototypes_line(extra["scale"], choice.method, row))
        return
    est = choice.estimate()
    how = {"val": "on validation", "cv": f"by {choice.folds}-fold cross-validation",
           "default": "by default (too few labels to cross-validate)"}[choice.method]
    log(f"head fit on frozen features: C={C} chosen {how}"
        + (f", held-out accuracy {est['accuracy']:.4f}" if est.get("accuracy") is not None else "")
        + (f" ± {est['accuracy_se']:.4f}" if est.get("accuracy_se") is not None else "")
        + f" ({row['seconds']:.1f}s)")


def _prototypes_line(scale: float, method: str, row: dict) -> str:
    how = "on validation NLL" if method == "val" else "by default (no validation split)"
    acc = f", val acc {row['val_accuracy']:.4f}" if "val_accuracy" in row else ""
    return (f"prototype head (nearest class mean, no C): scale {scale:g} chosen {how}{acc} "
            f"({row['seconds']:.1f}s)")
