"""Does the ImageNet backbone help the dense tasks? Segmentation (mIoU), detection (mAP@50) and texture
defects (image AUROC), pretrained against `@random`, frozen against fine-tuned, at 10 and 50 labelled
images, 3 seeds, on real photographs offline (Debian packages only).

Data (built once, cached in --data-dir):
  segment, detect  scripts/build_dense_data.py: Tux Paint photo cut-outs pasted on MATE photographs,
                   exact masks and boxes; train and test share no stamp and no background
  anomaly          scripts/build_defect_data.py: OpenArena photo textures, foreign-texture blobs and
                   scratches pasted in, exact masks (MVTec AD layout, one folder per texture)

Every run is the real CLI, `python -m transferkit train ... --out RUN`, as a subprocess, and its numbers
are read from RUN/metrics.json (scored by train on the held-out test folder given with --test). Rows:
  segment, detect  {pretrained fine-tuned (segment: two_phase, the default; detect: full, its default),
                   pretrained frozen (linear_probe: the decoder / FPN + heads train), @random (`full` at lr
                   3e-3: everything trains from step 1, the from-scratch recipe of `compare`'s scratch
                   row)} x {10, 50 labelled images} x seeds.
                   segment: `--shots N --val-fraction 0` (no extra labels for checkpoint picking);
                   detect: a seeded N-image COCO subset (detect's train has no --shots).
  anomaly          {pretrained, @random} x texture x seed (the seed drives the coreset and the
                   threshold's folds; the data are the same).

    python benchmarks/dense.py                         # the full benchmark (2 quiet cores: see NOTES)
    python benchmarks/dense.py --quick                 # smoke: 1 seed, 10 labels, few steps, one texture
    python benchmarks/dense.py --tasks anomaly --seeds 0 --textures wood,sand

Writes benchmarks/results/dense.{json,md} (--results PREFIX to change): the command at the top, mean ±
std per row, the paired difference pretrained - @random per seed, wall seconds per run.
`--default-timing` adds one run per task with the CLI's own defaults (segment and detect on 60 images
at 160 px) and its wall time against the issue's laptop limits (10, 15 and 2 minutes); `--timing-only`
runs just those. `--table OUT.json` writes OUT.md again from the JSON (nothing runs).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from transferkit.strategies.plan import SCRATCH_LR  # noqa: E402  (the from-scratch rows' learning rate)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "dense"
SOURCE = "bundled:efficientnet_lite0"
METRIC = {"segment": "miou", "detect": "map_50", "anomaly": "image_auroc"}
# variant -> (backbone, strategy per task)
VARIANTS = {
    "pretrained": (SOURCE, {"segment": "two_phase", "detect": "full"}),
    "frozen": (SOURCE, {"segment": "linear_probe", "detect": "linear_probe"}),
    # from random weights: `full` (the encoder trains at the decoder's rate from step 1), the recipe
    # suited to random weights that `compare`'s `scratch` row uses; two_phase would spend half the steps
    # on a decoder over a frozen random encoder, and at 40 steps it ended predicting all background
    # (mIoU 0.152 on every seed; full at lr 3e-3: 0.19)
    "random": (SOURCE + "@random", {"segment": "full", "detect": "full"}),
}

LIMITS_S = {"segment": 600, "detect": 900, "anomaly": 120}     # the laptop limits for default runs


def build_data(data_dir: Path, a) -> dict[str, Path]:
    """The cached data sets (built when missing): {'dense': ..., 'defect': ...}."""
    py = sys.executable
    dense = data_dir / f"dense_{a.train_images}_{a.test_images}_{a.data_size}_s{a.data_seed}"
    defect = data_dir / f"defect_{a.anomaly_train}_{a.data_size}_s{a.data_seed}"
    if a.tasks & {"segment", "detect"} and not (dense / "SOURCES.txt").is_file():
        shutil.rmtree(dense, ignore_errors=True)
        _check([py, str(ROOT / "scripts/build_dense_data.py"), str(dense), "--train", str(a.train_images),
                "--test", str(a.test_images), "--size", str(a.data_size), "--seed", str(a.data_seed)])
    if "anomaly" in a.tasks and not (defect / "SOURCES.txt").is_file():
        shutil.rmtree(defect, ignore_errors=True)
        _check([py, str(ROOT / "scripts/build_defect_data.py"), str(defect), "--train", str(a.anomaly_train),
                "--size", str(a.data_size), "--seed", str(a.data_seed)])
    return {"dense": dense, "defect": defect}


def _check(cmd: list[str]) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"dense.py: error: {shlex.join(cmd)} failed: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")
    print(r.stdout.strip(), flush=True)


def detect_subset(train: Path, n: int, seed: int, where: Path) -> Path:
    """A COCO folder with a seeded sample of `n` of train's images (detect has no --shots)."""
    out = where / f"detect_{n}_s{seed}"
    if (out / "annotations.json").is_file():
        return out
    coco = json.loads((train / "annotations.json").read_text(encoding="utf-8"))
    images = sorted(coco["images"], key=lambda im: im["file_name"])
    keep = random.Random(seed).sample(images, min(n, len(images)))
    ids = {im["id"] for im in keep}
    (out / "images").mkdir(parents=True, exist_ok=True)
    for im in keep:
        shutil.copyfile(train / "images" / im["file_name"], out / "images" / im["file_name"])
    sub = {**coco, "images": keep, "annotations": [x for x in coco["annotations"] if x["image_id"] in ids]}
    (out / "annotations.json").write_text(json.dumps(sub), encoding="utf-8")
    return out


