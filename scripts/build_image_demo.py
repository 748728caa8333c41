#!/usr/bin/env python3
"""Build the small clip-art image classification demo set.

Source: Debian's ``openclipart-png`` package (public-domain clip art sorted into
topic folders).  Output: an ImageFolder tree ``<out>/<class>/<name>.png`` of
square RGB images, plus ``OUT_SOURCES.csv`` and ``OUT_README.md`` beside OUT.

Rebuild:  python scripts/build_image_demo.py
"""
from __future__ import annotations

import argparse
import csv
import random
import re
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

DEFAULT_SRC = Path("/usr/share/openclipart/png")
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "transferkit" / "demo_data" / "clipart"

# class name -> (folders to include, sub-folders to leave out), relative to --src.
# Chosen by looking at the package: topics that are visually distinct, have enough
# pictures, and are not mostly text, logos or abstract pictograms.
CLASSES: dict[str, tuple[list[str], list[str]]] = {
    "animals": (["animals"], []),
    "buildings": (["buildings"], ["buildings/furniture"]),
    "flags": (["signs_and_symbols/flags"], []),
    "food": (["food"], []),
    "music": (["recreation/music"], []),
    # hats/shirts and lone eyes/ears are not "people" in any useful visual sense
    "people": (["people"], ["people/clothing", "people/bodypart"]),
    "plants": (["plants"], []),
    "sports": (["recreation/sports"], []),
    "tools": (["tools"], ["tools/weapons", "tools/toys"]),
    # vehicles/hummers/ repeats the hummer_0N drawings in other styles
    "vehicles": (["transportation"], ["transportation/roadsigns", "transportation/aiga-symbols",
                                      "transportation/vehicles/hummers"]),
}

# In transportation/ the vehicles are mixed with road signs, sailing diagrams and
# knots (e.g. "airplane.png" is a warning sign), so that class keeps only files
# whose names say they are a vehicle.
KEEP_NAME = {
    "vehicles": re.compile(
        r"^(1989_chev|_chev|4wd|aircraft|airplane_|ambulans|autos|beach_trip|bicicletta|"
        r"bicycle|big_truck|bike|blazer|bmw|boat_|bus\d|bus_01|car[._]|car_ride|departing_plane|"
        r"dodge|fire_engine|formula_one|hummer|m1_abrams|military_airplane|motorcycle|"
        r"old_car|old_truck|pallone|plane_|redcar|road_runner|rocket|sailboat_illustration\.|"
        r"sailing_kids|sailing_sunset|skoda|sledge|small_truck|sportcar|the_mad_little_ship|"
        r"toy_paper_plane|toyota|tramway|trattore|trawler|truck|vtt|wing_)"),
}

# Files to drop, matched against the path relative to --src.
SKIP_PATH = {
    # the flags folder also holds semaphore stick figures, traffic-light men and
    # plain outline maps of regions (mostly Spanish ones named <region>_01.png)
    "flags": re.compile(
        r"semaphore/|ampel|map|outline|spanish_regions|spain_peninsule|rios_de_espana|"
        r"europe/(spain/)?(andalusia|aragon|asturias|balearian_islands|canarian_islands|"
        r"cantabria|castilla_y_leon|catalunya|euskadi|extremadura|galicia|madrid|murcia|"
        r"navarra|valencia)_01\.png"),
}
# These SVGs referenced a missing bitmap, so the PNG (in people/ and sports/) is a
# "Linked Image Not Found" box.
PLACEHOLDER = re.compile(r"stylized_yoga_person_ger_")

MAX_PIXELS = 30_000_000  # a few files are 10k-30k px wide; decoding them costs GBs of RAM
MIN_CONTENT = 64         # content smaller than this would just be an upscaled blur
MIN_INK = 0.01           # fraction of non-white pixels below which an image is "empty"
# We check the pixel count ourselves (MAX_PIXELS) before decoding, so Pillow's
# decompression-bomb guard would only add noise/errors for the skipped giants.
Image.MAX_IMAGE_PIXELS = None
warnings.simplefilter("ignore", Image.DecompressionBombWarning)
README = """\
# Clip-art demo images

{n} images in {k} classes, {size}x{size} RGB PNG, ImageFolder layout (`<class>/<name>.png`).

Source: the Debian package `openclipart-png` (Open Clip Art Library 0.18), whose
images are dedicated to the **public domain** (see
`/usr/share/doc/openclipart-png/copyright`). Each class is built from one or more
topic folders of that package, minus a few hand-picked exclusions (see `CLASSES`,
`KEEP_NAME` and `SKIP_PATH` in `scripts/build_image_demo.py`); `clipart_SOURCES.csv` maps
every file back to its original path.

Each picture was composited onto white, cropped to its content, fitted into a
square with white padding (LANCZOS), and near-duplicates, tiny or near-empty
pictures were skipped.

Rebuild (needs `apt-get install openclipart-png`):

    python scripts/build_image_demo.py --per-class {per_class} --size {size} --seed {seed}
"""


