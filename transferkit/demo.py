"""`transferkit demo`: the main job end to end on the data sets shipped with the package."""

from __future__ import annotations

import json
import time
from pathlib import Path

DEMO_DATA = Path(__file__).parent / "demo_data"
IMAGE_DEMO = DEMO_DATA / "clipart"
TEXT_DEMO = DEMO_DATA / "debian_descriptions.csv"


def _image_runs(quick: bool) -> tuple[dict, list[tuple[str, dict]]]:
    common = {"data": str(IMAGE_DEMO), "image_size": 112}
    if quick:
        common["steps"] = 6
    return common, [
        ("linear_probe", {"backbone": "bundled:efficientnet_lite0", "strategy": "linear_probe"}),
        # the default: cross-validates the probe against LP-FT on the training labels, keeps the winner
        ("auto", {"backbone": "bundled:efficientnet_lite0", "strategy": "auto"}),
        # the same definition of "scratch" as `transferkit compare`, with passes enough to learn
        ("scratch", {"backbone": "timm:tf_efficientnet_lite0@random", "strategy": "full", "lr": 3e-3,
                     **({} if quick else {"epochs": 20})}),
    ]


def _text_runs(quick: bool) -> tuple[dict, list[tuple[str, dict]]]:
    common = {"data": str(TEXT_DEMO), "batch_size": 16, "max_length": 128, **({"steps": 6} if quick else {})}
    return common, [
        ("linear_probe", {"backbone": "bundled:minilm-l6", "strategy": "linear_probe"}),
        ("auto", {"backbone": "bundled:minilm-l6", "strategy": "auto", "backbone_lr_mult": 0.05}),
        ("scratch", {"backbone": "bundled:minilm-l6@random", "strategy": "full", "lr": 3e-4}),
    ]


def run_demo(*, text: bool = False, out: str = "runs/demo", shots: int | None = None, seed: int = 0,
             quick: bool = False, log=print) -> list[dict]:
    """Train the bundled backbone with two strategies and the same architecture from scratch, at a
    few labels per class; print a side-by-side table and leave one run directory per row."""
    from .config import make_config
    from .train import train

    common, runs = (_text_runs if text else _image_runs)(quick)
    shots = shots or (16 if text else 5)
    out_dir = Path(out) / ("text" if text else "image")
    rows = []
    log(f"transferkit demo: {'Debian package descriptions' if text else 'Debian openclipart images'}, "
        f"{shots} labelled examples per class, seed {seed}\n")
    for name, opts in runs:
        run_dir = out_dir / name
        if (run_dir / "metrics.json").exists():
            log(f"[{name}] reusing finished run {run_dir}")
            m = json.loads((run_dir / "metrics.json").read_text())
            rows.append({"run": name, "backbone": opts["backbone"], "accuracy": m["accuracy"],
                         "macro_f1": m["macro_f1"], "seconds": m.get("train_seconds", 0.0), "dir": str(run_dir)})
            continue
        if run_dir.exists():
            import shutil
            shutil.rmtree(run_dir)  # an unfinished demo run: start it again
        log(f"[{name}] {opts['backbone']} strategy={opts['strategy']}")
        cfg = make_config(None, **common, **opts, shots=shots, seed=seed, out=str(run_dir))
        t0 = time.time()
        result = train(cfg, quiet=False, log=lambda *a, **k: log("   ", *a, **k))
        seconds = time.time() - t0
        m = result.metrics
        m["train_seconds"] = round(seconds, 1)
        (run_dir / "metrics.json").write_text(json.dumps(m, indent=2) + "\n")
        rows.append({"run": name, "backbone": opts["backbone"], "accuracy": m["accuracy"],
                     "macro_f1": m["macro_f1"], "seconds": seconds, "dir": str(run_dir)})
    table = format_rows(rows)
    log("\n" + table)
    (out_dir / "summary.md").write_text(table + "\n")
    best = max(rows, key=lambda r: r["accuracy"])
    log(f"\nreport: {Path(best['dir']) / 'report.html'}")
    return rows


def format_rows(rows: list[dict]) -> str:
    lines = ["| run | backbone | accuracy | macro-F1 | time (s) |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['backbone']} | {r['accuracy']:.3f} | {r['macro_f1']:.3f} | "
                     f"{r['seconds']:.0f} |")
    return "\n".join(lines)