def plan(a, data: dict[str, Path], runs_dir: Path) -> list[dict]:
    """Every run: its row keys and its CLI arguments."""
    jobs = []
    dense = data["dense"]
    for task in ("segment", "detect"):
        if task not in a.tasks:
            continue
        steps = a.steps or (a.seg_steps if task == "segment" else a.det_steps)
        batch = a.batch_size if task == "segment" else a.det_batch
        # detect, unless told: the CLI's own steps and batch (the defaults are what is measured)
        fit = ([] if steps is None else ["--steps", str(steps)]) + ([] if batch is None else ["--batch-size", str(batch)])
        for shots in a.shots:
            for seed in a.seeds:
                for variant in a.variants:
                    backbone, strategies = VARIANTS[variant]
                    if task == "segment":
                        train = dense / "segment" / "train"
                        extra = ["--shots", str(shots), "--val-fraction", "0"]
                    else:
                        train = detect_subset(dense / "detect" / "train", shots, seed, runs_dir / "_subsets")
                        extra = []
                    if variant == "random":
                        extra = [*extra, "--lr", str(SCRATCH_LR)]
                    args = [str(train), "--task", task, "--test", str(dense / task / "test"), "--backbone", backbone,
                            "--strategy", strategies[task], *fit, "--image-size", str(a.image_size), "--seed", str(seed), *extra]
                    jobs.append({"task": task, "variant": variant, "shots": shots, "seed": seed, "args": args})
    if "anomaly" in a.tasks:
        for texture in a.textures:
            for seed in a.seeds:
                for variant in ("pretrained", "random"):
                    args = [str(data["defect"] / texture), "--task", "anomaly", "--backbone", VARIANTS[variant][0],
                            "--image-size", str(a.anomaly_size), "--seed", str(seed)]
                    jobs.append({"task": "anomaly", "variant": variant, "texture": texture, "seed": seed, "args": args})
    if a.timing_only:
        jobs = []
    if a.default_timing or a.timing_only:
        for task in ("segment", "detect"):
            if task in a.tasks:
                jobs.append({"task": task, "variant": "default-timing", "seed": 0, "args": [
                    str(dense / task / "train"), "--task", task, "--test", str(dense / task / "test"),
                    "--image-size", "160"]})
        if "anomaly" in a.tasks:
            jobs.append({"task": "anomaly", "variant": "default-timing", "seed": 0, "texture": a.textures[0],
                         "args": [str(data["defect"] / a.textures[0]), "--task", "anomaly"]})
    for i, job in enumerate(jobs):
        job["run"] = str(runs_dir / f"{i:03d}_{job['task']}_{job['variant']}")
    return jobs


