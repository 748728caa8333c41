"""`--strategy auto` (the default): choose between the probe and fine-tuning from held-out evidence.

- With a validation split (more than a few labels per class, or `--val`): LP-FT (`two_phase`), whose
  WiSE-FT weight is chosen on validation among 0 (the probe itself), 0.25, ..., 1 (the fine-tuned
  endpoint); so the probe is kept exactly when validation says so, and the run records it.
- With few labels (no validation split): the training labels are cross-validated
  (`transferkit.choose.cv`): the probe's C over k folds on frozen features (seconds), and LP-FT over
  3 folds, scored at every WiSE weight on the same held-out labels. The weight with the best held-out
  accuracy is kept; w = 0 means the probe wins and the final model is the probe (`linear_probe`, its C
  chosen by cross-validation); otherwise `two_phase` with that weight, trained on every label.
- A randomly initialised backbone (`@random`) has nothing to probe: `full`.
- With a single label in some class no fold can be formed: `two_phase` with the benchmark's
  default WiSE weight, and the log says the choice had no held-out evidence.

The evidence (tables, folds, seconds) and the reason are logged, written to OUT/auto/choice.json
and put into metrics.json and the report under `choice`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ..config import TrainConfig

FT_FOLDS = 3


def resolve_auto(cfg: TrainConfig, log=print) -> tuple[TrainConfig, dict]:
    """The concrete configuration `auto` stands for on this task, and the evidence for it."""
    from ..engine.build import load_task_for
    from ..engine.fit import WISE_DEFAULT
    from ..models import parse_source
    from .cv import best_wise, cv_finetune
    from ..engine.build import build_model
    from ..engine.runfolder import check_out_dir, claim_out_dir
    check_out_dir(cfg)
    task = load_task_for(cfg)
    _, _, pretrained = parse_source(cfg.backbone)
    # the model builds (source, class texts, input adaptation) before anything is written
    build_model(dataclasses.replace(cfg, strategy="two_phase" if pretrained else "full"), task.classes)
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
        from .unlabelled import cv_pool_or_not
        ft, cfg, pool_choice = cv_pool_or_not(cfg, task, root, k=FT_FOLDS, log=log)
    else:
        ft = cv_finetune(cfg, task, root / "cv", k=FT_FOLDS, log=log)
    if ft is None:
        return _chosen(cfg, root, "two_phase", WISE_DEFAULT, "too few labels per class to cross-validate: "
                       f"LP-FT with the default WiSE-FT weight {WISE_DEFAULT} (no held-out evidence)", {}, log)
    best = best_wise(ft["table"])
    probe = ft["table"][0]
    evidence = {"finetune_cv": ft, "probe_cv": probe, "best": best}
    if pool_choice:
        evidence["unlabelled"] = pool_choice
    if best["wise"] == 0.0:
        return _chosen(cfg, root, "linear_probe", None,
                       f"the probe scored best held out ({probe['accuracy']:.3f} ± {probe['accuracy_se']:.3f}); "
                       "no fine-tuned interpolation beat it", evidence, log)
    return _chosen(cfg, root, "two_phase", best["wise"],
                   f"fine-tuning with WiSE-FT weight {best['wise']:g} scored {best['accuracy']:.3f} ± "
                   f"{best['accuracy_se']:.3f} held out against {probe['accuracy']:.3f} ± "
                   f"{probe['accuracy_se']:.3f} for the probe", evidence, log)


def _chosen(cfg: TrainConfig, root: Path, strategy: str, wise, why: str, evidence: dict,
            log) -> tuple[TrainConfig, dict]:
    info = {"strategy": strategy, "wise": wise, "reason": why, **evidence}
    log(f"auto -> {strategy}" + (f" (wise {wise:g})" if wise is not None else "") + f": {why}")
    root.mkdir(parents=True, exist_ok=True)
    (root / "choice.json").write_text(json.dumps(info, indent=2) + "\n")
    return dataclasses.replace(cfg, strategy=strategy, wise=wise), info
