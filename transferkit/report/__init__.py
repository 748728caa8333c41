"""Run reports: metrics.json (see metrics.py) and a self-contained report.html."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np

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
.low{color:#b3261e;font-weight:600}
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


def _curves(history: list[dict]) -> str | None:
    rows = [r for r in history if r.get("step", "") != ""]
    if len(rows) < 2:  # a probe-only run has one validation point: nothing to draw a curve of
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    steps = [r["step"] for r in rows]
    tl = [(s, r["train_loss"]) for s, r in zip(steps, rows) if r.get("train_loss", "") != ""]
    vl = [(s, r["val_loss"]) for s, r in zip(steps, rows) if "val_loss" in r]
    if tl:
        axes[0].plot(*zip(*tl), label="train loss", marker=".")
    if vl:
        axes[0].plot(*zip(*vl), label="val loss", marker=".")
    axes[0].set_xlabel("step")
    axes[0].set_title("loss")
    if tl or vl:
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


def _table(headers: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _choices(metrics: dict) -> list[str]:
    """How the strategy, the head's C and the WiSE-FT weight were chosen, with the evidence."""
    e, out = html.escape, []
    choice = metrics.get("choice") or {}
    source = choice.get("backbone")
    if source:
        out.append(f"<h2>Source chosen by auto: {e(source['chosen'])}</h2><p>by {e(source['by'])}"
                   + (f"; not scored within the budget: {e(', '.join(source['unscored']))}" if source["unscored"] else "")
                   + "</p>")
        out.append(_table(["source", "CV probe accuracy", "± s.e.", "LogME", "seconds"],
                          [[e(r["source"]), "–" if r.get("cv_accuracy") is None else f"{r['cv_accuracy']:.3f}",
                            "–" if r.get("cv_accuracy_se") is None else f"{r['cv_accuracy_se']:.3f}",
                            f"{r['logme']:.3f}", f"{r['seconds']:.1f}"] for r in source["rows"]]))
    if choice.get("strategy"):
        out.append(f"<h2>Strategy chosen by auto: {e(choice['strategy'])}</h2><p>{e(choice['reason'])}</p>")
        table = (choice.get("finetune_cv") or {}).get("table") or []
        if table:
            out.append(_table(["WiSE-FT weight (0 = probe)", "held-out accuracy", "± s.e.", "held-out NLL"],
                              [[f"{r['wise']:g}", f"{r['accuracy']:.3f}", f"{r['accuracy_se']:.3f}",
                                f"{r['nll']:.3f}"] for r in table]))
    head = metrics.get("head_fit") or {}
    if head.get("scale") is not None:  # --strategy prototypes: no C, one scale
        out.append(f"<p class='sub'>prototype head: normalised class means scaled by s = {head['scale']:g} "
                   f"(chosen {'on validation NLL' if head.get('method') == 'val' else 'by default'})</p>")
    elif head.get("method"):
        out.append(f"<p class='sub'>head fitted on frozen features with C = {head['C']:g} "
                   f"(chosen {'on validation' if head['method'] == 'val' else str(head.get('folds')) + '-fold CV' if head['method'] == 'cv' else 'by default'})"
                   + (f"; {head['blocks']} stage block(s) below the final features" if "blocks" in head else "")
                   + "</p>")
    wise = metrics.get("wise") or {}
    if wise:
        out.append(f"<p class='sub'>WiSE-FT: final weights = {1 - wise['weight']:g} &times; probe + "
                   f"{wise['weight']:g} &times; fine-tuned ({e(wise['chosen'])})</p>")
    out += _unlabelled(metrics.get("unlabelled") or {})
    if metrics.get("phase_seconds"):
        out.append("<p class='sub'>time per phase: " + ", ".join(
            f"{e(k)} {v:.1f}s" for k, v in metrics["phase_seconds"].items()) + "</p>")
    return out


