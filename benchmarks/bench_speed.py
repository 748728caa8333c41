"""Speed: transferkit against a minimal hand-written PyTorch loop, side by side in one run.

    OMP_NUM_THREADS=1 python benchmarks/bench_speed.py --threads 1

Each measurement runs in a subprocess of its own (so its peak RSS is its own), the two sides of a
comparison alternate (A B, then B A, ...) so that drift of a shared machine cancels, and the
median over `--repeats` is reported as a ratio. On a GPU the same script runs with AMP (bf16
autocast) on both sides. Pairs:

- train: `transferkit train --strategy full --no-augment --bn frozen` (the engine's SGD phase, timed
  by the engine: `metrics.json` phase_seconds, its one validation pass included) against a timm
  loop on the same bundled EfficientNet-Lite0 weights, images, size, batch, AdamW and threads;
  `--precision bf16` through the engine is the option measured next to it.
- eval: `evaluate` (transferkit.engine.run.evaluate_loaded: read, decode, forward, metrics) against
  a bare `torch.inference_mode` loop over a DataLoader with the same transform.
- frozen: a `train --strategy linear_probe` run's wall time (everything in `main()` after import:
  model load, decoding, forwards, head fit, test evaluation, report) against its forward passes
  alone (the same number of images, already decoded, through the backbone).
- partial:K: `train --strategy partial:K --no-augment` with the frozen-stage cache against
  `--no-stage-cache` (engine phase time), and the largest weight difference between the two.
- options (bare loop, same model and data): channels_last and bf16 autocast against plain fp32.

Results: benchmarks/results/bench_speed.{json,md}.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLIPART = ROOT / "transferkit" / "demo_data" / "clipart"
RESULTS = ROOT / "benchmarks" / "results"


# ------------------------------------------------------------------------------------------ data

def _write_csv(path: Path, rows: list[tuple[str, str]]) -> str:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows(rows)
    return str(path)


def make_splits(tmp: Path, n_train: int, n_lp_train: int, n_test: int, n_val: int = 10) -> dict:
    """Disjoint CSV splits of the demo clip-art set (10 classes), class-balanced, seeded."""
    rng = random.Random(0)
    by_class = {d.name: sorted(str(p) for p in d.iterdir() if p.suffix == ".png")
                for d in sorted(CLIPART.iterdir()) if d.is_dir()}
    for files in by_class.values():
        rng.shuffle(files)
    pools = {c: list(files) for c, files in by_class.items()}

    def take(n: int) -> list[tuple[str, str]]:
        out, classes = [], list(pools)
        while len(out) < n:
            for c in classes:
                if len(out) < n and pools[c]:
                    out.append((pools[c].pop(), c))
        return out

    return {"train": _write_csv(tmp / "train.csv", take(n_train)),
            "val": _write_csv(tmp / "val.csv", take(n_val)),
            "lp_train": _write_csv(tmp / "lp_train.csv", take(n_lp_train)),
            "test": _write_csv(tmp / "test.csv", take(n_test))}


def _rows(csv_path: str) -> list[tuple[str, str]]:
    with open(csv_path) as f:
        return [(r["path"], r["label"]) for r in csv.DictReader(f)]


# ---------------------------------------------------------------------------------- bare side

def _bare_model(num_classes: int, device):
    """timm's tf_efficientnet_lite0 with the bundled ImageNet weights and a new head."""
    import timm
    from transferkit.models.sources import _lite0_weights_path, lite0_state_for_timm
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    model.load_state_dict(lite0_state_for_timm(model, _lite0_weights_path()))
    model.reset_classifier(num_classes)
    return model.to(device)


class _Files:
    """The minimal dataset a user writes: open, convert, transform, per item."""

    def __init__(self, rows, classes, tf):
        self.rows, self.cls, self.tf = rows, {c: i for i, c in enumerate(classes)}, tf

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        from PIL import Image
        path, label = self.rows[i]
        with Image.open(path) as im:
            return self.tf(im.convert("RGB")), self.cls[label]


def _eval_transform(size: int):
    import torch
    from torchvision.transforms import v2 as T
    return T.Compose([T.Resize(int(round(size / 0.875)), interpolation=T.InterpolationMode.BICUBIC),
                      T.CenterCrop(size), T.ToImage(), T.ToDtype(torch.float32, scale=True),
                      T.Normalize([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])])


