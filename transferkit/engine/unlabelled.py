"""`train --unlabelled`: wiring the unlabelled pool (data/pool.py) into a run.

- Head phases (the probe, LP-FT's first phase): AdaBN (engine/adabn.py), kept only when the probe
  scores better held out with the re-estimated BatchNorm statistics (on the head fit's own
  validation split or cross-validation folds; ties keep the source statistics).
- Phases that train with SGD (two_phase's second phase, full, partial): FixMatch
  (engine/fixmatch.py) with weight `--unlabelled-weight`, `--unlabelled-ratio` unlabelled images
  per labelled one, threshold `--unlabelled-threshold`.

What was used is recorded in the run state and written to metrics.json (`unlabelled`) and the report.
"""

from __future__ import annotations

from ..config import TrainConfig
from ..data.pool import TEST, Pool, read_pool


def check_pool(cfg: TrainConfig, task=None, log=print) -> Pool:
    """Read the pool of `cfg` against its task (the run's splits, else read here), so a bad pool stops
    the run before anything is written (train calls it before `auto` claims the run folder)."""
    from .build import load_task_for
    return read_pool(cfg.unlabelled, task if task is not None else load_task_for(cfg), log=lambda *a, **k: None)


def setup_unlabelled(cfg: TrainConfig, task, model, plan, state, *, resume, log, num_processes: int = 1):
    """(pool loader for AdaBN or None, FixMatch term or None) for this run; fills `state.unlabelled`."""
    if not cfg.unlabelled:
        return None, None
    from ..infer.loaders import eval_loader, make_dataset
    has_head = any(p.head_only for p in plan.phases)
    has_sgd = any(not p.head_only for p in plan.phases)
    fixmatch_on = has_sgd and cfg.unlabelled_weight > 0
    plain_probe = not (plan.multi_stage or getattr(model, "head_prior", None) is not None
                       or hasattr(model.head, "fit_prototypes"))
    if not fixmatch_on and not (has_head and plain_probe):  # nothing here can use the pool: not read
        if not state.unlabelled:
            state.unlabelled = {"source": cfg.unlabelled, "transductive": cfg.unlabelled == TEST, "used": [],
                                "weight": 0.0, "reason": f"{plan.strategy}: AdaBN is gated on the plain probe "
                                "only, and FixMatch needs a phase that trains (with --unlabelled-weight > 0)"}
        return None, None
    pool = read_pool(cfg.unlabelled, task, log=log if not resume else (lambda *a, **k: None))
    if fixmatch_on and num_processes > 1:
        from ..config import ConfigError
        raise ConfigError("'unlabelled' (--unlabelled): FixMatch runs in a single process for now; "
                          "run without accelerate launch/torchrun, or set --unlabelled-weight 0 (AdaBN only)")
    if not state.unlabelled:
        state.unlabelled = {**pool.record, "used": [], "weight": cfg.unlabelled_weight if fixmatch_on else 0.0}
        if not has_head:
            state.unlabelled["adabn"] = {"applied": False, "reason": f"{plan.strategy} has no head phase to "
                                         "gate it on held-out labels"}
    loader = None
    if has_head:
        ds = make_dataset(model, pool.items + list(task.train), train=False, augment=False,
                          image_size=cfg.image_size, seed=cfg.seed)
        loader = eval_loader(model, ds, cfg.batch_size * 2, cfg.num_workers)
    fixmatch = None
    if fixmatch_on:
        from .fixmatch import FixMatch
        rec = state.unlabelled.setdefault("fixmatch", {"weight": cfg.unlabelled_weight,
                                                       "threshold": cfg.unlabelled_threshold,
                                                       "ratio": cfg.unlabelled_ratio})
        if "fixmatch" not in state.unlabelled["used"]:
            state.unlabelled["used"].append("fixmatch")
        fixmatch = FixMatch(model, pool.items, batch_size=cfg.batch_size, ratio=cfg.unlabelled_ratio,
                            threshold=cfg.unlabelled_threshold, weight=cfg.unlabelled_weight,
                            image_size=cfg.image_size, seed=cfg.seed, record=rec)
    return loader, fixmatch


def adabn_in_head_phase(model, cfg: TrainConfig, state, pool_loader, train_loader, val_loader, views, labels,
                        val, folds, device, autocast, cache):
    """The AdaBN gate of a head phase: (train views, val views or None) of the statistics kept,
    compared on the plain and mirrored views (augmented copies, if any, are made afterwards with
    the statistics kept). Only the plain linear probe is gated (C by choose_c on the same folds or
    validation split); other heads keep the source statistics."""
    from .adabn import gate
    from .headfit import choose_c
    from ..infer.probe_views import frozen_views, plain_probe, view_counts
    if not plain_probe(model):
        state.unlabelled["adabn"] = {"applied": False, "reason": "only the plain linear probe is gated"}
        return views, val
    how_views = view_counts(cfg, views)

    def features():
        views, _, val = frozen_views(model, cfg, train_loader, val_loader, device, autocast, cache)
        return views, val

    def held_out(f):
        views, val = f
        choice = choose_c(model.head, views, labels, val=val, folds=folds,
                          label_smoothing=cfg.label_smoothing, **how_views)
        return choice.best_row.get("accuracy")

    kept, record = gate(model.backbone, pool_loader, device, (views, val), features, held_out, autocast=autocast)
    state.unlabelled["adabn"] = record
    if record["applied"] and "adabn" not in state.unlabelled["used"]:
        state.unlabelled["used"].insert(0, "adabn")
    return kept


def unlabelled_record(state) -> dict | None:
    """metrics.json `unlabelled`: the pool and what it was used for; with `--strategy auto`, also
    whether auto kept it (and on what evidence)."""
    chosen = (state.choice or {}).get("unlabelled")
    if not state.unlabelled and not chosen:
        return None
    out = dict(state.unlabelled) if state.unlabelled else {k: chosen[k] for k in ("source", "transductive", "count")
                                                           if k in chosen}
    if not state.unlabelled:
        out.update(used=[], weight=0.0)
    if chosen:
        out["chosen"] = chosen.get("reason")
    return out
