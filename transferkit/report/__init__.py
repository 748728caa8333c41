"""Run reports: metrics.json (see metrics.py) and a self-contained report.html."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np

from .evidence import choices_html, held_out_html, settings_html, table as _table
from .metrics import classification_metrics, expected_calibration_error, most_confused

__all__ = ["write_report", "classification_metrics", "expected_calibration_error", "most_confused",
           "png_data_uri", "plain_text"]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#1d2330;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #dde;
padding-bottom:.2em}.sub{color:#667}.cards{display:flex;gap:1em;flex-wrap:wrap;margin:1em 0}
.card{background:#f4f6fb;border-radius:8px;padding:.7em 1.1em;min-width:120px}
.card b{display:block;font-size:1.5em}table{border-collapse:collapse;margin:.5em 0;font-size:.92em}
td,th{border-bottom:1px solid #e4e6ee;padding:.25em .7em;text-align:right}
th{background:#f4f6fb}td:first-child,th:first-child{text-align:left}
img{max-width:100%}.grid{display:grid;grid-template-columns:1fr 1fr;gap:1em}
pre{background:#f7f7fa;padding:.8em;border-radius:6px;overflow:auto;font-size:.85em}
.low{color:#b3261e;font-weight:600}.card.main{background:#e6ecfa}.card.main b{font-size:2.1em}
.evidence{background:#fafaf4;border-left:3px solid #d8d2a8;padding:.5em 1em;margin:.5em 0 1em}
.evidence ul{margin:.3em 0}details{margin:.5em 0}summary{cursor:pointer;color:#445}
"""


def plain_text(text) -> str:
    """`text` (a class name, a file name, anything from the user's data) for a matplotlib label, drawn
    as it is: every `$` escaped, so that mathtext never parses it (`$x^2$` is not drawn as maths, and
    `$\\bogus{$` cannot make the plot fail). Matplotlib draws `\\$` as `$` in text without maths."""
    return str(text).replace("$", r"\$")


def png_data_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _smooth(ys: list[float]) -> list[float]:
    """A trailing mean over about a fiftieth of the points: the trend of a noisy per-step loss."""
    w = max(1, len(ys) // 50)
    c = np.cumsum(np.insert(np.asarray(ys, dtype=float), 0, 0.0))
    return [float((c[i + 1] - c[max(0, i + 1 - w)]) / (i + 1 - max(0, i + 1 - w))) for i in range(len(ys))]


def _curves(history: list[dict], step_losses=()) -> str | None:
    """Loss (the training loss of every step, with its trend, and the validation loss at each
    validation) and the validation metrics, over optimisation steps. Runs without per-step losses
    (written before they were kept, or by adapt) plot the mean training loss of each validation row."""
    rows = [r for r in history if r.get("step", "") != ""]
    steps_loss = [(s, v) for s, v in step_losses if v is not None and np.isfinite(v)]
    if len(rows) < 2 and len(steps_loss) < 2:  # a probe-only run: nothing to draw a curve of
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    steps = [r["step"] for r in rows]
    vl = [(s, r["val_loss"]) for s, r in zip(steps, rows) if "val_loss" in r]
    if len(steps_loss) >= 2:
        xs, ys = zip(*steps_loss)
        many = len(ys) >= 100  # a noisy band with its trend on top; a short run: the steps themselves
        axes[0].plot(xs, ys, color="#8fa7d6" if many else "#2a4d9b", lw=.7 if many else 1.2,
                     alpha=.6 if many else 1, label="train loss (per step)")
        if many:
            axes[0].plot(xs, _smooth(list(ys)), color="#2a4d9b", lw=1.4, label="train loss (trend)")
    else:
        tl = [(s, r["train_loss"]) for s, r in zip(steps, rows) if r.get("train_loss", "") != ""]
        if tl:
            axes[0].plot(*zip(*tl), label="train loss (mean between validations)", marker=".")
    if vl:
        axes[0].plot(*zip(*vl), label="val loss", marker="o", color="#c0602a")
    axes[0].set_xlabel("step")
    axes[0].set_title("loss")
    if axes[0].lines:
        axes[0].legend()
    va = [(s, r["val_accuracy"]) for s, r in zip(steps, rows) if "val_accuracy" in r]
    vf = [(s, r["val_macro_f1"]) for s, r in zip(steps, rows) if "val_macro_f1" in r]
    if va:
        axes[1].plot(*zip(*va), label="val accuracy", marker=".")
    if vf:
        axes[1].plot(*zip(*vf), label="val macro-F1", marker=".")
    axes[1].set_xlabel("step")
    axes[1].set_title("validation metric")
    axes[1].set_ylim(0, 1.02)
    if va or vf:
        axes[1].legend()
    else:  # few labels: no validation split, the held-out evidence is the cross-validation estimate
        axes[1].text(0.5, 0.5, "no validation split", ha="center", va="center", transform=axes[1].transAxes)
    for ax in axes:
        ax.grid(alpha=.3)
    return png_data_uri(fig)


def confusion_figure(metrics: dict) -> str | None:
    if "confusion_matrix" not in metrics:
        return None
    plt = _plt()
    cm = np.array(metrics["confusion_matrix"], dtype=float)
    names = metrics["class_names"]
    norm = cm / np.clip(cm.sum(1, keepdims=True), 1, None)
    n = len(names)
    fig, ax = plt.subplots(figsize=(min(12, 2 + .55 * n), min(11, 1.6 + .5 * n)))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    labels = [plain_text(c) for c in names]  # class names are data, never mathtext
    ax.set_xticks(range(n), labels, rotation=45, ha="right")
    ax.set_yticks(range(n), labels)
    if n <= 25:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=8,
                            color="white" if norm[i, j] > .5 else "#1d2330")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix (rows normalised)")
    return png_data_uri(fig)


