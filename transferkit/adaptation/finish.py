"""The end of an `adapt` run: model.safetensors (the last step's weights), metrics.json, history.csv
and report.html with the source/target accuracy curves."""

from __future__ import annotations

import html
import json
from pathlib import Path

from ..store import checkpoint as ck
from ..infer.predict import predict_probs
from ..engine.run_files import write_history
from ..report import png_data_uri, write_report
from ..report.metrics import classification_metrics
from ..strategies import parameter_summary


def save_model(path: Path, model) -> None:
    """The run's model in `train`'s format, so `load_run` (predict, evaluate) reads it."""
    meta = {"source": model.spec.source.id, "weights_hash": model.spec.source.weights_hash,
            "classes": json.dumps(model.class_names)}
    ck.atomic_save_tensors(path, model.state_dict(), meta)


def finish(run: Path, cfg, model, state, domains, data, accel, log) -> dict:
    # no target labels may choose the checkpoint: the model is the last step's
    save_model(run / "model.safetensors", model)
    metrics: dict = {"method": cfg.method, "n_train": len(domains.source_train), "n_val": len(domains.source_val),
                     "n_test": len(domains.target_test), "n_target": len(domains.target)}
    if data.target_test is not None:
        probs, y = predict_probs(model, data.target_test, accel.device, tta=cfg.tta, autocast=accel.autocast)
        metrics.update(classification_metrics(y, probs, model.class_names))
        metrics["data"] = cfg.target_test
    if data.source_val is not None:
        probs, y = predict_probs(model, data.source_val, accel.device, tta=cfg.tta, autocast=accel.autocast)
        m = classification_metrics(y, probs, model.class_names)
        metrics["source_val"] = {k: m[k] for k in ("accuracy", "macro_f1", "nll", "n")}
    metrics["steps"] = state.step
    metrics["parameters"] = parameter_summary(model)
    metrics["skipped"] = domains.skipped
    ck.atomic_write_json(run / "metrics.json", metrics)
    write_history(run, state.history)
    write_report(run, cfg.train_config(), model, metrics, state.history, accuracy_label="target test accuracy",
                 extra_html=[_section(cfg, metrics, state.history)])
    src = metrics.get("source_val", {}).get("accuracy")
    log(f"{cfg.method}: source val accuracy {src if src is None else f'{src:.4f}'}"
        + (f", target test accuracy {metrics['accuracy']:.4f}" if "accuracy" in metrics else "") + f" -> {run}")
    return metrics


def _section(cfg, metrics: dict, history: list[dict]) -> str:
    e = html.escape
    src = metrics.get("source_val", {}).get("accuracy")
    rows = [("method", e(cfg.method)), ("transfer loss weight", f"{cfg.trade_off:g}"),
            ("source", e(cfg.source)), ("target (unlabelled)", f"{e(cfg.target)} ({metrics['n_target']} images)"),
            ("source validation accuracy", "–" if src is None else f"{src:.3f}"),
            ("target test accuracy", f"{metrics['accuracy']:.3f} on {e(str(cfg.target_test))}"
             if "accuracy" in metrics else "– (no --target-test)")]
    table = "<table>" + "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in rows) + "</table>"
    note = ("<p class='sub'>Target labels were read only to report these numbers; the saved model is the "
            "last step's (nothing was selected with them).</p>")
    curve = _accuracy_curve(history)
    img = f"<img src='{curve}' alt='source and target accuracy'>" if curve else ""
    return "<h2>Domain adaptation</h2>" + table + note + img


def _accuracy_curve(history: list[dict]) -> str | None:
    series = [(k, label) for k, label in (("val_accuracy", "source validation"), ("target_accuracy", "target test"))
              if any(k in r for r in history)]
    if not series or len(history) < 2:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for k, label in series:
        pts = [(r["step"], r[k]) for r in history if k in r]
        ax.plot(*zip(*pts), marker=".", label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title("accuracy over training")
    ax.grid(alpha=.3)
    ax.legend()
    return png_data_uri(fig)
