"""Which weights a run keeps: validation scored as the test split is, the best checkpoint by the
selection metric, `last/` for an exact resume, and WiSE-FT's interpolation with the probe."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from ..config import TrainConfig
from ..infer.sharded import predict_probs_sharded
from ..infer.tta import views_of
from ..store import checkpoint as ck
from . import interrupt
from .run_state import RunState
from .tracking import log_evaluation


# WiSE-FT (Wortsman et al., CVPR 2022) weight of the fine-tuned weights when no validation split
# can choose it (few labels): measured by benchmarks/fewshot.py.
WISE_DEFAULT = 0.5


WISE_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)


def wise_applies(plan) -> bool:
    """WiSE-FT interpolates between the probe (source backbone + fitted head) and the fine-tuned
    weights: it needs a head phase followed by a phase that trains the whole backbone."""
    return (len(plan.phases) == 2 and plan.phases[0].head_only and not plan.phases[1].frozen
            and not plan.lora)


def wise_mix(lp: dict, ft: dict, w: float) -> dict:
    """(1 - w) * lp + w * ft for floating tensors; integer buffers (BatchNorm's counter) from ft."""
    return {k: ((1 - w) * lp[k].to(device=v.device, dtype=v.dtype) + w * v) if v.is_floating_point() else v
            for k, v in ft.items()}


def apply_wise(run: Path, cfg: TrainConfig, model, state: RunState, val_loader, device, autocast,
                log, write: bool = True) -> None:
    """WiSE-FT (Wortsman et al., CVPR 2022): replace the fine-tuned weights by an interpolation
    with the probe solution. The weight is `--wise`, else chosen on the validation split, else
    WISE_DEFAULT (few labels: fixed by the benchmark; `--strategy auto` chooses it by CV)."""
    lp = ck.load_tensors(run / "lp_model.safetensors")
    ft = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if cfg.wise is not None:
        w, how, rows = float(cfg.wise), "given", []
    elif len(val_loader.dataset):
        rows = []
        for cand in WISE_GRID:
            model.load_state_dict(wise_mix(lp, ft, cand))
            rows.append({"wise": cand, **validate(model, val_loader, device, autocast, tta=cfg.tta, views=views_of(cfg))})
        w, how = choose_wise(rows, cfg.metric)
    else:
        w, how, rows = WISE_DEFAULT, "default", []
    model.load_state_dict(wise_mix(lp, ft, w))
    state.wise = {"weight": w, "chosen": how, "table": rows}
    log(f"WiSE-FT: weights = {1 - w:g} x probe + {w:g} x fine-tuned ({how})")
    if write:
        save_model(run / "model.safetensors", model)


def choose_wise(rows: list[dict], metric: str = "loss") -> tuple[float, str]:
    """(weight, how) from the validation rows of the WiSE-FT grid: the best validation accuracy
    (macro-F1 under `--metric macro_f1`), ties to the lower validation loss, then to the smaller
    weight. The rule of auto's cross-validation (choose.cv.best_wise), and the score the report
    headlines; `--metric loss` selects checkpoints (validation_score), where a lucky step of a run
    drifting away from the probe is the risk, not the weight among five fixed ones."""
    score = "macro_f1" if metric == "macro_f1" else "accuracy"
    best = max(rows, key=lambda r: (round(r[f"val_{score}"], 9), -r["val_loss"]))
    return best["wise"], f"on validation {score.replace('_', '-')}, ties to the lower loss"


def validate(model, loader, device, autocast, tta: bool = False, accel=None, step: int = 0,
              views: int = 0) -> dict:
    """Validation metrics, scored exactly as the test split is (same test-time augmentation);
    with `accel`, also sent to its experiment trackers at `step`."""
    if not len(loader.dataset):
        return {}
    probs, y = predict_probs_sharded(model, loader, device, tta=tta, autocast=autocast, accel=accel,
                                     views=views)
    from ..report.metrics import classification_metrics
    m = classification_metrics(y, probs, model.class_names)
    log_evaluation(accel, m, model.class_names, step)
    return {"val_accuracy": round(m["accuracy"], 6), "val_macro_f1": round(m["macro_f1"], 6),
            "val_loss": round(m["nll"], 6)}


def validation_score(row: dict, metric: str) -> float:
    """Higher is better. `loss` (the default) selects by validation NLL: on the ~100 validation
    items of a few-shot split, accuracy moves in 1% steps and a lucky step of a fine-tuning run
    that is already drifting away from the probe (its NLL rising) would win the selection."""
    if metric == "loss" and "val_loss" in row:
        return -row["val_loss"]
    if f"val_{metric}" in row:
        # ties on accuracy (common on small val sets) go to the lower validation loss
        return row[f"val_{metric}"] - 1e-6 * row.get("val_loss", 0.0)
    return -row.get("train_loss", 0.0) if row.get("train_loss", "") != "" else -math.inf


def save_best_if_better(run: Path, model, state: RunState, row: dict, metric: str = "loss",
                         write: bool = True) -> bool:
    """Track the best validation score on every process (so early stopping agrees across ranks);
    only the main process writes the weights."""
    score = validation_score(row, metric)
    if score > state.best_score:
        state.best_score, state.best_step, state.evals_since_best = score, state.global_step, 0
        if write:
            save_model(run / "model.safetensors", model)
        return True
    state.evals_since_best += 1
    return False


def save_model(path: Path, model) -> None:
    meta = {"source": model.spec.source.id, "weights_hash": model.spec.source.weights_hash,
            "classes": json.dumps(model.class_names)}
    ck.atomic_save_tensors(path, model.state_dict(), meta)


def save_last(run: Path, model, optimizer, state: RunState) -> None:
    frozen = [i for i, s in enumerate(model.spec.stages)
              if not any(p.requires_grad for n, p in model.backbone.named_parameters() if n in set(s.params))]
    ck.write_last(run, model, optimizer, state.__dict__, frozen_stages=frozen)


def stop_or_checkpoint(run: Path, model, optimizer, state: RunState, cfg: TrainConfig, n_steps: int, clock,
                       bar, log, write: bool = True) -> bool:
    """After a step of a training loop: when --stop-after or a signal asks, write last/ and return True
    (the loop stops); else write last/ when --checkpoint-every / --checkpoint-seconds is due. `write`:
    this process writes (the main one of a distributed run)."""
    by_flag = cfg.stop_after and state.global_step >= cfg.stop_after
    if (by_flag or interrupt.requested()) and state.step < n_steps:
        if write:
            save_last(run, model, optimizer, state)
        if bar is not None:
            bar.close()
        if by_flag:
            log(f"stopped after {state.global_step} steps; continue with --resume {run}")
        return True
    if write and state.step < n_steps and clock.due(state.step, time.time()):
        save_last(run, model, optimizer, state)
        clock.saved(state.step, time.time())
    return False
