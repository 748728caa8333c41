#!/usr/bin/env python3
"""Build the digits domain-adaptation benchmark: printed digits (source) -> handwritten digits (target).

Source: the digits 0-9 rendered from every font installed under /usr/share/fonts that has them
(fonts that render the same ten glyphs as an earlier font are dropped), each a few times with a
small random affine jitter. Target: scikit-learn's bundled handwritten digits (`load_digits`, 1797
images from the UCI optdigits set).

Both domains go through the optdigits preprocessing, so the shift left is printed vs handwritten:
a 32x32 binary bitmap with the digit filling the height and centred, counted in 4x4 blocks into an
8x8 image of 0..16 (here scaled to 0..255), then a black border of 1 pixel (10x10 PNG) so that the
backbones' centre crop keeps every digit pixel.

The fonts come from Debian packages. On a clean Debian/Ubuntu machine:

    apt-get update && apt-get install -y --no-install-recommends \\
        fonts-dejavu-core fonts-liberation fonts-freefont-ttf fonts-urw-base35 fonts-noto-core \\
        fonts-croscore fonts-crosextra-carlito fonts-crosextra-caladea fonts-roboto-unhinted \\
        fonts-open-sans fonts-lato fonts-cantarell fonts-comic-neue fonts-inconsolata \\
        fonts-linuxlibertine fonts-texgyre fonts-hack fonts-firacode fonts-adf-accanthis \\
        fonts-humor-sans fonts-dancingscript fonts-breip fonts-sil-gentium fonts-stix \\
        fonts-quicksand fonts-jura
    python scripts/build_digits_da.py --out runs/digits_da

Output: OUT/source/<digit>/*.png (labelled), OUT/target/<digit>/*.png (the labels are the folder
names: `adapt --target` reads the images only, `--target-test` reads the labels), OUT/fonts.csv
(every font used and the package path it came from) and OUT/README.md.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

FONT_DIRS = (Path("/usr/share/fonts"),)
FONT_EXTS = (".ttf", ".otf", ".ttc")
DIGITS = "0123456789"
MIN_FONTS = 20  # fewer than this is not a source domain worth measuring
MIN_INK = 40    # ink pixels of 32x32 below which a digit is a hairline that binarises to nothing


def font_files(dirs=FONT_DIRS) -> list[Path]:
    return sorted(f for d in dirs if d.is_dir() for f in d.rglob("*") if f.suffix.lower() in FONT_EXTS)


def _glyph(font: ImageFont.FreeTypeFont, ch: str) -> Image.Image | None:
    """The ink of one character, cropped to its bounding box (white on black)."""
    canvas = Image.new("L", (160, 160), 0)
    ImageDraw.Draw(canvas).text((40, 20), ch, fill=255, font=font)
    box = canvas.getbbox()
    return canvas.crop(box) if box else None


def _jitter(rng: np.random.Generator) -> dict:
    return {"angle": rng.uniform(-8, 8), "shear": rng.uniform(-0.15, 0.15), "scale": rng.uniform(0.88, 1.0),
            "dx": rng.uniform(-1.5, 1.5), "dy": rng.uniform(-1.0, 1.0), "bold": rng.random() < 0.3}


def optdigits_8x8(glyph: Image.Image, jitter: dict | None = None) -> np.ndarray:
    """optdigits' preprocessing: fit the glyph to the 32 px height (width at most 28), centre it in
    32x32, binarise, count ink in 4x4 blocks -> 8x8 of 0..16. `jitter` applies a small affine
    transform (rotation, shear, scale, shift) and sometimes a thicker stroke before binarising."""
    w, h = glyph.size
    s = min(32 / h, 28 / w)
    g = glyph.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BOX)
    big = Image.new("L", (32, 32), 0)
    big.paste(g, ((32 - g.size[0]) // 2, (32 - g.size[1]) // 2))
    if jitter:
        a = np.deg2rad(jitter["angle"])
        k = jitter["scale"]
        m = np.array([[np.cos(a), -np.sin(a) + jitter["shear"]], [np.sin(a), np.cos(a)]]) * k
        inv = np.linalg.inv(m)  # PIL wants output -> input
        c = np.array([15.5, 15.5])
        off = c - inv @ (c + np.array([jitter["dx"], jitter["dy"]]))
        big = big.transform((32, 32), Image.AFFINE, (*inv[0], off[0], *inv[1], off[1]), Image.BILINEAR)
        if jitter["bold"]:
            big = big.filter(ImageFilter.MaxFilter(3))
    # a low threshold keeps hairline fonts visible (the pen of optdigits' writers is thick)
    ink = (np.asarray(big) >= 64).astype(np.int64)
    return ink.reshape(8, 4, 8, 4).sum(axis=(1, 3))


def to_png(counts: np.ndarray, path: Path) -> None:
    """0..16 counts -> 0..255 grey, with a 1 px black border (10x10)."""
    px = np.zeros((10, 10), dtype=np.uint8)
    px[1:9, 1:9] = np.round(counts * (255 / 16)).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(px, "L").save(path)


def usable_fonts(files: list[Path], size: int = 96) -> list[tuple[Path, list[Image.Image]]]:
    """Fonts whose ten digits render as ten different glyphs (a font without digits renders one
    'missing glyph' box ten times), minus fonts whose digits look like an earlier font's."""
    out, seen = [], set()
    for f in files:
        try:
            font = ImageFont.truetype(str(f), size)
            glyphs = [_glyph(font, ch) for ch in DIGITS]
        except (OSError, ValueError):
            continue
        if any(g is None for g in glyphs):
            continue
        plain = [optdigits_8x8(g) for g in glyphs]
        if len({p.tobytes() for p in plain}) < 10 or min(p.sum() for p in plain) < MIN_INK:
            continue
        key = hashlib.sha1(b"".join(p.tobytes() for p in plain)).hexdigest()
        if key in seen:
            continue
        seen.add(key)
        out.append((f, glyphs))
    return out


