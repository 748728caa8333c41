"""Build small offline texture-defect sets (the MVTec AD layout) from real textures in a Debian package.

    apt-get install openarena-081-textures
    python scripts/build_defect_data.py OUT [--train 40 --test-good 12 --test-defect 12 --size 128 --seed 0]

Textures are photographic game textures of OpenArena 0.8.1 (wood, sand, marble, concrete, mud: JPEGs
inside /usr/share/games/openarena/baseoa/pak4-textures.pk3, read in place). Each texture is one class,
written in the MVTec AD layout:

    OUT/<texture>/train/good/*.png                   normal crops (random position, scale and flips)
    OUT/<texture>/test/good/*.png                    more normal crops
    OUT/<texture>/test/foreign/*.png                 a blob of a *foreign* texture (from a pool no class
                                                     uses) pasted into a normal crop
    OUT/<texture>/test/scratch/*.png                 a thin polyline, darker or lighter than the crop
    OUT/<texture>/ground_truth/<defect>/<stem>_mask.png   exact masks (255 = defect): the same geometry
                                                     drawn on the mask as on the image, with no blur
    OUT/SOURCES.txt                                  which textures made it, and their licence

Normal test crops come from the same texture as training (that is what "normal" means here), but from a
different seeded stream of positions. Licence: openarena-081-textures is GPL-2+ (Debian copyright file:
/usr/share/doc/openarena-081-textures/copyright). Do not commit the images.
"""

from __future__ import annotations

import argparse
import io
import random
import sys
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

PK3 = Path("/usr/share/games/openarena/baseoa/pak4-textures.pk3")
LICENCE = "/usr/share/doc/openarena-081-textures/copyright"
# class name -> texture inside the pk3 (all 512 x 512 photographs that tile)
TEXTURES = {
    "wood": "textures/acc_dm5/wood01.jpg",
    "sand": "textures/acc_dm5/sand.jpg",
    "marble": "textures/proto2/marble02.jpg",
    "concrete": "textures/base_wall/concrete.jpg",
    "mud": "textures/acc_dm5/mud02.jpg",
}
# foreign patches: textures no class uses
FOREIGN = ("textures/base_wall/rusted.jpg", "textures/acc_dm3/grass.jpg", "textures/cosmo_block/rock01.jpg",
           "textures/gothic_trim/pitted_rust2.jpg", "textures/acc_dm5/stntiles_moss2.jpg",
           "textures/base_floor/diamond2c.jpg")
DEFECTS = ("foreign", "scratch")


def read_texture(pk3: zipfile.ZipFile, name: str) -> Image.Image:
    with Image.open(io.BytesIO(pk3.read(name))) as im:
        return im.convert("RGB")


def crop(tex: Image.Image, size: int, rng: random.Random) -> Image.Image:
    """A random square of 30-60% of the texture's side (wrapping around: the textures tile), resized to
    `size`, randomly mirrored."""
    w, h = tex.size
    tiled = Image.new("RGB", (2 * w, 2 * h))
    for dx in (0, w):
        for dy in (0, h):
            tiled.paste(tex, (dx, dy))
    side = int(min(w, h) * rng.uniform(0.3, 0.6))
    x, y = rng.randrange(w), rng.randrange(h)
    out = tiled.crop((x, y, x + side, y + side)).resize((size, size), Image.BILINEAR)
    if rng.random() < 0.5:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
    if rng.random() < 0.5:
        out = out.transpose(Image.FLIP_TOP_BOTTOM)
    return out


def _blob(size: int, rng: random.Random) -> list[tuple[float, float]]:
    """An irregular closed polygon (a star-shaped blob) of radius size/12..size/6 inside the image."""
    r = rng.uniform(size / 12, size / 6)
    cx, cy = rng.uniform(r, size - r), rng.uniform(r, size - r)
    n = rng.randint(7, 12)
    angles = sorted(rng.uniform(0, 2 * np.pi) for _ in range(n))
    return [(cx + r * rng.uniform(0.5, 1.0) * np.cos(a), cy + r * rng.uniform(0.5, 1.0) * np.sin(a)) for a in angles]


def add_foreign(img: Image.Image, foreign: Image.Image, rng: random.Random) -> tuple[Image.Image, np.ndarray]:
    size = img.width
    mask = Image.new("L", img.size, 0)
    ImageDraw.Draw(mask).polygon(_blob(size, rng), fill=255)
    out = img.copy()
    out.paste(crop(foreign, size, rng), (0, 0), mask)      # hard mask: the pasted pixels are exactly the mask
    return out, np.asarray(mask)


