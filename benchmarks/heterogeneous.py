"""Heterogeneous transfer: an ImageNet RGB model on 1-channel inputs, measured against scratch.

Task 1, scikit-learn's handwritten digits (`load_digits`: 1,797 8x8 gray images, 10 classes), saved
as 1-channel PNGs, at few shots per class. Three ways to read them, same architecture (EfficientNet-
Lite0), same splits per seed:

- `gray-sum`: `--in-chans 1`, first conv adapted by summing its RGB filters, inputs normalised by the
  training data's own mean/std (transferkit's channel adaptation);
- `repeat`: the naive way, each gray image copied into R, G and B and normalised with ImageNet's
  RGB statistics (what `Image.convert("RGB")` and the source's preprocessing give);
- `scratch`: the same architecture at random init (`@random`, `--in-chans 1`), all layers trained at a
  learning rate suited to random init.

Task 2 (`--tasks speech`), spoken digits "zero".."nine" synthesised by Debian's `espeak-ng` in several
voices, speeds and pitches, read as log-mel spectrograms (a 1-channel picture) by the ImageNet model
(`gray-sum`) and by the same architecture from scratch.

    python benchmarks/heterogeneous.py --threads 1                   # digits (27 runs)
    python benchmarks/heterogeneous.py --threads 1 --tasks speech    # spoken digits (18 runs)
    python benchmarks/heterogeneous.py --seeds 1 --shots 1 --steps 2 --out /tmp/h   # smoke test

Writes benchmarks/results/heterogeneous.json and .md (--results PREFIX); prints the table with each arm's ratio to scratch. A run
already finished with the same settings is reused when the command is run again.
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from transferkit.config import make_config
from transferkit.train import train

SOURCE = "bundled:efficientnet_lite0"
SPOKEN = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def build_digits(root: Path) -> Path:
    """DIGITS/<d>/<i>.png: the 8x8 digits (values 0..16) scaled to 0..255 luminance."""
    from PIL import Image
    from sklearn.datasets import load_digits
    if (root / "9").is_dir():
        return root
    d = load_digits()
    for i, (img, y) in enumerate(zip(d.images, d.target)):
        (root / str(y)).mkdir(parents=True, exist_ok=True)
        Image.fromarray((img * 255.0 / 16.0).round().astype(np.uint8), "L").save(root / str(y) / f"{i:04d}.png")
    return root


def build_speech(root: Path, voices: list[str], speeds=(130, 175), pitches=(35, 65)) -> Path:
    """SPEECH/<word>/<voice>_<speed>_<pitch>.wav, synthesised by espeak-ng (22,050 Hz mono)."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise SystemExit("espeak-ng not found: apt-get install espeak-ng (Debian), or run without speech")
    for word in SPOKEN:
        (root / word).mkdir(parents=True, exist_ok=True)
        for v in voices:
            for s in speeds:
                for p in pitches:
                    out = root / word / f"{v.replace('+', '-')}_{s}_{p}.wav"
                    if not out.exists():
                        subprocess.run([exe, "-v", v, "-s", str(s), "-p", str(p), "-w", str(out), word],
                                       check=True, capture_output=True)
    return root


def _loss_fell(run: Path) -> tuple[float | None, float | None]:
    rows = [r for r in csv.DictReader(open(run / "history.csv")) if r.get("train_loss")]
    if not rows:
        return None, None
    return float(rows[0]["train_loss"]), float(rows[-1]["train_loss"])


def run_arm(data: Path, arm: dict, shots: int, seed: int, args, out: Path) -> dict | None:
    run = out / "runs" / f"{data.name}_{arm['name']}_{shots}shot_seed{seed}"
    given = dict(data=str(data), out=str(run), shots=shots, seed=seed, image_size=args.image_size,
                 steps=args.steps, batch_size=args.batch_size, augment=False, tta=False,
                 val_fraction=0.05, test_fraction=0.25, eval_every=args.eval_every, **arm["cfg"])
    row = {"data": data.name, "arm": arm["name"], "shots": shots, "seed": seed}
    done = _finished(run, given)
    if done is None and args.collect:
        return None
    if done is None:
        if run.exists():
            shutil.rmtree(run)
        t0 = time.time()
        train(make_config(None, **given), quiet=True)
        (run / "bench_seconds.txt").write_text(f"{time.time() - t0:.1f}\n")
        done = json.loads((run / "metrics.json").read_text())
    first, last = _loss_fell(run)
    secs = run / "bench_seconds.txt"
    return {**row, "accuracy": done["accuracy"], "macro_f1": done["macro_f1"], "n_test": done["n_test"],
            "first_train_loss": first, "last_train_loss": last,
            "seconds": float(secs.read_text()) if secs.exists() else None}


def _finished(run: Path, given: dict) -> dict | None:
    """The metrics of a finished run made with exactly these settings (the command can be rerun)."""
    import yaml
    if not (run / "metrics.json").exists() or not (run / "config.yaml").exists():
        return None
    saved = yaml.safe_load((run / "config.yaml").read_text())
    if any(saved.get(k) != v for k, v in given.items()):
        return None
    return json.loads((run / "metrics.json").read_text())


