"""`transferkit compare` on a dense task: every strategy x shot count x seed, one run each, on
identical splits per seed, scored by the task's metric on its held-out test images.

Rows (`--strategies`, default: all of the task's):

- segment: ``linear_probe`` (the decoder on the frozen encoder: the frozen baseline), ``two_phase``,
  ``full``, and ``scratch`` (the backbone ``@random``, strategy ``full`` at ``SCRATCH_LR``); metric ``miou``;
- detect: ``linear_probe`` (FPN and heads on the frozen backbone), ``full``, ``scratch``; metric ``map_50``;
- anomaly: ``frozen`` (PatchCore on the source's features, the only way it trains) and ``scratch``
  (the same on an ``@random`` encoder: what the source's features are worth); metric ``image_auroc``.

`--shots N` counts training images (anomaly: normal images). Each cell is a run folder
``OUT/cells/<strategy>/<shots>/seed<k>`` made by the task's own `train` (its lock, checks and files);
a finished cell with the same configuration is reused when the command runs again. Every row carries
a hash of the files its run trained and tested on (fingerprint.json), and `identical_splits` says
whether all cells of a seed and shot count used the same ones.

The recommendation per shot count is the strategy with the best mean VALIDATION score (segment's
best val_miou during training); detect and anomaly runs hold no validation split, so none is made for
them: the test split only reports. Outputs are those of classification compare: compare.json,
compare.md and compare.html.
"""

from __future__ import annotations

import dataclasses
import hashlib
import html
import json
import shutil
import time
from pathlib import Path

import numpy as np

from ..config import ConfigError, TrainConfig
from ..store import checkpoint as ck
from ..strategies.plan import SCRATCH_LR

STRATEGIES = {"segment": ("linear_probe", "two_phase", "full", "scratch"),
              "detect": ("linear_probe", "full", "scratch"),
              "anomaly": ("frozen", "scratch")}
METRIC = {"segment": "miou", "detect": "map_50", "anomaly": "image_auroc"}
ALSO = {"segment": ("dice", "pixel_accuracy"), "detect": ("map",), "anomaly": ("pixel_auroc", "f1")}


def check_strategies(task: str, names: list[str]) -> list[str]:
    names = [n for n in dict.fromkeys(n.strip() for n in names) if n]
    bad = [n for n in names if n not in STRATEGIES[task]]
    if bad or not names:
        raise ConfigError(f"--strategies {','.join(bad) or '(none)'}: {task} compares "
                          f"{', '.join(STRATEGIES[task])}")
    return names


def cell_config(base: TrainConfig, task: str, name: str, shots: int | None, seed: int, out: Path) -> TrainConfig:
    over: dict = {"task": task}
    if name == "scratch":
        over.update(backbone=base.backbone if base.backbone.endswith("@random") else base.backbone + "@random",
                    strategy="full" if task != "anomaly" else base.strategy)
        if task != "anomaly":
            # random weights need the larger rate classification's scratch row gets (SCRATCH_LR); on the
            # dense benchmark's segment set it ends at mIoU 0.204 against 0.184 at the default 1e-3
            over["lr"] = SCRATCH_LR
    elif task != "anomaly":
        over["strategy"] = name
    return dataclasses.replace(base, **over, shots=shots, seed=seed, stop_after=None, overwrite=False,
                               out=str(out / "cells" / name / ("all" if shots is None else str(shots)) / f"seed{seed}"))


def _split_hash(run: Path) -> str | None:
    p = run / "fingerprint.json"
    if not p.is_file():
        return None
    fp = ck.read_json(p)
    keys = sorted((split, item) for split, part in fp["splits"].items() for item in part)
    return hashlib.sha256(json.dumps(keys).encode()).hexdigest()[:16]


def run_cell(task: str, cfg: TrainConfig) -> dict:
    """One run of `task` in cfg.out (or the row of a finished one with this configuration)."""
    from ..store.runfolder import writing_run
    from . import task_module
    run = Path(cfg.out)
    record = run / "cell.json"
    if record.is_file():
        saved = json.loads(record.read_text())
        if saved.get("config") == cfg.to_dict():
            return {**saved["row"], "reused": True}
    if run.exists():
        shutil.rmtree(run)  # an unfinished or differently configured cell of this compare
    t0 = time.time()
    with writing_run(run, fresh=True, log=lambda *a, **k: None):
        result = task_module(task).train(cfg, log=lambda *a, **k: None, progress=False)
    m = result.metrics or {}
    vals = [h[f"val_{METRIC[task]}"] for h in m.get("history") or [] if h.get(f"val_{METRIC[task]}") is not None]
    row = {k: m.get(k) for k in (METRIC[task], *ALSO[task])}
    row.update(n_train=m.get("n_train"), steps=m.get("steps"), val_metric=max(vals) if vals else None,
               train_seconds=round(time.time() - t0, 2), split_hash=_split_hash(run))
    ck.atomic_write_text(record, json.dumps({"config": cfg.to_dict(), "row": row}, indent=2) + "\n")
    return row