def to_white_rgb(im: Image.Image) -> Image.Image:
    """Composite any transparency onto white and return RGB."""
    im = im.convert("RGBA")  # handles P/LA/L with or without tRNS
    bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
    return Image.alpha_composite(bg, im).convert("RGB")


def prepare(path: Path, size: int) -> Image.Image | None:
    """Load one clip-art PNG and return a size x size RGB image, or None to skip it."""
    try:
        with Image.open(path) as im:
            if im.width * im.height > MAX_PIXELS:
                return None
            rgb = to_white_rgb(im)
    except Exception:  # unreadable/truncated file: skip rather than abort the build
        return None
    ink = np.asarray(rgb).min(axis=2) < 245
    if ink.mean() < MIN_INK:
        return None
    # crop to the drawn content: many files have a large empty canvas
    ys, xs = np.nonzero(ink)
    box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    w, h = box[2] - box[0], box[3] - box[1]
    if max(w, h) < MIN_CONTENT:
        return None
    rgb = rgb.crop(box)
    inner = size - 2 * max(1, size // 28)  # small white margin around the content
    scale = inner / max(w, h)
    rgb = rgb.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.LANCZOS)
    out = Image.new("RGB", (size, size), (255, 255, 255))
    out.paste(rgb, ((size - rgb.width) // 2, (size - rgb.height) // 2))
    return out


def dhash(im: Image.Image) -> int:
    """64-bit difference hash, used to drop duplicates (e.g. colour vs _bw copies)."""
    g = np.asarray(im.convert("L").resize((9, 8), Image.BILINEAR), dtype=np.int16)
    bits = (g[:, 1:] > g[:, :-1]).flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


def candidates(src: Path, cls: str) -> list[Path]:
    include, exclude = CLASSES[cls]
    keep_name, skip_path = KEEP_NAME.get(cls), SKIP_PATH.get(cls)
    files = set()
    for d in include:
        files.update((src / d).rglob("*.png"))
    skip = [src / d for d in exclude]
    keep = [f for f in files if not any(s in f.parents for s in skip)
            and not PLACEHOLDER.search(f.name)
            and not (skip_path and skip_path.search(f.relative_to(src).as_posix()))
            and (keep_name is None or keep_name.search(f.name))]
    return sorted(keep)  # sorted first so the seeded shuffle is reproducible


def safe_name(stem: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", stem.lower()).strip("_") or "img"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--src", type=Path, default=DEFAULT_SRC, help="openclipart png folder")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--per-class", type=int, default=64)
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    if not args.src.is_dir():
        sys.exit(f"error: {args.src} not found. Install the clip art with:\n"
                 "    sudo apt-get install openclipart-png\nor pass --src FOLDER.")

    args.out.mkdir(parents=True, exist_ok=True)
    rows, seen, counts = [], [], {}
    for cls in CLASSES:
        files = candidates(args.src, cls)
        random.Random(f"{args.seed}:{cls}").shuffle(files)
        cls_dir = args.out / cls
        if cls_dir.exists():  # start clean so reruns give exactly the same tree
            shutil.rmtree(cls_dir)
        cls_dir.mkdir()
        used: set[str] = set()
        for f in files:
            if len(used) >= args.per_class:
                break
            im = prepare(f, args.size)
            if im is None:
                continue
            h = dhash(im)
            if any(bin(h ^ s).count("1") <= 4 for s in seen):
                continue  # near-duplicate of an image already taken (any class)
            seen.append(h)
            name, i = safe_name(f.stem), 2
            while name in used:
                name, i = f"{safe_name(f.stem)}_{i}", i + 1
            used.add(name)
            im.save(cls_dir / f"{name}.png", optimize=True)
            rows.append((f"{cls}/{name}.png", str(f.relative_to(args.src)), cls))
        counts[cls] = (len(files), len(used))

    rows.sort()
    # provenance beside the data folder, not in it: a file among the class folders is no class and
    # would be listed as skipped in every run of the demo
    with open(args.out.with_name(args.out.name + "_SOURCES.csv"), "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "original", "class"])
        w.writerows((p, f"{args.src}/{o}", c) for p, o, c in rows)
    args.out.with_name(args.out.name + "_README.md").write_text(README.format(
        n=len(rows), k=len(CLASSES), size=args.size, per_class=args.per_class, seed=args.seed))

    print(f"{'class':<10} {'candidates':>10} {'kept':>5}")
    for cls, (n_cand, n_kept) in counts.items():
        print(f"{cls:<10} {n_cand:>10} {n_kept:>5}")
    print(f"{'total':<10} {sum(c for c, _ in counts.values()):>10} {len(rows):>5}  -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