def arms_for(args, task: str) -> list[dict]:
    scratch = {"name": "scratch", "cfg": {"backbone": SOURCE + "@random", "in_chans": 1, "strategy": "full",
                                          "lr": args.scratch_lr, "warmup": 0.05, "bn": "adapt"}}
    gray = {"name": "gray-sum", "cfg": {"backbone": SOURCE, "in_chans": 1, "lr": args.lr}}
    if task == "speech":
        return [gray, scratch]
    return [gray, {"name": "repeat", "cfg": {"backbone": SOURCE, "lr": args.lr}}, scratch]


def table(rows: list[dict], shots: list[int]) -> str:
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    lines = ["| task | arm | " + " | ".join(f"{s} shot{'s' if s > 1 else ''}/class" for s in shots)
             + " | ratio to scratch |", "|---|---|" + "---:|" * (len(shots) + 1)]
    for task in dict.fromkeys(r["data"] for r in rows):
        for arm in arms:
            cells, ratios = [], []
            for s in shots:
                acc = [r["accuracy"] for r in rows if (r["data"], r["arm"], r["shots"]) == (task, arm, s)]
                base = [r["accuracy"] for r in rows if (r["data"], r["arm"], r["shots"]) == (task, "scratch", s)]
                if not acc:
                    cells.append("-")
                    continue
                cells.append(f"{np.mean(acc):.3f} ± {np.std(acc):.3f} ({len(acc)})")
                if base:
                    ratios.append(f"{np.mean(acc) / max(np.mean(base), 1e-9):.2f}x")
            if any(c != "-" for c in cells):
                lines.append(f"| {task} | {arm} | " + " | ".join(cells) + f" | {' / '.join(ratios)} |")
    return "\n".join(lines)


def _write(out: Path, command: str, rows: list[dict], shots: list[int], args, seconds: float, name: str) -> str:
    seeds = sorted({r["seed"] for r in rows})
    fell = [r for r in rows if r["arm"] == "scratch" and r["first_train_loss"] is not None]
    fell_note = (f"Scratch training loss fell in {sum(r['last_train_loss'] < r['first_train_loss'] for r in fell)}"
                 f" of {len(fell)} runs (first logged loss, step {args.eval_every}, to the last, step {args.steps}: mean {np.mean([r['first_train_loss'] for r in fell]):.2f} -> "
                 f"{np.mean([r['last_train_loss'] for r in fell]):.3f}).\n") if fell else ""
    timed = [r["seconds"] for r in rows if r["seconds"] is not None]
    took = (f"{sum(timed):.0f}s of training by the runs' own clocks, {len(timed)} of {len(rows)} runs timed"
            if args.collect else f"{seconds:.0f}s wall in all")  # --collect trains nothing: its wall time says nothing
    n = {(r["data"], r["arm"], r["shots"]): 0 for r in rows}
    for r in rows:
        n[(r["data"], r["arm"], r["shots"])] += 1
    md = (f"# Heterogeneous transfer\n\n```\n{command}\n```\n\nTest accuracy, mean ± std over seeds "
          f"{', '.join(map(str, seeds))} ({took}; {args.steps} steps, {args.image_size} px, "
          f"no augmentation, no flip TTA; (n) = runs in the cell, {min(n.values())}-{max(n.values())}):\n\n"
          f"{table(rows, shots)}\n\n{fell_note}")
    prefix = Path(args.results) if args.results else out / f"heterogeneous_{name}"
    prefix.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{prefix}.json").write_text(json.dumps({"command": command, "rows": rows}, indent=1))
    Path(f"{prefix}.md").write_text(md)
    return md


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shots", default="1,5,10")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--seed-from", type=int, default=0, help="first seed (to split seeds over processes)")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--eval-every", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3, help="head LR of the pretrained arms")
    ap.add_argument("--scratch-lr", type=float, default=3e-3)
    ap.add_argument("--tasks", default="digits", help="digits, speech (espeak-ng spoken digits) or both")
    ap.add_argument("--voices", default="en,en+m3,en+f2,en+f4,en-us,en-us+m7,en-gb-scotland,en-gb-x-rp+f3")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--collect", action="store_true", help="train nothing: tabulate the finished runs")
    ap.add_argument("--out", default="runs/bench/heterogeneous", help="the runs and the data sets")
    ap.add_argument("--results", default="benchmarks/results/heterogeneous",
                    help="results prefix: writes RESULTS.json and RESULTS.md ('' for OUT/heterogeneous_TASKS.*)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    shots = [int(s) for s in args.shots.split(",")]
    names = args.tasks.split(",")
    tasks = [("digits", build_digits(out / "data" / "digits"))] if "digits" in names else []
    if "speech" in names:
        tasks.append(("speech", build_speech(out / "data" / "speech", args.voices.split(","))))
    rows, t0 = [], time.time()
    command = "python benchmarks/heterogeneous.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    out.mkdir(parents=True, exist_ok=True)
    for seed in range(args.seed_from, args.seeds):  # seeds outermost: an interrupted run still has whole seeds
        for task, data in tasks:
            for shot in shots:
                for arm in arms_for(args, task):
                    r = run_arm(data, arm, shot, seed, args, out)
                    if r is None:
                        continue
                    rows.append(r)
                    print(f"{task:7s} {arm['name']:9s} {shot:3d} shots seed {seed}: acc {r['accuracy']:.3f} "
                          f"(train loss {r['first_train_loss']} -> {r['last_train_loss']}, {r['seconds']}s)",
                          flush=True)
                    md = _write(out, command, rows, shots, args, time.time() - t0, "_".join(names))
    if rows:
        print()
        print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