def run_dense_compare(task: str, base: TrainConfig, strategies: list[str], shots: list[int | None],
                      seeds: list[int], out: str | Path, *, log=print, command: str | None = None) -> dict:
    """Every cell, then OUT/compare.json, compare.md, compare.html; returns what compare.json holds."""
    t_start, out = time.time(), Path(out)
    names = check_strategies(task, strategies)
    metric = METRIC[task]
    label = lambda s: "all" if s is None else str(s)  # noqa: E731
    header = {"task": task, "data": base.data, "backbone": base.backbone, "strategies": names,
              "shots": [label(s) for s in shots], "seeds": seeds, "metric": metric, "command": command,
              "base_config": base.to_dict()}
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    cells = [(seed, s, n) for seed in seeds for s in shots for n in names]
    for i, (seed, s, name) in enumerate(cells, start=1):
        cfg = cell_config(base, task, name, s, seed, out)
        row = {"strategy": name, "shots": label(s), "seed": seed, "backbone": cfg.backbone, "run_dir": cfg.out,
               **run_cell(task, cfg)}
        log(f"[{i}/{len(cells)}] {name} · {label(s)} · seed {seed}: test {metric} {_f(row[metric])}"
            f" ({row['train_seconds']:.1f}s{', reused' if row.get('reused') else ''})")
        rows.append(row)
        ck.atomic_write_text(out / "compare.json", json.dumps({**header, "rows": rows}, indent=2) + "\n")
    summary = [{"strategy": n, "shots": k, "n": len(c),
                **{f"{key}_{w}": v for key in (metric, "val_metric", "train_seconds")
                   for w, v in zip(("mean", "std"), _mean_std([r.get(key) for r in c]))}}
               for n in names for k in header["shots"]
               for c in [[r for r in rows if r["strategy"] == n and r["shots"] == k]]]
    seen: dict = {}
    for r in rows:
        seen.setdefault((r["shots"], r["seed"]), set()).add(r["split_hash"])
    result = {**header, "rows": rows, "summary": summary, "recommended": _recommend(summary, header["shots"]),
              "identical_splits": all(len(v) == 1 for v in seen.values()), "seconds": round(time.time() - t_start, 1)}
    if not result["identical_splits"]:
        log("WARNING: cells of one seed and shot count used different files (see split_hash)")
    ck.atomic_write_text(out / "compare.json", json.dumps(result, indent=2) + "\n")
    ck.atomic_write_text(out / "compare.md", format_markdown(result))
    ck.atomic_write_text(out / "compare.html", format_html(result))
    return result


def _mean_std(values: list) -> tuple[float | None, float | None]:
    v = [x for x in values if x is not None]
    if not v:
        return None, None
    return float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else None


def _recommend(summary: list[dict], shots: list[str]) -> dict:
    out = {}
    for k in shots:
        cand = [e for e in summary if e["shots"] == k and e["val_metric_mean"] is not None]
        best = max(cand, key=lambda e: e["val_metric_mean"], default=None)
        out[k] = None if best is None else {"strategy": best["strategy"], "score": best["val_metric_mean"],
                                            "by": "validation"}
    return out


def _f(v) -> str:
    return "–" if v is None else f"{v:.3f}"


def _tables(result: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    metric, shots = result["metric"], result["shots"]
    by = {(e["strategy"], e["shots"]): e for e in result["summary"]}
    heads = ["strategy"] + [k if k == "all" else f"{k} shots" for k in shots]

    def grid(key: str, std: bool = True) -> list[list[str]]:
        body = []
        for s in result["strategies"]:
            cells = []
            for k in shots:
                m, sd = by[(s, k)][f"{key}_mean"], by[(s, k)][f"{key}_std"]
                cells.append(_f(m) if (sd is None or not std or m is None) else f"{m:.3f} ± {sd:.3f}")
            body.append([s] + cells)
        return body
    rec = [[k, r["strategy"] if r else "–", _f(r["score"]) if r else "none: no validation score"]
           for k, r in result["recommended"].items()]
    return [(f"Test {metric} (mean ± std over seeds)", heads, grid(metric)),
            (f"Validation {metric} (best during training; mean ± std over seeds)", heads, grid("val_metric")),
            ("Recommended strategy (best mean validation score; the test split is never used to choose)",
             ["shots", "strategy", f"val {metric}"], rec),
            ("Seconds per cell (mean)", heads, grid("train_seconds", std=False))]


def format_markdown(result: dict) -> str:
    lines = [f"# transferkit compare ({result['task']})", ""]
    if result.get("command"):
        lines += ["```", result["command"], "```", ""]
    lines += [f"data `{result['data']}`, backbone `{result['backbone']}`, seeds "
              f"{', '.join(map(str, result['seeds']))}; identical splits per seed: "
              f"{'yes' if result['identical_splits'] else 'NO'}; {result['seconds']:.0f}s in all.", ""]
    for title, heads, body in _tables(result):
        lines += [f"## {title}", "", "| " + " | ".join(heads) + " |", "|---|" + "---:|" * (len(heads) - 1)]
        lines += ["| " + " | ".join(r) + " |" for r in body] + [""]
    return "\n".join(lines)


def format_html(result: dict) -> str:
    from ..choose.compare_report import COMPARE_CSS
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>transferkit compare</title>"
             f"<style>{COMPARE_CSS}</style></head><body><h1>transferkit compare ({e(result['task'])})</h1>"]
    if result.get("command"):
        parts.append(f"<pre>{e(result['command'])}</pre>")
    parts.append(f"<p>data <code>{e(str(result['data']))}</code>, backbone <code>{e(result['backbone'])}</code>, "
                 f"seeds {e(', '.join(map(str, result['seeds'])))}</p>")
    for title, heads, body in _tables(result):
        head = "".join(f"<th>{e(h)}</th>" for h in heads)
        trs = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in body)
        parts.append(f"<h2>{e(title)}</h2><table><tr>{head}</tr>{trs}</table>")
    return "\n".join(parts + ["</body></html>"])