def build(out: Path, copies: int = 3, seed: int = 0, font_dirs=FONT_DIRS, log=print) -> dict:
    """Write OUT/source, OUT/target, OUT/fonts.csv, OUT/README.md; returns the counts."""
    fonts = usable_fonts(font_files(font_dirs))
    if len(fonts) < MIN_FONTS:
        raise SystemExit(f"found {len(fonts)} fonts with distinct digits under "
                         f"{', '.join(map(str, font_dirs))}; install the font packages listed in "
                         f"{__file__} (apt-get install ...) and run again")
    rng = np.random.default_rng(seed)
    n_source = 0
    for i, (f, glyphs) in enumerate(fonts):
        for d, g in zip(DIGITS, glyphs):
            to_png(optdigits_8x8(g), out / "source" / d / f"f{i:03d}_c0.png")
            for c in range(1, copies):
                to_png(optdigits_8x8(g, _jitter(rng)), out / "source" / d / f"f{i:03d}_c{c}.png")
            n_source += copies
    from sklearn.datasets import load_digits
    digits = load_digits()
    for j, (img, y) in enumerate(zip(digits.images, digits.target)):
        to_png(img, out / "target" / str(y) / f"hw{j:04d}.png")
    with open(out / "fonts.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["index", "font_file"])
        w.writerows([[i, str(f)] for i, (f, _) in enumerate(fonts)])
    (out / "README.md").write_text(
        f"# Digits domain adaptation set\n\nBuilt by `python scripts/build_digits_da.py --out {out} "
        f"--copies {copies} --seed {seed}`.\n\n- source/: {n_source} printed digits from {len(fonts)} "
        f"fonts ({copies} renders each: one plain, {copies - 1} jittered); fonts.csv lists them\n"
        f"- target/: {len(digits.target)} handwritten digits (scikit-learn load_digits, UCI optdigits)\n",
        encoding="utf-8")
    log(f"{len(fonts)} fonts -> {n_source} source images; {len(digits.target)} target images -> {out}")
    return {"fonts": len(fonts), "source": n_source, "target": int(len(digits.target))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/digits_da")
    ap.add_argument("--copies", type=int, default=3, help="renders per font and digit (1 plain + jittered)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        print(f"{out} is not empty; choose another --out or remove it", file=sys.stderr)
        return 2
    build(out, copies=args.copies, seed=args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
