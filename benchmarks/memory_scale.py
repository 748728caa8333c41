"""Peak memory of `transferkit train` on 2,000 vs 20,000 generated images, side by side.

Each size trains in a fresh process (a tiny random-init timm model, a fixed number of steps); its
peak resident memory comes from the kernel (wait4's ru_maxrss). Decoded images are cached in an
LRU bounded by TRANSFERKIT_IMAGE_CACHE_MB (default 256), so memory must grow far less than the data.

    python benchmarks/memory_scale.py                      # 2,000 vs 20,000 images, 96 px
    python benchmarks/memory_scale.py --sizes 200,2000     # smoke test

Writes benchmarks/results/memory_scale.md (or --out).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = 10


def make_images(root: Path, n: int, size: int, seed: int = 0) -> Path:
    """n images in CLASSES folders; each class a base colour plus noise, PNG."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (CLASSES, 3))
    for c in range(CLASSES):
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        c = i % CLASSES
        px = np.clip(base[c] + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(px).save(root / f"c{c}" / f"{i:06d}.png", compress_level=1)
    return root


def train_peak_rss(data: Path, out: Path, steps: int, size: int) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of one `transferkit train` process."""
    cmd = [sys.executable, "-m", "transferkit", "train", str(data), "--backbone", "timm:test_resnet@random",
           "--image-size", str(size), "--batch-size", "32", "--steps", str(steps), "--strategy", "full",
           "--no-tta", "--out", str(out), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.time()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(p.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"train failed on {data}")
    return usage.ru_maxrss / 1024, time.time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="2000,20000")
    ap.add_argument("--pixels", type=int, default=96)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", default="benchmarks/results/memory_scale.md")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="tk-memory-") as tmp:
        for n in sizes:
            data = make_images(Path(tmp) / f"data{n}", n, args.pixels)
            rss, secs = train_peak_rss(data, Path(tmp) / f"run{n}", args.steps, args.pixels)
            rows.append((n, rss, secs))
            print(f"{n:>6} images: peak RSS {rss:7.0f} MiB ({secs:.0f} s)", flush=True)
    n0, r0, _ = rows[0]
    lines = ["| images | peak RSS (MiB) | vs first | seconds |", "| ---: | ---: | ---: | ---: |"]
    lines += [f"| {n:,} | {r:.0f} | {r / r0:.2f}x | {s:.0f} |" for n, r, s in rows]
    n1, r1, _ = rows[-1]
    summary = (f"{n1 / n0:.0f}x the images -> {r1 / r0:.2f}x the peak memory "
               f"({args.pixels} px PNG, timm:test_resnet@random, {args.steps} steps, batch 32, image cache "
               f"{os.environ.get('TRANSFERKIT_IMAGE_CACHE_MB', '256')} MiB)")
    print(summary)
    cmd = "python benchmarks/memory_scale.py" + ("" if args.sizes == "2000,20000" else f" --sizes {args.sizes}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(f"`{cmd}`\n\n" + "\n".join(lines) + f"\n\n{summary}\n")


if __name__ == "__main__":
    main()
