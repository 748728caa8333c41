"""Speed: transferkit against a minimal hand-written PyTorch loop, side by side in one run.

    OMP_NUM_THREADS=1 python benchmarks/bench_speed.py --threads 1

Each measurement runs in a subprocess of its own (so its peak RSS is its own); the members of a
group run one after another in an order that rotates and reverses from repeat to repeat, so drift
of a shared machine cancels, and ratios are taken between medians over `--repeats`. Imports are
done before the clock starts on both sides (they are a one-time cost of a process, reported
apart for the frozen run). On a GPU the same script runs with AMP (bf16 autocast) on both sides.

- train: `transferkit train --strategy full --no-augment --bn frozen`, timed by the engine's own
  clock (history.csv `seconds`: from the start of the phase to the end of its last step, batches
  read and decoded inside) against a minimal timm loop on the same bundled EfficientNet-Lite0
  weights, images, size, batch, AdamW and threads, in NCHW (what a user writes) and in
  channels_last (what transferkit runs); `--precision bf16` (bf16 autocast) is the engine option
  measured, channels_last the bare loop's (and the two options below).
- frozen: a `train --strategy linear_probe` run (all of `main()`: model load, decoding,
  augmentation, forwards, head fit with its cross-validation, test evaluation, report) against its
  backbone forward passes alone, through the same backbone in the same memory order, every input
  decoded, resized, augmented and mirrored before the clock starts. Items on both sides count
  forward passes: each training image as is, mirrored (augmentation and TTA are on by default) and
  in `--probe-views` augmented copies (the default count for the training set's size, `light`
  crop/flip/colour policy), each test image as is and mirrored (TTA). The run's counts are read
  from what it wrote (metrics.json `head_fit.probe_views`, config.yaml) and the two sides must
  agree, or the script stops.
- the allocator: the `transferkit` command tells glibc's malloc not to serve large blocks by mmap
  nor to return freed memory to the system (`mallopt(M_MMAP_MAX, 0)`, `mallopt(M_TRIM_THRESHOLD,
  1 GiB)`, transferkit/allocator.py): in inference every freed activation buffer above the mmap
  threshold otherwise goes back to the kernel and is faulted in again by the next batch (system
  time). The transferkit sides run with it (the command's default; `tk_eval`, which calls the
  library, sets it as the command does) and once more with `TRANSFERKIT_MALLOC=default`; the bare
  sides run with glibc's defaults and once more with the same two calls (`malloc`).
- option measured in the bare loop only (not used by transferkit): fused AdamW (`fused=True`).
- eval: `evaluate` (transferkit.engine.run.evaluate_loaded: read, check, decode, forward, metrics;
  no TTA) against a bare `torch.inference_mode` loop over a DataLoader with the same transform.
- partial:K: `train --strategy partial:K --no-augment` with the frozen-stage cache against
  `--no-stage-cache` (the engine's clock as above, computing the cache included), and the largest
  weight difference between the two.

Results: benchmarks/results/bench_speed.{json,md}; with `--only G ...`,
benchmarks/results/bench_speed_G_....{json,md}.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import resource
import shutil
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
    from transferkit.models.sources import lite_state_for_timm, lite_weights_path
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    model.load_state_dict(lite_state_for_timm(model, lite_weights_path(0)))
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
    opt = torch.optim.AdamW([{"params": body, "lr": 1e-4}, {"params": head, "lr": 1e-3}], weight_decay=0.01,
                            **({"fused": True} if spec.get("fused") else {}))
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
    if spec.get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
    t0 = time.perf_counter()
    loader = DataLoader(_Files(rows, classes, _eval_transform(spec["size"])), batch_size=64)
    probs = []
    with torch.inference_mode(), _amp(device):
        for x, _ in loader:
            probs.append(model(x.to(device)).float().softmax(-1).cpu())
    return {"seconds": time.perf_counter() - t0, "items": len(torch.cat(probs))}


def _light_transform(size: int):
    """The `light` augmentation a linear_probe run draws its probe views with (crop, flip, colour)."""
    import torch
    from torchvision.transforms import v2 as T
    return T.Compose([T.RandomResizedCrop(size, scale=(0.6, 1.0), interpolation=T.InterpolationMode.BICUBIC,
                                          antialias=True),
                      T.RandomHorizontalFlip(), T.ColorJitter(0.2, 0.2, 0.2), T.ToImage(),
                      T.ToDtype(torch.float32, scale=True), T.Normalize([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])])


def bare_forward(spec: dict) -> dict:
    """The forward passes a linear_probe run makes, and nothing else: every input (decoded, resized,
    augmented, mirrored) is prepared before the clock starts. Per training image: as is, mirrored
    and `probe_views` augmented copies; per test image: as is, mirrored and `tta_views` augmented
    copies (test-time augmentation, infer/tta.py)."""
    import torch
    device = torch.device(spec["device"])
    train, test = _rows(spec["lp_train"]), _rows(spec["test"])
    classes = sorted({c for _, c in train + test})
    plain = _Files(train + test, classes, _eval_transform(spec["size"]))
    torch.manual_seed(0)
    aug = _Files(train, classes, _light_transform(spec["size"]))
    x_train = torch.stack([plain[i][0] for i in range(len(train))])
    x_test = torch.stack([plain[len(train) + i][0] for i in range(len(test))])
    x_views = [torch.stack([aug[i][0] for i in range(len(train))]) for _ in range(spec["probe_views"])]
    aug_test = _Files(test, classes, _light_transform(spec["size"]))
    t_views = [torch.stack([aug_test[i][0] for i in range(len(test))]) for _ in range(spec.get("tta_views", 0))]
    batches = [x_train, x_train.flip(3), *x_views, x_test, x_test.flip(3), *t_views]
    counts = {"train": len(x_train), "train_mirrored": len(x_train), "probe_views": len(train) * len(x_views),
              "test": len(x_test), "test_mirrored": len(x_test), "test_views": len(test) * len(t_views)}
    model = _bare_model(10, device).eval()
    if spec.get("channels_last"):  # as transferkit runs it: the forwards of the run, not of another layout
        model = model.to(memory_format=torch.channels_last)
    t0, c0 = time.perf_counter(), time.process_time()
    n = 0
    with torch.inference_mode(), _amp(device):
        for x_all in batches:
            for i in range(0, len(x_all), 64):
                model.forward_features(x_all[i:i + 64].to(device))
                n += len(x_all[i:i + 64])
    if device.type == "cuda":
        torch.cuda.synchronize()
    return {"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0, "items": n,
            "counts": counts}


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
    with open(Path(out, "history.csv")) as f:
        last = [r for r in csv.DictReader(f) if r.get("train_loss")][-1]
    # the engine's own clock over its steps: from the phase's start (optimizer built; the stage
    # cache, where it applies, is computed inside this window) to the end of the last step, before
    # the one validation pass
    return {"seconds": float(last["seconds"]), "items": spec["steps"] * spec["batch"],
            "phase_seconds": m["phase_seconds"]}


def tk_train(spec: dict) -> dict:
    return _tk_train(spec, "full", ["--bn", "frozen", *spec.get("flags", [])])


def tk_partial(spec: dict) -> dict:
    return _tk_train(spec, spec["strategy"], spec.get("flags", []))


def tk_eval(spec: dict) -> dict:
    from transferkit.allocator import tune_allocator
    tune_allocator()  # what the `transferkit evaluate` command does first (TRANSFERKIT_MALLOC decides)
    from transferkit.engine.run import evaluate_loaded, load_run
    from transferkit.report import metrics  # noqa: F401  (imports before the clock, as on the bare side)
    model, cfg = load_run(spec["run"])
    t0 = time.perf_counter()
    m, _, probs = evaluate_loaded(model, cfg, spec["test"], tta=False)
    return {"seconds": time.perf_counter() - t0, "items": len(probs), "accuracy": m["accuracy"]}


def tk_frozen(spec: dict) -> dict:
    t_imp = time.perf_counter()
    import matplotlib.pyplot  # noqa: F401  (the report's)
    import sklearn.model_selection  # noqa: F401
    import timm  # noqa: F401
    from transferkit.cli.main import main
    from transferkit.engine import fit  # noqa: F401
    from transferkit.report import metrics  # noqa: F401
    imports = time.perf_counter() - t_imp
    # a cold cache, inside the benchmark's folder (removed with it at the end)
    os.environ["TRANSFERKIT_CACHE"] = tempfile.mkdtemp(prefix="cache-", dir=Path(spec["out"]).parent)
    t0, c0 = time.perf_counter(), time.process_time()
    assert main(["train", spec["lp_train"], "--test", spec["test"], "--backbone", "bundled:efficientnet_lite0",
                 "--strategy", "linear_probe", "--image-size", str(spec["size"]), "--out", spec["out"],
                 "--overwrite", "--quiet"]) == 0
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    m = json.loads(Path(spec["out"], "metrics.json").read_text())
    counts = _frozen_counts(spec["out"], m)
    return {"seconds": seconds, "cpu_seconds": cpu, "items": sum(counts.values()), "counts": counts,
            "accuracy": m["accuracy"], "C": m["head_fit"]["C"],
            "phase_seconds": m["phase_seconds"], "import_seconds": round(imports, 2)}


def _frozen_counts(run: str, m: dict) -> dict:
    """The backbone forward passes a linear_probe run made, read from what it wrote: the training
    images plain and (with augmentation or TTA) mirrored, `head_fit.probe_views` augmented copies of
    each, and the test images plain and (with TTA) mirrored."""
    from transferkit.config import read_config
    from transferkit.infer.tta import views_of
    cfg = read_config(Path(run) / "config.yaml")
    n_train, n_test = m["n_train"], m["n_test"]
    return {"train": n_train, "train_mirrored": n_train if (cfg.augment or cfg.tta) else 0,
            "probe_views": n_train * m["head_fit"].get("probe_views", 0),
            "test": n_test, "test_mirrored": n_test if cfg.tta else 0,
            "test_views": n_test * views_of(cfg)}


def tk_text_eval(spec: dict) -> dict:
    """`predict_probs` over demo texts with bundled:minilm-l6 (max 256 tokens), in batches of
    similar length (the default) or in the data set's order (`by_length` bypassed)."""
    import pandas as pd
    import torch
    from transferkit.data.splits import Example
    from transferkit.infer import length_sort, loaders, predict
    from transferkit.models import attach_head, load_backbone
    df = pd.read_csv(ROOT / "transferkit" / "demo_data" / "debian_descriptions.csv").sample(
        spec["texts"], random_state=0)
    device = torch.device(spec["device"])
    model = attach_head(load_backbone("bundled:minilm-l6"), sorted(df["label"].unique())).eval().to(device)
    items = [Example(t, lab) for t, lab in zip(df["text"], df["label"])]
    loader = loaders.eval_loader(model, loaders.make_dataset(model, items, train=False, augment=False,
                                                               image_size=None, seed=0), 64)
    if not spec["sorted"]:
        length_sort.by_length = lambda ld: (ld, None)
    t0 = time.perf_counter()
    probs, _ = predict.predict_probs(model, loader, device, autocast=lambda: _amp(device))
    return {"seconds": time.perf_counter() - t0, "items": len(probs)}


