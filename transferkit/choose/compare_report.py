"""What `transferkit compare` writes: mean ± std tables, the recommendation, compare.json/.md/.html."""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np


def _cells(rows: list[dict], strategy: str, shots: str) -> list[dict]:
    return [r for r in rows if r["strategy"] == strategy and str(r["shots"]) == shots and not r["skipped"]]


def _mean_std(values: list) -> tuple[float | None, float | None]:
    v = [x for x in values if x is not None]
    if not v:
        return None, None
    return float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else None


def summarise(rows: list[dict], strategies: list[str], shots: list[str]) -> list[dict]:
    """One entry per strategy x shots: mean and sample std over the seeds that ran."""
    out = []
    for s in strategies:
        for k in shots:
            cells = _cells(rows, s, k)
            entry = {"strategy": s, "shots": k, "n": len(cells),
                     "shortened": sum(bool(r.get("shortened")) for r in cells)}
            for key in ("accuracy", "macro_f1", "val_accuracy", "val_macro_f1", "val_loss", "cv_accuracy",
                        "train_seconds"):
                entry[f"{key}_mean"], entry[f"{key}_std"] = _mean_std([r.get(key) for r in cells])
            out.append(entry)
    return out


def recommend(rows: list[dict], strategies: list[str], shots: list[str], metric: str = "accuracy") -> dict:
    """Per shot count, the strategy with the best mean validation `metric` over seeds (ties: the
    lower mean validation loss). The test split plays no part. The probe row is a reference, not a
    candidate: `strategies` are the ones compared."""
    out: dict[str, dict | None] = {}
    for k in shots:
        best = None
        # with a validation split: by it; at few labels (none): by the cross-validated accuracy that
        # the cells which chose by cross-validation report (auto, linear_probe, multi_probe)
        key = f"val_{metric}" if any(r.get(f"val_{metric}") is not None
                                     for s in strategies for r in _cells(rows, s, k)) else "cv_accuracy"
        for s in strategies:
            cells = [r for r in _cells(rows, s, k) if r.get(key) is not None]
            if not cells:
                continue
            val = float(np.mean([r[key] for r in cells]))
            loss = float(np.mean([r["val_loss"] if r.get("val_loss") is not None else 0.0 for r in cells]))
            cand = {"strategy": s, key: val, "val_loss": loss, "n": len(cells), "score": val, "by": key,
                    "accuracy": _mean_std([r.get("accuracy") for r in cells])[0]}
            if best is None or (val, -loss) > (best[key], -best["val_loss"]):
                best = cand
        out[k] = best
    return out


def identical_splits(rows: list[dict]) -> bool:
    """True when all cells of each (shots, seed) used the same split (same `split_hash`)."""
    seen: dict[tuple, set] = {}
    for r in rows:
        if r.get("split_hash"):
            seen.setdefault((str(r["shots"]), r["seed"]), set()).add(r["split_hash"])
    return all(len(v) == 1 for v in seen.values())


def _pm(entry: dict, key: str, n_seeds: int) -> str:
    m, s = entry[f"{key}_mean"], entry[f"{key}_std"]
    if m is None:
        return "–"
    text = f"{m:.3f}" if s is None else f"{m:.3f} ± {s:.3f}"
    return text + (f" (n={entry['n']})" if entry["n"] < n_seeds else "")


def _grid(result: dict, key: str, with_std: bool = True) -> tuple[list[str], list[list[str]]]:
    shots, n_seeds = result["shots"], len(result["seeds"])
    by = {(e["strategy"], e["shots"]): e for e in result["summary"]}
    headers = ["strategy"] + [f"{k} shots" if k != "all" else "all" for k in shots]
    body = []
    for s in result["strategies"]:
        cells = []
        for k in shots:
            e = by[(s, k)]
            if with_std:
                cells.append(_pm(e, key, n_seeds))
            else:
                cells.append("–" if e[f"{key}_mean"] is None else f"{e[f'{key}_mean']:.1f}")
        body.append([s] + cells)
    return headers, body


def _notes(result: dict) -> list[str]:
    return [f"{r['strategy']} · {r['shots']} shots · seed {r['seed']}: "
            + (f"skipped ({r['skip_reason']})" if r["skipped"] else f"shortened ({r['shorten_reason']})")
            for r in result["rows"] if r["skipped"] or r.get("shortened")]