def write_report(run: Path, cfg, model, metrics: dict, history: list[dict], *,
                 errors: list[dict] | None = None, title: str | None = None,
                 accuracy_label: str = "test accuracy", extra_html=(), step_losses=()) -> Path:
    """Write RUN/report.html: one file, images inlined, readable in any browser. The headline is the
    score on the data tested (`accuracy_label`); held-out numbers from before testing come below it,
    each labelled for what it estimates (report.evidence). `errors`: the gallery of worst errors
    (see report.gallery.worst_errors). `extra_html`: sections (trusted HTML made by transferkit)
    placed after the summary. `step_losses`: [step, training loss] pairs for the loss curve."""
    from .gallery import GALLERY_CSS, gallery_html
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>transferkit run {e(str(run))}</title>"
             f"<style>{_CSS}{GALLERY_CSS}</style></head><body>",
             f"<h1>{e(title or Path(run).name)}</h1><div class='sub'>{e(cfg.backbone)} &rarr; {len(model.class_names)} "
             f"classes &middot; strategy <b>{e(cfg.strategy)}</b>"
             + (f" &middot; regularizer <b>{e(cfg.reg)}</b>" if cfg.reg else "") + "</div>"]
    acc = metrics.get("accuracy")
    head = (f"<div class='card main'>{e(accuracy_label)}<b>{'–' if acc is None else f'{acc:.3f}'}</b>"
            + ("<span class='sub'>no test split</span>" if acc is None and metrics.get("n_test") == 0 else "")
            + "</div>")
    cards = [("macro-F1", metrics.get("macro_f1")), ("ECE", metrics.get("ece"))]
    parts.append("<div class='cards'>" + head + "".join(
        f"<div class='card'>{e(k)}<b>{'–' if v is None else f'{v:.3f}'}</b></div>" for k, v in cards)
        + "".join(f"<div class='card'>{k}<b>{metrics.get(k, 0)}</b></div>" for k in ("n_train", "n_val", "n_test"))
        + "</div>")
    parts.append(held_out_html(metrics, history))
    parts += choices_html(metrics)
    parts += list(extra_html)
    curves = _curves(history, step_losses)
    if curves:
        parts.append(f"<h2>Learning curves</h2><img src='{curves}' alt='learning curves'>")
    if "per_class" in metrics:
        pc = metrics["per_class"]
        worst = sorted(pc.items(), key=lambda kv: kv[1]["f1"])
        rows = [[e(c), f"{v['precision']:.3f}", f"{v['recall']:.3f}",
                 f"<span class='{'low' if v['f1'] < metrics['macro_f1'] - .15 else ''}'>{v['f1']:.3f}</span>",
                 v["support"]] for c, v in worst]
        parts.append("<h2>Per class (weakest first)</h2>" + _table(["class", "precision", "recall", "F1", "support"], rows))
        conf = most_confused(metrics)
        if conf:
            parts.append("<h2>Most confused pairs</h2>" + _table(["true", "predicted as", "count"],
                                                                  [[e(a), e(b), n] for a, b, n in conf]))
        cm = confusion_figure(metrics)
        if cm:
            parts.append(f"<h2>Confusion matrix</h2><img src='{cm}' alt='confusion matrix'>")
    parts.append(gallery_html(errors or [], model.spec.modality, getattr(model.spec, "preprocess", None)))
    params = metrics.get("parameters") or []
    if params:
        parts.append("<h2>Trainable vs frozen parameters (final phase)</h2>" + _table(
            ["stage", "params", "trainable", "frozen"],
            [[e(r["stage"]), f"{r['params']:,}", f"{r['trainable']:,}", f"{r['frozen']:,}"] for r in params]))
    if history:
        keys = [k for k in ("phase", "step", "epoch", "lr", "train_loss", "val_loss", "val_accuracy",
                            "val_macro_f1", "seconds") if any(k in r for r in history)]
        rows = [[(f"{r[k]:.4g}" if isinstance(r.get(k), float) else e(str(r.get(k, "")))) for k in keys]
                for r in history]
        parts.append(f"<h2>History</h2><details><summary>{len(history)} validation row(s), as in history.csv"
                     "</summary>" + _table(keys, rows) + "</details>")
    if metrics.get("skipped"):
        parts.append("<h2>Skipped inputs</h2><pre>" + e("\n".join(metrics["skipped"])) + "</pre>")
    parts.append(settings_html(cfg))
    src = model.spec.source
    parts.append(f"<p class='sub'>source {e(src.id)} ({e(src.arch)}), weights {e(src.weights_hash)}</p>")
    parts.append("</body></html>")
    from ..store.checkpoint import atomic_write_text
    out = Path(run) / "report.html"
    atomic_write_text(out, "\n".join(p for p in parts if p))
    return out
