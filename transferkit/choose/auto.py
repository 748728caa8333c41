"""`--strategy auto` (the default): choose between the probe and fine-tuning from held-out evidence.

- With a validation split (more than a few labels per class, or `--val`): LP-FT (`two_phase`), whose
  WiSE-FT weight is chosen on validation among 0 (the probe itself), 0.25, ..., 1 (the fine-tuned
  endpoint); so the probe is kept exactly when validation says so, and the run records it.
- With few labels (no validation split): the training labels are cross-validated
  (`transferkit.choose.cv`) over 3 folds, every candidate on the same held-out labels: LP-FT scored
  at every WiSE weight (w = 0 is the probe it starts from, `linear_probe`), and for images the
  multi-stage probe (`multi_probe`, whose blocks and C are chosen inside each fold), for text
  contrastive fine-tuning (`contrastive`: SetFit-style pairs, then the head). The candidate
  trained on every label is the cheapest within one standard error of the best held-out accuracy
  (`pick`; from the cheapest: linear_probe, multi_probe, fine-tuning, contrastive).
- A randomly initialised backbone (`@random`) has nothing to probe: `full`.
- With a single label in some class no fold can be formed: `two_phase` at WiSE-FT weight
  `ONE_LABEL_WISE`, the fixed choice that scored best on development seeds at one label per class
  (benchmarks/results/auto_one_label.md), and the log says the choice had no held-out evidence.

The evidence (tables, folds, seconds) and the reason are logged, written to OUT/auto/choice.json
and put into metrics.json and the report under `choice`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ..config import TrainConfig

FT_FOLDS = 3
# one label in a class: nothing to cross-validate. Of the fixed choices (probe, multi-stage probe, LP-FT
# at each WiSE-FT weight) scored on development seeds 0-5 at one label per class, LP-FT at 0.25 had the
# best mean and worst seed (+0.08 and -2.1 points against the strong probe; 0.5: -0.19 and -5.2)
ONE_LABEL_WISE = 0.25


def resolve_auto(cfg: TrainConfig, log=print, *, task=None, spare=None) -> tuple[TrainConfig, dict]:
    """The concrete configuration `auto` stands for on this task, and the evidence for it.

    `task`: the run's splits, read once by `train` (else read here). `spare`: an
    `engine.build.SpareModel` that keeps the model built to check the configuration before anything
    is written, for the first run that builds the same model (a fold, or the final run)."""
    from ..engine.build import SpareModel, load_task_for
    from ..engine.fit import default_feature_norm
    from ..engine.input_kind import settle_inputs
    from ..models import parse_source
    from .cv import cv_finetune
    from ..store.runfolder import check_out_dir, claim_out_dir
    check_out_dir(cfg)
    task = task if task is not None else load_task_for(cfg)
    cfg = settle_inputs(cfg, task)
    spare = spare if spare is not None else SpareModel()
    _, _, pretrained = parse_source(cfg.backbone)
    # the model builds (source, class texts, input adaptation) before anything is written
    first = dataclasses.replace(cfg, strategy="two_phase" if pretrained else "full")
    # as the first fold (or final run) settles it: the spare is the model that run builds
    spare.build(dataclasses.replace(first, feature_norm=default_feature_norm(first, task)), task.classes)
    claim_out_dir(cfg, overwrite=cfg.overwrite, log=log)  # OUT/auto is written before the run starts
    root = Path(cfg.out) / "auto"
    if not pretrained:
        return _chosen(cfg, root, "full", None, "a randomly initialised backbone has no features to probe: "
                       "everything trains", {}, log)
    if task.val:
        return _chosen(cfg, root, "two_phase", None, f"validation split of {len(task.val)} items: LP-FT with "
                       "the WiSE-FT weight chosen on it (0 keeps the probe)", {}, log)
    log(f"auto: {len(task.train)} training labels, no validation split: cross-validating the probe "
        f"and fine-tuning ({FT_FOLDS} folds)")
    pool_choice = None
    if cfg.unlabelled:  # the same folds with and without the pool; kept only if it wins held out
        from .pool_cv import cv_pool_or_not
        ft, cfg, pool_choice = cv_pool_or_not(cfg, task, root, k=FT_FOLDS, log=log, spare=spare)
    else:
        ft = cv_finetune(cfg, task, root / "cv", k=FT_FOLDS, log=log, spare=spare)
    if ft is None:
        return _chosen(cfg, root, "two_phase", ONE_LABEL_WISE, "too few labels per class to cross-validate: "
                       f"LP-FT at WiSE-FT weight {ONE_LABEL_WISE}, chosen in advance for one label per class "
                       "(no held-out evidence)", {}, log)
    evidence = {"finetune_cv": ft, "probe_cv": ft["table"][0]}
    if pool_choice:
        evidence["unlabelled"] = pool_choice
    multi = contrastive = None
    if task.modality == "image":
        # --feature-norm is the linear probe's: the multi-stage probe standardises its own features
        mp = cv_finetune(dataclasses.replace(cfg, feature_norm=None), task, root / "cv_multi_probe", k=FT_FOLDS,
                         strategy="multi_probe", log=log)
        multi = mp["table"][0] if mp else None
        evidence["multi_probe_cv"] = multi
    elif task.modality == "text" and not (cfg.reg or cfg.unlabelled):  # contrastive takes neither
        ct = cv_finetune(cfg, task, root / "cv_contrastive", k=FT_FOLDS, strategy="contrastive", log=log)
        contrastive = ct["table"][-1] if ct else None
        evidence["contrastive_cv"] = contrastive
    strategy, wise, row, candidates = pick(ft["table"], multi, contrastive)
    evidence["best"] = {"strategy": strategy, **row}
    # the chosen row's fold score was selected among every row compared (probe, each WiSE-FT weight,
    # the multi-stage probe or contrastive fine-tuning) on the same folds: an optimistic estimate of
    # the chosen candidate, and labelled so wherever shown
    evidence["compared"] = len(ft["table"]) + (multi is not None) + (contrastive is not None)
    others = "; ".join(f"{_name(s, w)} {r['accuracy']:.3f} ± {r['accuracy_se']:.3f}"
                       for s, w, r in candidates if (s, w) != (strategy, wise))
    why = f"{_name(strategy, wise)} held out {row['accuracy']:.3f} ± {row['accuracy_se']:.3f}, the cheapest " \
        "within one standard error of the best" + (f" (against {others})" if others else "")
    if strategy == "linear_probe":
        why += "; no fine-tuned interpolation beat the probe by more than the noise"
    why += f" (chosen among {evidence['compared']} compared on the same folds, so its estimate is optimistic)"
    return _chosen(cfg, root, strategy, wise, why, evidence, log)


def pick(finetune_table: list[dict], multi_probe_row: dict | None = None,
         contrastive_row: dict | None = None) -> tuple[str, float | None, dict, list]:
    """(strategy, WiSE weight, its held-out row, all candidates) from the cross-validated rows, by
    the one-standard-error rule (Breiman et al., 1984): of the candidates whose held-out accuracy is
    within one standard error (over folds) of the best, the cheapest (probe, multi-stage probe,
    fine-tuning at each WiSE-FT weight above 0 from the smallest, contrastive fine-tuning).

    At a few labels per class a fold holds one or two items of each class: held-out accuracy moves
    in steps of several points and the best of 5-7 candidates is partly the luckiest, so a costlier
    candidate must win by more than the noise. Rules compared on recorded evidence
    (benchmarks/fewshot.py --auto-rules): the best accuracy, the lowest log loss, this rule and a
    mix; log loss led on seeds 0-2 and then lost to the strong probe on seeds 3-5; on seeds 0-5
    this rule tied it on the mean with no seed below the strong probe by more than 1.3 points (log
    loss: 4.1). On seeds 6-8, run after the choice: +0.2 and +1.2 points, no seed below it."""
    candidates = [("linear_probe", None, finetune_table[0])] \
        + ([("multi_probe", None, multi_probe_row)] if multi_probe_row else []) \
        + [("two_phase", r["wise"], r) for r in finetune_table[1:]] \
        + ([("contrastive", None, contrastive_row)] if contrastive_row else [])
    best = max(candidates, key=lambda c: round(c[2]["accuracy"], 9))[2]
    bar = best["accuracy"] - (best.get("accuracy_se") or 0.0)
    strategy, wise, row = next(c for c in candidates if c[2]["accuracy"] >= bar - 1e-9)
    return strategy, wise, row, candidates


def _name(strategy: str, wise) -> str:
    return f"fine-tuning with WiSE-FT weight {wise:g}" if strategy == "two_phase" else strategy


def _chosen(cfg: TrainConfig, root: Path, strategy: str, wise, why: str, evidence: dict,
            log) -> tuple[TrainConfig, dict]:
    info = {"strategy": strategy, "wise": wise, "reason": why, **evidence}
    log(f"auto -> {strategy}" + (f" (wise {wise:g})" if wise is not None else "") + f": {why}")
    root.mkdir(parents=True, exist_ok=True)
    (root / "choice.json").write_text(json.dumps(info, indent=2) + "\n")
    # the final run settles what is left unset for the chosen strategy (engine/fit.py), as its folds did
    norm = None if strategy == "multi_probe" else cfg.feature_norm
    return dataclasses.replace(cfg, strategy=strategy, wise=wise, feature_norm=norm), info