def _amp(device):
    import torch
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def bare_train(spec: dict) -> dict:
    import torch
    from torch.utils.data import DataLoader
    device = torch.device(spec["device"])
    rows = _rows(spec["train"])
    classes = sorted({c for _, c in rows})
    torch.manual_seed(0)
    model = _bare_model(len(classes), device)
    head = list(model.get_classifier().parameters())
    body = [p for p in model.parameters() if all(p is not h for h in head)]
    opt = torch.optim.AdamW([{"params": body, "lr": 1e-4}, {"params": head, "lr": 1e-3}], weight_decay=0.01)
    loader = DataLoader(_Files(rows, classes, _eval_transform(spec["size"])), batch_size=spec["batch"],
                        shuffle=True)
    channels_last, bf16 = spec.get("channels_last", False), spec.get("bf16", False)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    steps, seen = 0, 0
    t0 = time.perf_counter()
    while steps < spec["steps"]:
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16 or device.type == "cuda"):
                loss = torch.nn.functional.cross_entropy(model(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps, seen = steps + 1, seen + len(y)
            if steps == spec["steps"]:
                break
    if device.type == "cuda":
        torch.cuda.synchronize()
    return {"seconds": time.perf_counter() - t0, "items": seen}


def bare_eval(spec: dict) -> dict:
    import torch
    from torch.utils.data import DataLoader
    device = torch.device(spec["device"])
    rows = _rows(spec["test"])
    classes = sorted({c for _, c in rows})
    model = _bare_model(len(classes), device).eval()
    t0 = time.perf_counter()
    loader = DataLoader(_Files(rows, classes, _eval_transform(spec["size"])), batch_size=64)
    probs = []
    with torch.inference_mode(), _amp(device):
        for x, _ in loader:
            probs.append(model(x.to(device)).float().softmax(-1).cpu())
    return {"seconds": time.perf_counter() - t0, "items": len(torch.cat(probs))}


def bare_forward(spec: dict) -> dict:
    """The forward passes a linear_probe run needs, and nothing else: images decoded beforehand."""
    import torch
    device = torch.device(spec["device"])
    tf = _eval_transform(spec["size"])
    rows = _rows(spec["lp_train"]) + _rows(spec["test"])
    x_all = torch.stack([_Files(rows, sorted({c for _, c in rows}), tf)[i][0] for i in range(len(rows))])
    model = _bare_model(10, device).eval()
    t0 = time.perf_counter()
    n = 0
    with torch.inference_mode(), _amp(device):
        for _ in range(spec["views"]):
            for i in range(0, len(x_all), 64):
                model.forward_features(x_all[i:i + 64].to(device))
                n += len(x_all[i:i + 64])
    if device.type == "cuda":
        torch.cuda.synchronize()
    return {"seconds": time.perf_counter() - t0, "items": n}


# ------------------------------------------------------------------------------ transferkit side

def _tk_train(spec: dict, strategy: str, extra: list[str]) -> dict:
    from transferkit.cli.main import main
    out = spec["out"]
    argv = ["train", spec["train"], "--val", spec["val"], "--test", spec["val"], "--backbone",
            "bundled:efficientnet_lite0", "--strategy", strategy, "--steps", str(spec["steps"]),
            "--batch-size", str(spec["batch"]), "--image-size", str(spec["size"]), "--no-augment",
            "--eval-every", "100000", "--out", out, "--overwrite", "--quiet", *extra]
    assert main(argv) == 0, argv
    m = json.loads(Path(out, "metrics.json").read_text())
    phase = [k for k in m["phase_seconds"] if k not in ("head", "linear_probe")]
    return {"seconds": sum(m["phase_seconds"][k] for k in phase), "items": spec["steps"] * spec["batch"]}


def tk_train(spec: dict) -> dict:
    return _tk_train(spec, "full", ["--bn", "frozen", *spec.get("flags", [])])


def tk_partial(spec: dict) -> dict:
    return _tk_train(spec, spec["strategy"], spec.get("flags", []))


def tk_eval(spec: dict) -> dict:
    from transferkit.engine.run import evaluate_loaded, load_run
    model, cfg = load_run(spec["run"])
    t0 = time.perf_counter()
    m, _, probs = evaluate_loaded(model, cfg, spec["test"], tta=False)
    return {"seconds": time.perf_counter() - t0, "items": len(probs), "accuracy": m["accuracy"]}


def tk_frozen(spec: dict) -> dict:
    from transferkit.cli.main import main
    os.environ["TRANSFERKIT_CACHE"] = tempfile.mkdtemp(prefix="bench-speed-cache-")  # a cold cache
    t0 = time.perf_counter()
    assert main(["train", spec["lp_train"], "--test", spec["test"], "--backbone", "bundled:efficientnet_lite0",
                 "--strategy", "linear_probe", "--image-size", str(spec["size"]), "--out", spec["out"],
                 "--overwrite", "--quiet"]) == 0
    seconds = time.perf_counter() - t0
    m = json.loads(Path(spec["out"], "metrics.json").read_text())
    return {"seconds": seconds, "items": m["n_train"] + m["n_test"], "accuracy": m["accuracy"],
            "phase_seconds": m["phase_seconds"]}


CHILDREN = {f.__name__: f for f in (bare_train, bare_eval, bare_forward, tk_train, tk_partial, tk_eval, tk_frozen)}


def _child(name: str, spec: dict) -> None:
    import torch
    torch.set_num_threads(spec["threads"])
    res = CHILDREN[name](spec)
    res["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print("RESULT " + json.dumps(res), flush=True)


def run_child(name: str, spec: dict) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"]), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, __file__, "--child", name, "--spec", json.dumps(spec)],
                          capture_output=True, text=True, env=env)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"{name} failed:\n{proc.stderr[-3000:]}")
    res = json.loads(line[len("RESULT "):])
    print(f"  {name:<13} {json.dumps(spec.get('flags') or spec.get('strategy') or '')[:28]:<30}"
          f"{res['seconds']:8.2f} s  {res['items'] / res['seconds']:8.1f} items/s  "
          f"peak RSS {res['peak_rss_mb']:.0f} MB", flush=True)
    return res


# ------------------------------------------------------------------------------------ the run

def _median(rows: list[dict], key: str = "seconds") -> float:
    return statistics.median(r[key] for r in rows)


def _pairs(args, base: dict, tmp: Path) -> dict:
    """name -> (child A, spec A, child B, spec B): A is transferkit's side (or the option)."""
    run = str(tmp / "lp_run")
    size_lp = args.frozen_size
    pairs = {
        "train": ("tk_train", {**base, "out": str(tmp / "full")}, "bare_train", {**base}),
        "train_bf16_option": ("tk_train", {**base, "flags": ["--precision", "bf16"], "out": str(tmp / "bf16")},
                              "tk_train", {**base, "out": str(tmp / "full")}),
        "frozen": ("tk_frozen", {**base, "size": size_lp, "out": run}, "bare_forward",
                   {**base, "size": size_lp, "views": 2}),
        "eval": ("tk_eval", {**base, "size": size_lp, "run": run}, "bare_eval", {**base, "size": size_lp}),
        "option_channels_last": ("bare_train", {**base, "channels_last": True}, "bare_train", {**base}),
        "option_bf16_autocast": ("bare_train", {**base, "bf16": True}, "bare_train", {**base}),
    }
    for k in args.partial:
        spec = {**base, "strategy": f"partial:{k}", "steps": args.partial_steps}
        pairs[f"partial:{k}"] = ("tk_partial", {**spec, "out": str(tmp / f"p{k}_cached")},
                                 "tk_partial", {**spec, "flags": ["--no-stage-cache"],
                                                "out": str(tmp / f"p{k}_plain")})
    return {k: v for k, v in pairs.items() if not args.only or k in args.only}


def _max_weight_diff(a: str, b: str) -> float:
    from safetensors.torch import load_file
    wa, wb = load_file(str(Path(a, "last", "model.safetensors"))), load_file(str(Path(b, "last", "model.safetensors")))
    return max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa if wa[k].is_floating_point())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=6, help="training steps per measured run")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--image-size", type=int, default=96, help="training image size")
    ap.add_argument("--frozen-size", type=int, default=128, help="image size of the frozen run and eval")
    ap.add_argument("--train-items", type=int, default=96)
    ap.add_argument("--lp-train-items", type=int, default=45)
    ap.add_argument("--test-items", type=int, default=256)
    ap.add_argument("--partial", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--partial-steps", type=int, default=12)
    ap.add_argument("--only", nargs="*", help="measure only these pairs")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--child")
    ap.add_argument("--spec")
    args = ap.parse_args(argv)
    if args.child:
        _child(args.child, json.loads(args.spec))
        return 0
    import torch
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tmp = Path(tempfile.mkdtemp(prefix="bench-speed-"))
    splits = make_splits(tmp, args.train_items, args.lp_train_items, args.test_items)
    base = {**splits, "device": device, "threads": args.threads, "steps": args.steps,
            "batch": args.batch_size, "size": args.image_size}
    pairs = _pairs(args, base, tmp)
    raw: dict[str, dict[str, list[dict]]] = {k: {"a": [], "b": []} for k in pairs}
    t_start = time.time()
    for r in range(args.repeats):
        print(f"repeat {r + 1}/{args.repeats}", flush=True)
        for name, (ca, sa, cb, sb) in pairs.items():
            order = [("a", ca, sa), ("b", cb, sb)]
            for side, child, spec in (order if r % 2 == 0 else order[::-1]):
                raw[name][side].append(run_child(child, spec))
    summary = _summarise(raw, args, tmp)
    summary["machine"] = _machine(device, args.threads)
    summary["command"] = "OMP_NUM_THREADS=%d python benchmarks/bench_speed.py %s" % (
        args.threads, " ".join(argv if argv is not None else sys.argv[1:]))
    summary["wall_seconds"] = round(time.time() - t_start, 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_speed.json").write_text(json.dumps({"summary": summary, "raw": raw}, indent=1) + "\n")
    (out / "bench_speed.md").write_text(_markdown(summary))
    print(_markdown(summary))
    return 0


def _summarise(raw: dict, args, tmp: Path) -> dict:
    rows = {}
    for name, sides in raw.items():
        a, b = sides["a"], sides["b"]
        ta, tb = _median(a), _median(b)
        row = {"a_seconds": round(ta, 3), "b_seconds": round(tb, 3),
               "a_items_per_s": round(a[0]["items"] / ta, 2), "b_items_per_s": round(b[0]["items"] / tb, 2),
               "a_peak_rss_mb": max(x["peak_rss_mb"] for x in a), "b_peak_rss_mb": max(x["peak_rss_mb"] for x in b),
               "repeats": len(a)}
        if name == "frozen":  # wall time of the run / time of its forward passes (lower is better)
            row["ratio"] = round(ta / tb, 3)
            row["forwards"] = b[0]["items"]
        else:  # speed of A over B (higher is better)
            row["ratio"] = round(tb / ta, 3)
        if name.startswith("partial:"):
            k = name.split(":")[1]
            row["max_weight_diff"] = _max_weight_diff(str(tmp / f"p{k}_cached"), str(tmp / f"p{k}_plain"))
        rows[name] = row
    return {"pairs": rows, "settings": {k: v for k, v in vars(args).items() if k not in ("child", "spec")}}


WHAT = {
    "train": ("transferkit train --strategy full", "timm loop", "throughput, A / B"),
    "train_bf16_option": ("train --precision bf16", "train (fp32)", "throughput, A / B"),
    "frozen": ("linear_probe run, wall", "its forward passes", "time, A / B (target <= 1.5)"),
    "eval": ("evaluate", "inference_mode loop", "throughput, A / B"),
    "option_channels_last": ("timm loop, channels_last", "timm loop", "throughput, A / B"),
    "option_bf16_autocast": ("timm loop, bf16 autocast", "timm loop", "throughput, A / B"),
}


def _markdown(s: dict) -> str:
    lines = [f"Machine: {s['machine']}", "", f"Command: `{s['command']}` ({s['wall_seconds']} s)", "",
             "| pair | A | B | A s | B s | A items/s | B items/s | ratio | peak RSS A / B (MB) |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in s["pairs"].items():
        a, b, how = WHAT.get(name, (f"train {name}, frozen-stage cache", f"{name}, --no-stage-cache",
                                    "speed-up, B time / A time"))
        extra = f" (max weight diff {r['max_weight_diff']:.1e})" if "max_weight_diff" in r else ""
        lines.append(f"| {name} | {a} | {b} | {r['a_seconds']:.2f} | {r['b_seconds']:.2f} | "
                     f"{r['a_items_per_s']:.1f} | {r['b_items_per_s']:.1f} | **{r['ratio']:.2f}** {how}{extra} | "
                     f"{r['a_peak_rss_mb']:.0f} / {r['b_peak_rss_mb']:.0f} |")
    return "\n".join(lines) + "\n"


def _machine(device: str, threads: int) -> str:
    import torch
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else "no GPU"
    return (f"{cpu}, {os.cpu_count()} cores, {threads} thread(s) per side, {gpu}; torch {torch.__version__}, "
            f"Python {platform.python_version()}")


if __name__ == "__main__":
    sys.exit(main())
