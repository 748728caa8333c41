"""Files that `predict --output` and `evaluate --out` write: predictions as CSV or JSON Lines, and an
evaluation folder (metrics.json, predictions.csv, report.html with the worst errors)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

PREDICTION_FORMATS = (".csv", ".jsonl")
EVALUATION_FILES = ("metrics.json", "predictions.csv", "report.html")


def check_predictions_path(path: str | Path) -> Path:
    """Refuse before any work: an unknown format, or a file that already exists (never replaced)."""
    p = Path(path)
    if p.suffix.lower() not in PREDICTION_FORMATS:
        raise ValueError(f"--output {p}: use a .csv or .jsonl file name")
    if p.exists():
        raise FileExistsError(f"--output {p} already exists; choose another name or remove it")
    if not p.parent.is_dir():
        raise FileNotFoundError(f"--output {p}: the folder {p.parent} does not exist")
    return p


def write_predictions(rows: list[dict], path: str | Path) -> Path:
    """One row per input: CSV (input, label, probability, top as `label:p|label:p`, error) or JSONL."""
    from ..engine.checkpoint import atomic_write_text
    from ..engine.safety import json_safe
    p = Path(path)
    if p.suffix.lower() == ".jsonl":
        text = "".join(json.dumps(json_safe(r)[0], allow_nan=False) + "\n" for r in rows)
    else:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["input", "label", "probability", "top", "error"])
        for r in rows:
            top = "|".join(f"{t['label']}:{t['probability']:.6f}" for t in r.get("top") or [])
            w.writerow([r["input"], r.get("label") or "", "" if r.get("probability") is None
                        else f"{r['probability']:.6f}", top, r.get("error") or ""])
        text = buf.getvalue()
    atomic_write_text(p, text)
    return p


def check_evaluation_dir(out: str | Path) -> Path:
    """An evaluation folder is new, empty, or one that `evaluate --out` wrote before."""
    d = Path(out)
    if d.exists() and not d.is_dir():
        raise FileExistsError(f"--out {d} is a file; give a folder")
    if d.is_dir():
        foreign = sorted(p.name for p in d.iterdir() if p.name not in EVALUATION_FILES)
        if foreign:
            raise FileExistsError(f"--out {d} holds files evaluate did not write ({', '.join(foreign[:3])}); "
                                  "choose a new or empty folder")
    return d


def write_evaluation(out: str | Path, run_dir: str | Path, model, cfg, metrics: dict, items,
                     probs: np.ndarray) -> Path:
    """OUT/metrics.json, OUT/predictions.csv (one row per item: true, predicted, probabilities of
    every class) and OUT/report.html (metrics, confusion matrix, the most confident mistakes)."""
    from ..engine.checkpoint import atomic_write_json, atomic_write_text
    from . import write_report
    from .gallery import worst_errors
    d = check_evaluation_dir(out)
    d.mkdir(parents=True, exist_ok=True)
    classes = list(model.class_names)
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[e.label] for e in items])
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["item", "label", "predicted", "probability", "correct", *[f"p:{c}" for c in classes]])
    for e, p in zip(items, probs):
        k = int(np.argmax(p))
        w.writerow([e.x, e.label, classes[k], f"{p[k]:.6f}", int(classes[k] == e.label),
                    *[f"{v:.6f}" for v in p]])
    atomic_write_text(d / "predictions.csv", buf.getvalue())
    atomic_write_json(d / "metrics.json", {**metrics, "run": str(run_dir)})
    write_report(d, cfg, model, metrics, [], errors=worst_errors(items, probs, y, classes),
                 title=f"{Path(run_dir).name} on {Path(str(metrics.get('data', ''))).name}",
                 accuracy_label="accuracy")
    return d