def _sections(result: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    metric = result["metric"]
    rec = result["recommended"]
    rec_rows = [[k if k == "all" else f"{k} shots", r["strategy"], f"{r['score']:.3f} ({r['by'].replace('_', ' ')})",
                 "–" if r["accuracy"] is None else f"{r['accuracy']:.3f}"] if r else [k, "–", "–", "–"]
                for k, r in rec.items()]
    return [
        ("Test accuracy (mean ± std over seeds)", *_grid(result, "accuracy")),
        ("Test macro-F1 (mean ± std over seeds)", *_grid(result, "macro_f1")),
        (f"Validation {metric} (mean ± std over seeds; this picks the recommendation when there is a "
         "validation split)", *_grid(result, f"val_{metric}")),
        ("Cross-validated accuracy on the training labels (mean ± std over seeds; this picks the "
         "recommendation at few labels, where there is no validation split)", *_grid(result, "cv_accuracy")),
        (f"Recommended strategy (best mean validation {metric}; the test split is never used to choose)",
         ["shots", "strategy", f"val {metric}", "test accuracy"], rec_rows),
        ("Seconds per cell (mean)", *_grid(result, "train_seconds", with_std=False)),
    ]


def format_markdown(result: dict) -> str:
    lines = ["# transferkit compare", ""]
    if result.get("command"):
        lines += ["```", result["command"], "```", ""]
    lines += [f"data `{result['data']}`, backbone `{result['backbone']}`, seeds "
              f"{', '.join(map(str, result['seeds']))}; `probe` is scikit-learn LogisticRegression on "
              f"frozen features ({result['feature_seconds']:.1f}s to compute them once for every row); "
              f"identical splits per seed: {'yes' if result['identical_splits'] else 'NO'}; "
              f"{result['seconds']:.0f}s in all.", ""]
    for title, headers, body in _sections(result):
        lines += [f"## {title}", "", "| " + " | ".join(headers) + " |",
                  "|---|" + "---:|" * (len(headers) - 1)]
        lines += ["| " + " | ".join(map(str, r)) + " |" for r in body] + [""]
    notes = _notes(result)
    if notes:
        lines += ["## Skipped or shortened cells (budget)", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


def _plot(result: dict) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..report import plain_text, png_data_uri
    shots = result["shots"]
    by = {(e["strategy"], e["shots"]): e for e in result["summary"]}
    fig, ax = plt.subplots(figsize=(7, 4.2))
    x = np.arange(len(shots))
    for j, s in enumerate(result["strategies"]):
        dx = 0.04 * (j - (len(result["strategies"]) - 1) / 2)  # lines that coincide stay visible
        pts = [(i + dx, by[(s, k)]["accuracy_mean"], by[(s, k)]["accuracy_std"]) for i, k in enumerate(shots)
               if by[(s, k)]["accuracy_mean"] is not None]
        if pts:
            xs, ms, sd = zip(*pts)
            ax.errorbar(xs, ms, yerr=[d or 0.0 for d in sd], marker="o", capsize=3, label=plain_text(s),
                        linestyle="--" if s == "probe" else "-")
    ax.set_xticks(x, [f"{k} shots" if k != "all" else "all" for k in shots])
    ax.set_ylabel("test accuracy")
    ax.set_title("test accuracy vs labelled examples per class (mean ± std over seeds)")
    ax.grid(alpha=.3)
    ax.legend(fontsize=8)
    return png_data_uri(fig)


COMPARE_CSS = ("body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#1d2330}"
        "table{border-collapse:collapse;margin:.5em 0}td,th{border-bottom:1px solid #e4e6ee;padding:.25em .7em;"
        "text-align:right}th{background:#f4f6fb}td:first-child,th:first-child{text-align:left}"
        "pre{background:#f7f7fa;padding:.8em;border-radius:6px;overflow:auto}img{max-width:100%}")


def format_html(result: dict) -> str:
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>transferkit compare</title>"
             f"<style>{COMPARE_CSS}</style></head><body><h1>transferkit compare</h1>"]
    if result.get("command"):
        parts.append(f"<pre>{e(result['command'])}</pre>")
    parts.append(f"<p>data <code>{e(result['data'])}</code>, backbone <code>{e(result['backbone'])}</code>, "
                 f"seeds {e(', '.join(map(str, result['seeds'])))}</p>")
    parts.append(f"<img alt='accuracy vs shots' src='{_plot(result)}'>")
    for title, headers, body in _sections(result):
        head = "".join(f"<th>{e(h)}</th>" for h in headers)
        trs = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in body)
        parts.append(f"<h2>{e(title)}</h2><table><tr>{head}</tr>{trs}</table>")
    notes = _notes(result)
    if notes:
        parts.append("<h2>Skipped or shortened cells (budget)</h2><ul>"
                     + "".join(f"<li>{e(n)}</li>" for n in notes) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_outputs(out: Path, result: dict) -> None:
    from ..store.checkpoint import atomic_write_text
    atomic_write_text(out / "compare.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(out / "compare.md", format_markdown(result))
    atomic_write_text(out / "compare.html", format_html(result))