CHILDREN = {f.__name__: f for f in (bare_train, bare_eval, bare_forward, tk_train, tk_partial, tk_eval, tk_frozen,
                                    tk_text_eval)}


def _child(name: str, spec: dict) -> None:
    if spec.get("malloc"):
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-4, 0)        # M_MMAP_MAX: no mmap for large blocks
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: keep up to 1 GiB of freed heap
    import torch
    torch.set_num_threads(spec["threads"])
    res = CHILDREN[name](spec)
    res["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print("RESULT " + json.dumps(res), flush=True)


def run_child(name: str, spec: dict, label: str) -> dict:
    path = os.pathsep.join([str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"]), "PYTHONPATH": path, **spec.get("env", {})}
    proc = subprocess.run([sys.executable, __file__, "--child", name, "--spec", json.dumps(spec)],
                          capture_output=True, text=True, env=env)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"{name} failed:\n{proc.stderr[-3000:]}")
    res = json.loads(line[len("RESULT "):])
    print(f"  {label:<26}"
          f"{res['seconds']:8.2f} s  {res['items'] / res['seconds']:8.1f} items/s  "
          f"peak RSS {res['peak_rss_mb']:.0f} MB", flush=True)
    return res


# ------------------------------------------------------------------------------------ the run

def _median(rows: list[dict], key: str = "seconds") -> float:
    return statistics.median(r[key] for r in rows)


def _groups(args, base: dict, tmp: Path) -> dict:
    """group -> {label: (child, spec)}; the members of a group run one after another in an order
    that rotates and reverses from repeat to repeat."""
    run = str(tmp / "lp_run")
    lp = {**base, "size": args.frozen_size}
    fwd = {**lp, "probe_views": _default_probe_views(args.lp_train_items),
           "tta_views": _default_tta_views(args.lp_train_items), "channels_last": True}
    groups = {
        "train": {"transferkit": ("tk_train", {**base, "out": str(tmp / "full")}),
                  "bare": ("bare_train", {**base}),
                  "bare_nhwc": ("bare_train", {**base, "channels_last": True}),
                  "bare_nhwc_fused": ("bare_train", {**base, "channels_last": True, "fused": True}),
                  "bare_nhwc_malloc": ("bare_train", {**base, "channels_last": True, "malloc": True}),
                  "transferkit_glibc_default": ("tk_train", {**base, "out": str(tmp / "full_glibc"),
                                                             "env": {"TRANSFERKIT_MALLOC": "default"}}),
                  "transferkit_bf16": ("tk_train", {**base, "flags": ["--precision", "bf16"],
                                                    "out": str(tmp / "bf16")})},
        # the eval group reads the run the frozen group writes
        "frozen": {"transferkit": ("tk_frozen", {**lp, "out": run}),
                   "transferkit_glibc_default": ("tk_frozen", {**lp, "out": run + "_glibc",
                                                               "env": {"TRANSFERKIT_MALLOC": "default"}}),
                   "forwards_nhwc": ("bare_forward", {**fwd}),
                   "forwards_nhwc_malloc": ("bare_forward", {**fwd, "malloc": True})},
        "eval": {"transferkit": ("tk_eval", {**lp, "run": run}),
                 "transferkit_glibc_default": ("tk_eval", {**lp, "run": run, "env": {"TRANSFERKIT_MALLOC": "default"}}),
                 "bare": ("bare_eval", {**lp}),
                 "bare_nhwc": ("bare_eval", {**lp, "channels_last": True}),
                 "bare_nhwc_malloc": ("bare_eval", {**lp, "channels_last": True, "malloc": True})},
    }
    if args.only and "text" in args.only:  # not in the default run: `--only text`
        groups["text"] = {"sorted": ("tk_text_eval", {**base, "texts": args.texts, "sorted": True}),
                          "unsorted": ("tk_text_eval", {**base, "texts": args.texts, "sorted": False})}
    for k in args.partial:
        spec = {**base, "strategy": f"partial:{k}", "steps": args.partial_steps}
        groups[f"partial:{k}"] = {"cached": ("tk_partial", {**spec, "out": str(tmp / f"p{k}_cached")}),
                                  "plain": ("tk_partial", {**spec, "flags": ["--no-stage-cache"],
                                                           "out": str(tmp / f"p{k}_plain")})}
    return {k: v for k, v in groups.items() if not args.only or k in args.only}


def _default_probe_views(n_train: int) -> int:
    """The augmented views per training image a default linear_probe run draws (infer/probe_views.py);
    the frozen group checks afterwards that the run drew as many (its metrics' head_fit.probe_views)."""
    from transferkit.config import TrainConfig
    from transferkit.infer.probe_views import n_probe_views
    return n_probe_views(TrainConfig(data="-", out="-"), n_train, "image")


def _default_tta_views(n_train: int) -> int:
    """The augmented test-time copies a default linear_probe run on `n_train` images of the 10 demo
    classes scores each test image with (infer/tta.py); checked afterwards like the probe views."""
    from transferkit.config import TrainConfig
    from transferkit.data.splits import Example
    from transferkit.infer.tta import resolve_views
    items = [Example(f"{i}.png", str(i % 10)) for i in range(n_train)]
    return resolve_views(TrainConfig(data="-", out="-"), items, "image")


# (group, A, B, what the ratio is): throughput ratios are B time / A time (higher: A faster);
# the frozen ratio is A time / B time (the run's wall over its forward passes: lower is better)
RATIOS = [
    ("train", "transferkit", "bare", "training throughput, transferkit (defaults) / bare timm loop (NCHW)"),
    ("train", "transferkit", "bare_nhwc", "training throughput, transferkit / bare loop with channels_last"),
    ("train", "transferkit_bf16", "transferkit", "option --precision bf16: bf16 autocast / fp32"),
    ("train", "bare_nhwc", "bare", "option channels_last in the bare loop: NHWC / NCHW"),
    ("train", "transferkit", "transferkit_glibc_default", "the allocator setting in transferkit, training: "
                                                          "tuned (default) / TRANSFERKIT_MALLOC=default"),
    ("train", "bare_nhwc_fused", "bare_nhwc", "option fused AdamW in the bare loop (channels_last): fused / default"),
    ("train", "bare_nhwc_malloc", "bare_nhwc", "option glibc malloc without mmap or trimming in the bare loop "
                                              "(channels_last): tuned / default"),
    ("frozen", "transferkit", "forwards_nhwc", "linear_probe run wall time / its forward passes alone (target <= 1.5)"),
    ("frozen", "transferkit", "forwards_nhwc_malloc", "linear_probe run wall time / its forward passes alone, "
                                                      "both with the allocator setting"),
    ("frozen", "transferkit_glibc_default", "transferkit", "the allocator setting in transferkit, a linear_probe "
                                                           "run: TRANSFERKIT_MALLOC=default time / default time"),
    ("eval", "transferkit", "bare", "evaluation throughput, evaluate / bare inference_mode loop (NCHW)"),
    ("eval", "transferkit", "bare_nhwc", "evaluation throughput, evaluate / bare loop with channels_last"),
    ("eval", "transferkit", "transferkit_glibc_default", "the allocator setting in transferkit, evaluate: "
                                                         "tuned (default) / TRANSFERKIT_MALLOC=default"),
    ("eval", "bare_nhwc_malloc", "bare_nhwc", "option glibc malloc without mmap or trimming in the bare inference "
                                             "loop (channels_last): tuned / default"),
    ("frozen", "forwards_nhwc", "forwards_nhwc_malloc", "option glibc malloc without mmap or trimming, the frozen "
                                                       "run's forward passes alone: default time / tuned time"),
    ("text", "sorted", "unsorted", "text inference (MiniLM-L6), batches of similar length / in data order"),
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=4, help="training steps per measured run")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--image-size", type=int, default=96, help="training image size")
    ap.add_argument("--frozen-size", type=int, default=128, help="image size of the frozen run and eval")
    ap.add_argument("--train-items", type=int, default=64)
    ap.add_argument("--lp-train-items", type=int, default=45)
    ap.add_argument("--test-items", type=int, default=301, help="odd on purpose: no batch divides it")
    ap.add_argument("--partial", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--partial-steps", type=int, default=8)
    ap.add_argument("--only", nargs="*", help="measure only these groups (and 'text', not in the default run)")
    ap.add_argument("--texts", type=int, default=640, help="texts of the 'text' group")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--summarise", metavar="RESULTS_JSON",
                    help="recompute the ratios and the markdown of an earlier run from the raw timings in its "
                         "JSON (groups without partial:K, whose weight check needs the run folders)")
    ap.add_argument("--child")
    ap.add_argument("--spec")
    args = ap.parse_args(argv)
    if args.child:
        _child(args.child, json.loads(args.spec))
        return 0
    if args.summarise:
        return _resummarise(Path(args.summarise))
    import torch
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tmp = Path(tempfile.mkdtemp(prefix="bench-speed-"))
    splits = make_splits(tmp, args.train_items, args.lp_train_items, args.test_items)
    base = {**splits, "device": device, "threads": args.threads, "steps": args.steps,
            "batch": args.batch_size, "size": args.image_size}
    groups = _groups(args, base, tmp)
    raw: dict[str, dict[str, list[dict]]] = {g: {m: [] for m in members} for g, members in groups.items()}
    t_start = time.time()
    for r in range(args.repeats):
        print(f"repeat {r + 1}/{args.repeats}", flush=True)
        for g, members in groups.items():
            order = list(members)
            order = order[r % len(order):] + order[:r % len(order)]
            for label in (order if r % 2 == 0 else order[::-1]):
                child, spec = members[label]
                raw[g][label].append(run_child(child, spec, f"{g}/{label}"))
    summary = _summarise(raw, args, tmp)
    summary["machine"] = _machine(device, args.threads)
    summary["command"] = "OMP_NUM_THREADS=%d python benchmarks/bench_speed.py %s" % (
        args.threads, " ".join(argv if argv is not None else sys.argv[1:]))
    summary["wall_seconds"] = round(time.time() - t_start, 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "bench_speed" + ("_" + "_".join(args.only).replace(":", "") if args.only else "")
    (out / f"{name}.json").write_text(json.dumps({"summary": summary, "raw": raw}, indent=1) + "\n")
    (out / f"{name}.md").write_text(_markdown(summary))
    print(_markdown(summary))
    shutil.rmtree(tmp, ignore_errors=True)  # runs, caches and splits: hundreds of MB per run
    return 0


def _resummarise(path: Path) -> int:
    """--summarise: the same summary from the same raw timings, written back beside them."""
    old = json.loads(path.read_text())
    raw, kept = old["raw"], old["summary"]
    if any(g.startswith("partial:") for g in raw):
        raise SystemExit(f"{path} has partial:K groups; their weight check needs the run folders: rerun instead")
    summary = _summarise(raw, argparse.Namespace(**kept["settings"]), Path("-"))
    summary.update({k: kept[k] for k in ("machine", "command", "wall_seconds")})
    path.write_text(json.dumps({"summary": summary, "raw": raw}, indent=1) + "\n")
    path.with_suffix(".md").write_text(_markdown(summary))
    print(_markdown(summary))
    return 0


def _summarise(raw: dict, args, tmp: Path) -> dict:
    sides = {}
    for g, members in raw.items():
        for label, rows in members.items():
            t = _median(rows)
            sides[f"{g}/{label}"] = {"seconds": round(t, 3), "items": rows[0]["items"],
                                     "items_per_s": round(rows[0]["items"] / t, 2),
                                     "peak_rss_mb": max(x["peak_rss_mb"] for x in rows), "repeats": len(rows)}
    if "frozen" in raw:  # both sides must have made the same forward passes, or the ratio means nothing
        counts = {label: rows[0]["counts"] for label, rows in raw["frozen"].items()}
        if len({json.dumps(c, sort_keys=True) for c in counts.values()}) != 1:
            raise RuntimeError(f"the frozen group's sides made different forward passes: {counts}")
        sides["frozen/transferkit"]["counts"] = counts["transferkit"]
        sides["frozen/transferkit"]["C"] = sorted({r["C"] for r in raw["frozen"]["transferkit"]})
        sides["frozen/transferkit"]["accuracy"] = sorted({r["accuracy"] for r in raw["frozen"]["transferkit"]})
        for label, rows in raw["frozen"].items():
            sides[f"frozen/{label}"]["cpu_seconds"] = round(_median(rows, "cpu_seconds"), 3)
    ratios = []
    for g, a, b, what in RATIOS:
        if g in raw:
            ta, tb = sides[f"{g}/{a}"]["seconds"], sides[f"{g}/{b}"]["seconds"]
            ratios.append({"group": g, "a": a, "b": b, "what": what,
                           "ratio": round(ta / tb if g == "frozen" else tb / ta, 3)})
    for fwd, how in (("forwards_nhwc", ""), ("forwards_nhwc_malloc", ", both with the allocator setting")):
        if "frozen" in raw and fwd in raw["frozen"]:
            ratios.append({"group": "frozen", "a": "transferkit", "b": fwd,
                           "what": f"linear_probe run / its forward passes alone{how}, in process CPU time (user + "
                                   "system; less sensitive than wall time to other load on a shared machine)",
                           "ratio": round(sides["frozen/transferkit"]["cpu_seconds"]
                                          / sides[f"frozen/{fwd}"]["cpu_seconds"], 3)})
    for k in args.partial:
        g = f"partial:{k}"
        if g in raw:
            ratios.append({"group": g, "a": "cached", "b": "plain",
                           "what": f"{g} --no-augment: frozen-stage cache / --no-stage-cache, training phase",
                           "ratio": round(sides[f"{g}/plain"]["seconds"] / sides[f"{g}/cached"]["seconds"], 3),
                           "max_weight_diff": _max_weight_diff(str(tmp / f"p{k}_cached"), str(tmp / f"p{k}_plain"))})
    return {"ratios": ratios, "sides": sides,
            "settings": {k: v for k, v in vars(args).items() if k not in ("child", "spec")}}


def _max_weight_diff(a: str, b: str) -> float:
    from safetensors.torch import load_file
    wa, wb = load_file(str(Path(a, "last", "model.safetensors"))), load_file(str(Path(b, "last", "model.safetensors")))
    return max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa if wa[k].is_floating_point())


def _markdown(s: dict) -> str:
    lines = [f"Machine: {s['machine']}", "", f"Command: `{s['command']}` ({s['wall_seconds']} s)", "",
             "| ratio | what |", "| ---: | --- |"]
    for r in s["ratios"]:
        extra = f" (largest weight difference {r['max_weight_diff']:.1e})" if "max_weight_diff" in r else ""
        lines.append(f"| **{r['ratio']:.2f}x** | {r['what']}{extra} |")
    lines += ["", "| side | median s | items | items/s | peak RSS MB |", "| --- | ---: | ---: | ---: | ---: |"]
    for name, v in s["sides"].items():
        lines.append(f"| {name} | {v['seconds']:.2f} | {v['items']} | {v['items_per_s']:.1f} | {v['peak_rss_mb']:.0f} |")
    if "frozen/transferkit" in s["sides"]:
        v = s["sides"]["frozen/transferkit"]
        c = v["counts"]
        lines += ["", f"Frozen group, items = backbone forward passes, the same on both sides (checked): "
                      f"{c['train']} training images as is + {c['train_mirrored']} mirrored + {c['probe_views']} "
                      f"augmented probe views, {c['test']} test images as is + {c['test_mirrored']} mirrored + "
                      f"{c.get('test_views', 0)} augmented copies (TTA). "
                      f"The run's chosen C: {v['C']}, test accuracy: {v['accuracy']} (every repeat). "
                      f"Median process CPU seconds: run {v['cpu_seconds']:.2f}, forwards "
                      f"{s['sides']['frozen/forwards_nhwc']['cpu_seconds']:.2f}."]
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
