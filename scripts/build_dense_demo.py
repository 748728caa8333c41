"""Write two small synthetic data sets for the dense tasks, seeded, offline:

  OUT/segment   images/ + masks/ + classes.txt: textured backgrounds with 1-3 discs (class "disc") and
                squares (class "square") of random size, colour jittered, partly overlapping;
  OUT/anomaly   the MVTec AD layout: a woven texture (train/good, test/good) and the same texture with
                a scratch (a thin dark line) or a stain (a soft blob) in test/<defect>/, with masks in
                ground_truth/<defect>/<stem>_mask.png.

    python scripts/build_dense_demo.py OUT [--size 128] [--seed 0]
    transferkit train OUT/segment --out runs/seg      # task inferred: segment
    transferkit train OUT/anomaly --out runs/anomaly  # task inferred: anomaly
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def _background(rng, size: int) -> Image.Image:
    yy, xx = np.mgrid[:size, :size]
    f = rng.uniform(0.05, 0.2, 2)
    base = 110 + 40 * np.sin(xx * f[0] + rng.uniform(0, 6.3)) * np.cos(yy * f[1])
    rgb = np.stack([base, base * rng.uniform(0.8, 1.1), base * rng.uniform(0.8, 1.1)], -1)
    return Image.fromarray(np.clip(rgb + rng.normal(0, 12, rgb.shape), 0, 255).astype(np.uint8))


def build_segment(out: Path, n: int, size: int, rng) -> None:
    (out / "images").mkdir(parents=True)
    (out / "masks").mkdir()
    (out / "classes.txt").write_text("background\ndisc\nsquare\n", encoding="utf-8")
    for i in range(n):
        img, mask = _background(rng, size), Image.new("L", (size, size), 0)
        di, dm = ImageDraw.Draw(img), ImageDraw.Draw(mask)
        for _ in range(int(rng.integers(1, 4))):
            k = int(rng.integers(1, 3))
            r = int(rng.integers(size // 12, size // 5))
            x, y = (int(v) for v in rng.integers(r, size - r, 2))
            colour = tuple(int(c) for c in np.clip(rng.normal((200, 60, 50) if k == 1 else (50, 80, 200), 25), 0, 255))
            box = (x - r, y - r, x + r, y + r)
            (di.ellipse if k == 1 else di.rectangle)(box, fill=colour)
            (dm.ellipse if k == 1 else dm.rectangle)(box, fill=k)
        img.save(out / "images" / f"img{i:03d}.png")
        mask.save(out / "masks" / f"img{i:03d}.png")


def _weave(rng, size: int) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    p = rng.uniform(0, 6.3, 2)
    base = 120 + 35 * np.sin(xx * 0.7 + p[0]) + 35 * np.sin(yy * 0.7 + p[1])
    return np.clip(np.repeat(base[..., None], 3, 2) + rng.normal(0, 8, (size, size, 3)), 0, 255)


def build_anomaly(out: Path, n_train: int, n_test: int, size: int, rng) -> None:
    for d in ("train/good", "test/good", "test/scratch", "test/stain", "ground_truth/scratch", "ground_truth/stain"):
        (out / d).mkdir(parents=True)
    for i in range(n_train):
        Image.fromarray(_weave(rng, size).astype(np.uint8)).save(out / "train/good" / f"{i:03d}.png")
    for i in range(n_test):
        Image.fromarray(_weave(rng, size).astype(np.uint8)).save(out / "test/good" / f"{i:03d}.png")
        for defect in ("scratch", "stain"):
            img = Image.fromarray(_weave(rng, size).astype(np.uint8))
            mask = Image.new("L", (size, size), 0)
            x0, y0, x1, y1 = (int(v) for v in rng.integers(size // 8, size - size // 8, 4))
            if defect == "scratch":
                ImageDraw.Draw(img).line((x0, y0, x1, y1), fill=(40, 35, 30), width=max(2, size // 40))
                ImageDraw.Draw(mask).line((x0, y0, x1, y1), fill=255, width=max(2, size // 40))
            else:
                r = size // 10
                blob = Image.new("L", (size, size), 0)
                ImageDraw.Draw(blob).ellipse((x0 - r, y0 - r, x0 + r, y0 + r), fill=160)
                img = Image.composite(Image.new("RGB", (size, size), (150, 110, 40)), img,
                                      blob.filter(ImageFilter.GaussianBlur(r / 3)))
                ImageDraw.Draw(mask).ellipse((x0 - r, y0 - r, x0 + r, y0 + r), fill=255)
            img.save(out / "test" / defect / f"{i:03d}.png")
            mask.save(out / "ground_truth" / defect / f"{i:03d}_mask.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="folder to create (must not exist)")
    ap.add_argument("--size", type=int, default=128, help="image side in pixels (default: 128)")
    ap.add_argument("--seed", type=int, default=0, help="(default: 0)")
    ap.add_argument("--images", type=int, default=40, help="segmentation images (default: 40)")
    args = ap.parse_args()
    out = Path(args.out)
    if out.exists():
        raise SystemExit(f"{out} exists; choose a new folder")
    rng = np.random.default_rng(args.seed)
    build_segment(out / "segment", args.images, args.size, rng)
    build_anomaly(out / "anomaly", 20, 8, args.size, rng)
    print(f"wrote {out}/segment ({args.images} images) and {out}/anomaly (20 normal, 8 good + 16 defect tests)")


if __name__ == "__main__":
    main()