def _unlabelled(u: dict) -> list[str]:
    """Which inputs were used without their labels, and for what (train --unlabelled)."""
    if not u:
        return []
    e = html.escape
    where = ("the test split's inputs (transductive: the test images were seen without labels)"
             if u.get("transductive") else e(str(u.get("source"))))
    uses = []
    ada = u.get("adabn") or {}
    if ada.get("held_out_source") is not None:
        uses.append(f"AdaBN {'applied' if ada.get('applied') else 'not applied'} (held-out accuracy "
                    f"{ada['held_out_adabn']:.3f} with re-estimated BatchNorm statistics, "
                    f"{ada['held_out_source']:.3f} with the source's)")
    elif ada:
        uses.append(f"AdaBN not applied ({e(ada.get('reason', ''))})")
    fm = u.get("fixmatch") or {}
    if fm:
        rate = f", {fm['kept'] / fm['seen']:.0%} of pseudo-labels kept" if fm.get("seen") else ""
        uses.append(f"FixMatch with weight {fm['weight']:g}, threshold {fm['threshold']:g}, "
                    f"{fm['ratio']} unlabelled per labelled image{rate}")
    if not u.get("used"):
        uses.append("not used for the final model" + (f" ({e(u['reason'])})" if u.get("reason") else ""))
    count = f"{u['count']} images" if u.get("count") is not None else "images"
    out = [f"<h2>Unlabelled inputs</h2><p>{count} from {where}: " + "; ".join(uses) + "</p>"]
    if u.get("chosen"):
        out.append(f"<p class='sub'>{e(u['chosen'])}</p>")
    return out


def write_report(run: Path, cfg, model, metrics: dict, history: list[dict], *,
                 errors: list[dict] | None = None, title: str | None = None,
                 accuracy_label: str = "test accuracy", extra_html=()) -> Path:
    """Write RUN/report.html: one file, images inlined, readable in any browser. `errors`: the
    gallery of worst errors (see report.gallery.worst_errors). `extra_html`: sections (trusted HTML
    made by transferkit) placed after the summary cards."""
    from .gallery import GALLERY_CSS, gallery_html
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>transferkit run {e(str(run))}</title>"
             f"<style>{_CSS}{GALLERY_CSS}</style></head><body>",
             f"<h1>{e(title or Path(run).name)}</h1><div class='sub'>{e(cfg.backbone)} &rarr; {len(model.class_names)} "
             f"classes &middot; strategy <b>{e(cfg.strategy)}</b>"
             + (f" &middot; regularizer <b>{e(cfg.reg)}</b>" if cfg.reg else "") + "</div>"]
    cards = [(accuracy_label, metrics.get("accuracy")), ("macro-F1", metrics.get("macro_f1")),
             ("ECE", metrics.get("ece"))]
    est = metrics.get("estimate") or {}
    est_card = ""
    if est.get("accuracy") is not None:
        se = f" ± {est['accuracy_se']:.3f}" if est.get("accuracy_se") is not None else ""
        how = f"{est.get('folds')}-fold CV" if est.get("method") == "cv" else "validation"
        best_of = (f"; the best of {est['compared']} compared, so optimistic: expect the test score lower"
                   if est.get("optimistic") else "")
        est_card = (f"<div class='card'>held-out estimate ({e(how)}, {e(str(est.get('of', '')))}{best_of})"
                    f"<b>{est['accuracy']:.3f}{se}</b></div>")
    parts.append("<div class='cards'>" + "".join(
        f"<div class='card'>{e(k)}<b>{'–' if v is None else f'{v:.3f}'}</b></div>" for k, v in cards)
        + est_card
        + "".join(f"<div class='card'>{k}<b>{metrics.get(k, 0)}</b></div>" for k in ("n_train", "n_val", "n_test"))
        + "</div>")
    parts += _choices(metrics)
    parts += list(extra_html)
    curves = _curves(history)
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
        parts.append("<h2>History</h2>" + _table(keys, rows))
    if metrics.get("skipped"):
        parts.append("<h2>Skipped inputs</h2><pre>" + e("\n".join(metrics["skipped"])) + "</pre>")
    import yaml
    parts.append("<h2>Configuration</h2><pre>" + e(yaml.safe_dump(cfg.to_dict(), sort_keys=False)) + "</pre>")
    src = model.spec.source
    parts.append(f"<p class='sub'>source {e(src.id)} ({e(src.arch)}), weights {e(src.weights_hash)}</p>")
    parts.append("</body></html>")
    from ..store.checkpoint import atomic_write_text
    out = Path(run) / "report.html"
    atomic_write_text(out, "\n".join(parts))
    return out