def add_scratch(img: Image.Image, rng: random.Random) -> tuple[Image.Image, np.ndarray]:
    size = img.width
    a = np.asarray(img).astype(np.float32)
    shift = rng.choice((-1, 1)) * rng.uniform(60, 110)     # darker or lighter than the crop's mean
    colour = tuple(int(v) for v in np.clip(a.reshape(-1, 3).mean(0) + shift, 0, 255))
    x, y = rng.uniform(0.15, 0.85) * size, rng.uniform(0.15, 0.85) * size
    points = [(x, y)]
    for _ in range(rng.randint(1, 3)):
        step, angle = rng.uniform(0.15, 0.3) * size, rng.uniform(0, 2 * np.pi)
        x = min(size - 1, max(0, x + step * np.cos(angle)))
        y = min(size - 1, max(0, y + step * np.sin(angle)))
        points.append((x, y))
    width = max(2, size // 48)
    out, mask = img.copy(), Image.new("L", img.size, 0)
    ImageDraw.Draw(out).line(points, fill=colour, width=width)
    ImageDraw.Draw(mask).line(points, fill=255, width=width)   # same geometry, same rasteriser: exact
    return out, np.asarray(mask)


def write_class(out: Path, tex: Image.Image, foreign: list[Image.Image], a, rng: random.Random) -> int:
    for d in ["train/good", "test/good"] + [f"test/{k}" for k in DEFECTS] + [f"ground_truth/{k}" for k in DEFECTS]:
        (out / d).mkdir(parents=True, exist_ok=True)
    for i in range(a.train):
        crop(tex, a.size, rng).save(out / "train/good" / f"{i:03d}.png")
    for i in range(a.test_good):
        crop(tex, a.size, rng).save(out / "test/good" / f"{i:03d}.png")
    n_pixels = 0
    for defect in DEFECTS:
        for i in range(a.test_defect):
            base = crop(tex, a.size, rng)
            img, mask = (add_foreign(base, rng.choice(foreign), rng) if defect == "foreign"
                         else add_scratch(base, rng))
            img.save(out / "test" / defect / f"{i:03d}.png")
            Image.fromarray(mask, "L").save(out / "ground_truth" / defect / f"{i:03d}_mask.png")
            n_pixels += int((mask > 0).sum())
    return n_pixels


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", help="folder to create (must not exist or be empty)")
    ap.add_argument("--train", type=int, default=40, help="normal training images per texture (default: 40)")
    ap.add_argument("--test-good", type=int, default=12, help="normal test images per texture (default: 12)")
    ap.add_argument("--test-defect", type=int, default=12, help="test images per defect kind (default: 12)")
    ap.add_argument("--size", type=int, default=128, help="image side in pixels (default: 128)")
    ap.add_argument("--textures", default=",".join(TEXTURES), help=f"comma-separated, of {', '.join(TEXTURES)}")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    names = [t for t in a.textures.split(",") if t]
    unknown = [t for t in names if t not in TEXTURES]
    if unknown:
        print(f"build_defect_data: error: --textures {unknown[0]} is not one of {', '.join(TEXTURES)}", file=sys.stderr)
        return 2
    if not PK3.is_file():
        print("build_defect_data: error: needs the Debian package openarena-081-textures "
              "(apt-get install openarena-081-textures)", file=sys.stderr)
        return 2
    out = Path(a.out)
    if out.exists() and any(out.iterdir()):
        print(f"build_defect_data: error: {out} is not empty; choose a new folder", file=sys.stderr)
        return 2
    with zipfile.ZipFile(PK3) as pk3:
        foreign = [read_texture(pk3, f) for f in FOREIGN]
        lines = [f"foreign patch {PK3}:{f}" for f in FOREIGN]
        for name in names:
            rng = random.Random(f"{a.seed}/{name}")     # a class's images do not depend on which others are built
            write_class(out / name, read_texture(pk3, TEXTURES[name]), foreign, a, rng)
            lines.append(f"class {name} {PK3}:{TEXTURES[name]}")
    (out / "SOURCES.txt").write_text(f"Licence: GPL-2+ ({LICENCE})\n" + "\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {out}: {len(names)} textures ({', '.join(names)}), each {a.train} normal training images, "
          f"{a.test_good} normal and {a.test_defect} x {len(DEFECTS)} defect test images at {a.size}px")
    return 0


if __name__ == "__main__":
    sys.exit(main())
