"""Files that `predict --out` and `evaluate --out` write: predictions as CSV or JSON Lines, and an
evaluation folder (metrics.json, predictions.csv, report.html with the worst errors).

A CSV file is opened in spreadsheets, which run a cell that starts with `=`, `+`, `-` or `@` as a
formula (CSV injection). Every text cell of a CSV written for people (here, and knn, cluster and
embed) goes through `spreadsheet_cell`: such a cell (or one starting with a tab or carriage return)
gets a leading `'`, which spreadsheets show as text. Numbers stay numbers. JSON and JSON Lines stay
raw: they are data for programs (`predict --out x.jsonl` has the exact texts and labels).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
import json
from pathlib import Path

import numpy as np

PREDICTION_FORMATS = (".csv", ".jsonl")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
EVALUATION_FILES = ("metrics.json", "predictions.csv", "report.html")
EVALUATION_META = "evaluation.json"  # written first: marks the folder as one `evaluate --out` wrote


def spreadsheet_cell(value):
    """`value` for a CSV cell that a spreadsheet will not run as a formula: a text starting with
    `=`, `+`, `-`, `@`, tab or carriage return gets a leading `'` (OWASP's advice); a number, or a
    text that is a plain number (`-0.5`, `1e-3`), is left as it is."""
    if not isinstance(value, str) or not value.startswith(_FORMULA_START) or _NUMBER.fullmatch(value):
        return value
    return "'" + value


def spreadsheet_row(values) -> list:
    return [spreadsheet_cell(v) for v in values]


def check_predictions_path(path: str | Path) -> Path:
    """Refuse before any work: an unknown format, or a file that already exists (never replaced)."""
    p = Path(path)
    if p.suffix.lower() not in PREDICTION_FORMATS:
        raise ValueError(f"--out {p}: use a .csv or .jsonl file name")
    if p.exists():
        raise FileExistsError(f"--out {p} already exists; choose another name or remove it")
    if not p.parent.is_dir():
        raise FileNotFoundError(f"--out {p}: the folder {p.parent} does not exist")
    return p


def prediction_table(rows: list[dict], truth: list[str] | None = None) -> str:
    """The one CSV format of `predict --out` and `evaluate --out`'s predictions.csv, one row per input:

    input, [label, correct: evaluate only], predicted, probability, top2, top2_probability, ...
    (ranks 2..k of --top-k), p:CLASS for every class of the model, error.

    Every label is a cell of its own (a label may hold commas, `:` or `|`); `rows` are prediction
    rows (infer.predictions.topk_rows with probabilities); `truth`: the true label of each row."""
    classes = next((list(r["probabilities"]) for r in rows if r.get("probabilities")), [])
    k = max([len(r.get("top") or []) for r in rows] + [1])
    head = ["input", *(["label"] if truth is not None else []), "predicted", "probability",
            *(["correct"] if truth is not None else [])]
    head += [c for i in range(2, k + 1) for c in (f"top{i}", f"top{i}_probability")]
    head += [f"p:{c}" for c in classes] + ["error"]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(spreadsheet_row(head))
    num = lambda v: "" if v is None else f"{v:.6f}"  # noqa: E731
    for n, r in enumerate(rows):
        cells = [r["input"]]
        if truth is not None:
            cells.append(truth[n])
        cells += [r.get("label") or "", num(r.get("probability"))]
        if truth is not None:
            cells.append("" if r.get("label") is None else int(r["label"] == truth[n]))
        top = (r.get("top") or [])[1:k]
        top += [{"label": "", "probability": None}] * (k - 1 - len(top))
        cells += [c for t in top for c in (t["label"], num(t["probability"]))]
        probs = r.get("probabilities") or {}
        cells += [num(probs.get(c)) for c in classes] + [r.get("error") or ""]
        w.writerow(spreadsheet_row(cells))
    return buf.getvalue()


def write_predictions(rows: list[dict], path: str | Path) -> Path:
    """`predict --out`: CSV (prediction_table) or JSON Lines, one row per input as `predict --json`
    prints it (label, probability, top) with `probabilities`, every class's probability."""
    from ..store.checkpoint import atomic_write_text
    from ..store.safety import json_safe
    p = Path(path)
    if p.suffix.lower() == ".jsonl":
        text = "".join(json.dumps(json_safe(r)[0], allow_nan=False) + "\n" for r in rows)
    else:
        text = prediction_table(rows)
    atomic_write_text(p, text)
    return p


def is_evaluation(d: Path) -> bool:
    """`evaluate --out` wrote this folder: its evaluation.json, or (before evaluation.json existed)
    nothing but its three files, with the metrics.json it writes."""
    try:
        meta = json.loads((d / EVALUATION_META).read_text())
        return isinstance(meta, dict) and meta.get("written_by") == "transferkit evaluate"
    except (OSError, ValueError):
        pass
    if any(p.name not in EVALUATION_FILES for p in d.iterdir()):
        return False
    try:
        m = json.loads((d / "metrics.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(m, dict) and {"run", "per_class", "accuracy"} <= set(m)


def check_evaluation_dir(out: str | Path, overwrite: bool = False):
    """An evaluation folder is new or empty; an earlier one or a folder with other files only with
    `overwrite` (store/outfolder.py)."""
    from ..store.outfolder import check_out_folder
    return check_out_folder(out, is_ours=is_evaluation, what="an evaluation", sub="evaluation",
                            overwrite=overwrite)


def write_evaluation(out: str | Path, run_dir: str | Path, model, cfg, metrics: dict, items,
                     probs: np.ndarray, *, overwrite: bool = False, log=print) -> Path:
    """OUT/metrics.json, OUT/predictions.csv (prediction_table: one row per item with its true label,
    the prediction and the probability of every class) and OUT/report.html (metrics, confusion matrix, the most confident mistakes)."""
    from .. import __version__
    from ..store.checkpoint import atomic_write_json, atomic_write_text
    from ..store.outfolder import make_room
    from . import write_report
    from .gallery import worst_errors
    folder = check_evaluation_dir(out, overwrite)
    d = folder.path
    names = [EVALUATION_META, *EVALUATION_FILES]
    make_room(folder, names, set(names), log)
    d.mkdir(parents=True, exist_ok=True)
    atomic_write_json(d / EVALUATION_META, {
        "format": 1, "written_by": "transferkit evaluate", "transferkit": __version__,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "run": str(run_dir), "data": str(metrics.get("data", "")), "written": names})
    import torch

    from ..infer.predictions import topk_rows
    classes = list(model.class_names)
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[e.label] for e in items])
    rows = topk_rows(items, torch.from_numpy(np.asarray(probs)), classes, 1, probabilities=True)
    atomic_write_text(d / "predictions.csv", prediction_table(rows, [e.label for e in items]))
    atomic_write_json(d / "metrics.json", {**metrics, "run": str(run_dir)})
    write_report(d, cfg, model, metrics, [], errors=worst_errors(items, probs, y, classes),
                 title=f"{Path(run_dir).name} on {Path(str(metrics.get('data', ''))).name}",
                 accuracy_label="accuracy")
    return d