def run_one(job: dict, threads: int) -> dict:
    cmd = [sys.executable, "-m", "transferkit", "train", *job["args"], "--out", job["run"], "--quiet", "--overwrite"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    job = {**job, "wall_s": round(time.perf_counter() - t, 1), "rc": r.returncode,
           "command": shlex.join(["python", "-m", "transferkit", "train", *job["args"]])}
    metrics_file = Path(job["run"]) / "metrics.json"
    if r.returncode == 0 and metrics_file.is_file():
        m = json.loads(metrics_file.read_text(encoding="utf-8"))
        job["metrics"] = {k: m.get(k) for k in ("miou", "dice", "map", "map_50", "image_auroc", "pixel_auroc",
                                                 "f1", "n_train", "n_test", "steps")
                          if m.get(k) is not None}
        job["value"] = m.get(METRIC[job["task"]])
        history = Path(job["run"]) / "history.json"  # detect: the loss of every step (is a baseline learning?)
        if history.is_file():
            loss = json.loads(history.read_text(encoding="utf-8")).get("loss") or []
            if len(loss) >= 10:
                job["loss_first10"], job["loss_last10"] = statistics.mean(loss[:10]), statistics.mean(loss[-10:])
    else:
        job["error"] = ((r.stderr or r.stdout).strip().splitlines() or ["(no output)"])[-1]
    return job


def _ms(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def _value(results, **key) -> dict[int, float]:
    """seed -> metric value of the finished runs matching key."""
    return {r["seed"]: r["value"] for r in results
            if all(r.get(k) == v for k, v in key.items()) and r.get("value") is not None}


def summarise(results: list[dict], a, command: str, total_s: float) -> tuple[dict, str]:
    lines = ["# Dense-task benchmark", "", f"`{command}`", "",
             f"Source `{SOURCE}` against `{SOURCE}@random`. Seeds {a.seeds}; wall {total_s:.0f} s in all "
             f"({a.jobs} at a time, {a.threads} torch thread(s) each) on {os.cpu_count()} logical CPUs.", ""]
    summary: dict = {"command": command, "total_wall_s": round(total_s, 1), "rows": [], "paired": [], "checks": {}}
    ran = {r["task"] for r in results if r["variant"] != "default-timing"}  # a section per task with design runs
    for task in ("segment", "detect"):
        if task not in a.tasks or task not in ran:
            continue
        metric = METRIC[task]
        steps = a.steps or (a.seg_steps if task == "segment" else a.det_steps)
        batch = a.batch_size if task == "segment" else a.det_batch
        took = sorted({r["metrics"].get("steps") for r in results if r["task"] == task and r.get("metrics")
                       and r["variant"] != "default-timing"} - {None})
        how = (f"{steps} steps" if steps else "the CLI's default steps (" + "/".join(map(str, took)) + ")") + \
            (f" of {batch}" if batch else " of its default batch")
        lines += [f"## {task}: {metric} on the held-out test images ({how}, {a.image_size} px)", "",
                  f"| backbone | strategy | labelled images | {metric} mean ± std | per seed | wall s (mean) |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for shots in a.shots:
            for variant in a.variants:
                vals = _value(results, task=task, variant=variant, shots=shots)
                walls = [r["wall_s"] for r in results if r["task"] == task and r["variant"] == variant
                         and r.get("shots") == shots]
                backbone, strategies = VARIANTS[variant]
                summary["rows"].append({"task": task, "variant": variant, "shots": shots, "metric": metric,
                                        "values": vals, "wall_s": walls})
                lines.append(f"| `{backbone}` | {strategies[task]} | {shots} | {_ms(list(vals.values()))} | "
                             + ", ".join(f"{vals[s]:.3f}" for s in sorted(vals)) + " | "
                             + (f"{statistics.mean(walls):.0f}" if walls else "-") + " |")
        lines += ["", f"Paired difference in {metric}, same seed (same labelled images, same steps):", "",
                  "| comparison | labelled images | per seed | mean ± std | wins |", "| --- | --- | --- | --- | --- |"]
        every = True
        named = {"pretrained": "pretrained", "frozen": "frozen", "random": "@random"}
        pairs = [(x, y) for x, y in (("pretrained", "random"), ("frozen", "random"), ("pretrained", "frozen"))
                 if x in a.variants and y in a.variants]
        for shots in a.shots:
            for variant, other in pairs:
                p, q = _value(results, task=task, variant=variant, shots=shots), _value(results, task=task,
                                                                                         variant=other, shots=shots)
                seeds = sorted(set(p) & set(q))
                diffs = [p[s] - q[s] for s in seeds]
                wins = sum(d > 0 for d in diffs)
                if (variant, other) == ("pretrained", "random"):
                    every = every and bool(seeds) and wins == len(seeds) and len(seeds) == len(a.seeds)
                summary["paired"].append({"task": task, "shots": shots, "a": variant, "b": other,
                                          "diff": dict(zip(seeds, diffs))})
                lines.append(f"| {variant} - {named[other]} | {shots} | " + ", ".join(f"{d:+.3f}" for d in diffs)
                             + f" | {_ms(diffs)} | {wins}/{len(seeds)} |")
        losses = [(r["variant"], r["loss_first10"], r["loss_last10"]) for r in results
                  if r["task"] == task and "loss_last10" in r]
        if losses:  # the training loss of each row: a baseline stuck at chance shows here
            lines += ["", "Training loss, mean of the first and the last 10 steps (range over runs): " + "; ".join(
                f"{v} {min(f for w, f, _ in losses if w == v):.2f}-{max(f for w, f, _ in losses if w == v):.2f} -> "
                f"{min(t for w, _, t in losses if w == v):.2f}-{max(t for w, _, t in losses if w == v):.2f}"
                for v in a.variants if any(w == v for w, _, _ in losses))]
        summary["checks"][f"{task}_pretrained_beats_random_every_seed"] = every
        lines += ["", f"Pretrained (fine-tuned) beats @random on every seed at every label count: "
                      f"**{'yes' if every else 'no'}**", ""]
    if "anomaly" in a.tasks and "anomaly" in ran:
        lines += [f"## anomaly: image AUROC (pixel AUROC) on test/good + test/<defect>, {a.anomaly_size} px", "",
                  "| texture | pretrained image AUROC | @random image AUROC | paired difference per seed | "
                  "pretrained pixel AUROC | wall s (mean) |", "| --- | --- | --- | --- | --- | --- |"]
        means, random_means = [], []
        for texture in a.textures:
            p, q = _value(results, task="anomaly", variant="pretrained", texture=texture), \
                _value(results, task="anomaly", variant="random", texture=texture)
            pix = [r["metrics"].get("pixel_auroc") for r in results if r.get("texture") == texture
                   and r["variant"] == "pretrained" and r.get("metrics")]
            walls = [r["wall_s"] for r in results if r.get("texture") == texture and r["variant"] != "default-timing"]
            seeds = sorted(set(p) & set(q))
            if p:
                means.append(statistics.mean(p.values()))
            if q:
                random_means.append(statistics.mean(q.values()))
            summary["rows"].append({"task": "anomaly", "texture": texture, "pretrained": p, "random": q,
                                    "pixel_auroc": pix, "wall_s": walls})
            lines.append(f"| {texture} | {_ms(list(p.values()))} | {_ms(list(q.values()))} | "
                         + ", ".join(f"{p[s] - q[s]:+.3f}" for s in seeds) + f" | {_ms([v for v in pix if v is not None])}"
                         f" | {statistics.mean(walls) if walls else 0:.0f} |")
        mean = statistics.mean(means) if means else None
        summary["checks"]["anomaly_mean_image_auroc"] = mean
        summary["checks"]["anomaly_mean_image_auroc_ge_0.9"] = mean is not None and mean >= 0.9
        lines += ["", f"Mean pretrained image AUROC over textures: **{mean:.3f}**" if mean is not None else
                  "Mean pretrained image AUROC over textures: -", ""]
        if random_means:
            summary["checks"]["anomaly_mean_random_image_auroc"] = statistics.mean(random_means)
            lines += [f"Mean @random image AUROC over textures: {statistics.mean(random_means):.3f}", ""]
    timing = [r for r in results if r["variant"] == "default-timing"]
    if timing:
        lines += ["## Default runs (the CLI's own steps and sizes)", "", "| task | command | wall s | limit s | "
                  "within |", "| --- | --- | --- | --- | --- |"]
        for r in timing:
            ok = r["rc"] == 0 and r["wall_s"] <= LIMITS_S[r["task"]]
            summary["checks"][f"{r['task']}_default_within_limit"] = ok
            lines.append(f"| {r['task']} | `{r['command']}` | {r['wall_s']:.0f} | {LIMITS_S[r['task']]} | "
                         f"{'yes' if ok else 'no'} |")
        lines.append("")
    failed = [r for r in results if r["rc"] != 0 or r.get("value") is None]
    if failed:
        lines += ["## Failed runs", ""] + [f"- `{r['command']}`: {r.get('error')}" for r in failed] + [""]
    lines += ["## Runs", "", "| task | variant | labels / texture | seed | metric | wall s |",
              "| --- | --- | --- | --- | --- | --- |"]
    for r in results:
        v = r.get("value")
        lines.append(f"| {r['task']} | {r['variant']} | {r.get('shots', r.get('texture', ''))} | {r['seed']} | "
                     f"{'-' if v is None else f'{v:.3f}'} | {r['wall_s']:.0f} |")
    return summary, "\n".join(lines) + "\n"


def _partial(md: str, finished: int, planned: int) -> str:
    """The page, marked under its title when fewer runs finished than were planned."""
    if finished >= planned:
        return md
    return md.replace("\n\n", f"\n\n**Partial: {finished} of {planned} planned runs finished.**\n\n", 1)


def write_results(out: Path, results: list[dict], planned: int, a, command: str, wall_s: float) -> str:
    """Write OUT.json and OUT.md for the runs finished so far; returns the markdown."""
    summary, md = summarise(results, a, command, wall_s)
    summary["runs"] = results
    summary["finished_runs"], summary["planned_runs"] = len(results), planned
    md = _partial(md, len(results), planned)
    Path(f"{out}.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    Path(f"{out}.md").write_text(md, encoding="utf-8")
    return md


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", default="segment,detect,anomaly")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--shots", default="10,50", help="labelled training images (segment, detect)")
    ap.add_argument("--variants", default="pretrained,frozen,random", help="segment/detect rows")
    ap.add_argument("--textures", default="wood,sand,marble,concrete,mud", help="anomaly textures")
    ap.add_argument("--steps", type=int, default=None, help="steps for segment and detect (overrides both below)")
    ap.add_argument("--seg-steps", type=int, default=40)
    ap.add_argument("--det-steps", type=int, default=None, help="detect steps (default: the CLI's, 20 epochs within 150..600)")
    ap.add_argument("--batch-size", type=int, default=8, help="segment batch")
    ap.add_argument("--det-batch", type=int, default=None, help="detect batch (default: the CLI's, 8)")
    ap.add_argument("--image-size", type=int, default=96, help="segment and detect training size")
    ap.add_argument("--anomaly-size", type=int, default=128)
    ap.add_argument("--data-size", type=int, default=160, help="side of the built images")
    ap.add_argument("--train-images", type=int, default=60, help="segment/detect training pool (>= largest --shots)")
    ap.add_argument("--test-images", type=int, default=40)
    ap.add_argument("--anomaly-train", type=int, default=40, help="normal training images per texture")
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--data-dir", default=str(Path(tempfile.gettempdir()) / "transferkit-dense-bench"),
                    help="where the built data are cached (default: %(default)s)")
    ap.add_argument("--runs-dir", default=None, help="where the run folders go (default: a temporary folder)")
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time (default: 2, one per core)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per run (default: cores / jobs)")
    ap.add_argument("--default-timing", action="store_true",
                    help="also time one run per task with the CLI's defaults (60 images at 160 px)")
    ap.add_argument("--timing-only", action="store_true", help="only the --default-timing runs")
    ap.add_argument("--dry-run", action="store_true", help="build the data, print the planned commands, run nothing")
    ap.add_argument("--quick", action="store_true", help="smoke: seed 0, 10 labels, 6 steps, one texture")
    ap.add_argument("--results", default=str(RESULTS), help="output prefix (default: benchmarks/results/dense)")
    ap.add_argument("--table", metavar="RESULTS_JSON", help="only write RESULTS.md again from its JSON (nothing runs)")
    a = ap.parse_args(argv)
    if a.table and not Path(a.table).is_file():
        ap.error(f"--table {a.table}: no such file (a results JSON that dense.py wrote)")
    if a.table:  # the markdown again, from the runs and the command the JSON records
        saved = json.loads(Path(a.table).read_text(encoding="utf-8"))
        b = _normalise(ap.parse_args(shlex.split(saved["command"])[2:]), ap)
        _, md = summarise(saved["runs"], b, saved["command"], saved["total_wall_s"])
        md = _partial(md, saved.get("finished_runs", 0), saved.get("planned_runs", 0))
        Path(a.table).with_suffix(".md").write_text(md, encoding="utf-8")
        print(md)
        return 0
    command = shlex.join(["python", "benchmarks/dense.py", *(sys.argv[1:] if argv is None else argv)])
    return _run(_normalise(a, ap), command)


def _normalise(a, ap):
    """The parsed options as lists and sets, checked; --quick applied."""
    if a.quick:
        a.seeds, a.shots, a.steps, a.textures = "0", "10", a.steps or 6, a.textures.split(",")[0]
    a.tasks = set(a.tasks.split(","))
    a.seeds = [int(s) for s in str(a.seeds).split(",")]
    a.shots = [int(s) for s in str(a.shots).split(",")]
    a.variants = [v for v in a.variants.split(",") if v]
    a.textures = [t for t in a.textures.split(",") if t]
    bad = (a.tasks - set(METRIC)) or (set(a.variants) - set(VARIANTS))
    if bad:
        ap.error(f"unknown task or variant {sorted(bad)[0]}")
    if max(a.shots) > a.train_images:
        ap.error(f"--shots {max(a.shots)} > --train-images {a.train_images}")
    a.threads = a.threads or max(1, (os.cpu_count() or 2) // a.jobs)
    return a


def _run(a, command: str) -> int:
    data = build_data(Path(a.data_dir).resolve(), a)
    runs_dir = Path(a.runs_dir).resolve() if a.runs_dir else Path(tempfile.mkdtemp(prefix="dense-bench-runs-"))
    jobs = plan(a, data, runs_dir)
    print(f"{len(jobs)} runs, {a.jobs} at a time; run folders in {runs_dir}", flush=True)
    if a.dry_run:
        for j in jobs:
            print(shlex.join(["python", "-m", "transferkit", "train", *j["args"], "--out", j["run"]]))
        return 0
    t0 = time.perf_counter()
    results, md = [], ""
    out = Path(a.results)
    out.parent.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(a.jobs) as pool:
        for r in pool.map(lambda j: run_one(j, a.threads), jobs):
            results.append(r)
            v = r.get("value")
            print(f"[{len(results)}/{len(jobs)}] {r['task']} {r['variant']} {r.get('shots', r.get('texture', ''))} "
                  f"seed {r['seed']}: {METRIC[r['task']]} {'FAILED ' + str(r.get('error')) if v is None else f'{v:.3f}'}"
                  f" ({r['wall_s']:.0f} s)", flush=True)
            # written after every run, so a long benchmark stopped early still leaves its finished rows
            # (the file says how many of the planned runs it holds)
            md = write_results(out, results, len(jobs), a, command, time.perf_counter() - t0)
    print(md)
    print(f"wrote {out}.json and {out}.md")
    return 0 if all(r["rc"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
