"""Build a small offline detection + segmentation set from two Debian packages.

    apt-get install tuxpaint-stamps-default mate-backgrounds
    python scripts/build_dense_data.py OUT [--train 200 --test 100 --size 256 --seed 0]

Objects are Tux Paint's stamps (photographs and drawings cut out with an alpha channel, in
/usr/share/tuxpaint/stamps/<category>/...), pasted 1-3 to an image, without overlap, at random
scale, position and mirroring, on random crops of the MATE desktop photographs
(/usr/share/backgrounds/mate/). The class is the stamp's top-level category. Train and test share
no stamp and no background: test measures transfer to unseen objects on unseen scenes.

Writes (images written twice, once per layout, so that each folder is one task's layout):
    OUT/detect/{train,test}/images/*.jpg + annotations.json   COCO; boxes are the exact extent of
                                                               each pasted object's alpha > 127
    OUT/segment/{train,test}/images/*.jpg + masks/*.png + classes.txt   index masks, 0 = background
    OUT/SOURCES.txt                                            which files made it, and their licences

Licences: tuxpaint-stamps-default is GPL-2+ (Debian copyright file: GPL-2 / GPL-2+ per part);
mate-backgrounds is GPL-2+ with some images under other free licences: see
/usr/share/doc/{tuxpaint-stamps-default,mate-backgrounds}/copyright. Do not commit the images.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np
from PIL import Image

STAMPS = Path("/usr/share/tuxpaint/stamps")
BACKGROUNDS = Path("/usr/share/backgrounds/mate")
CLASSES = ("animals", "food", "plants", "vehicles", "household")
LICENCES = ("/usr/share/doc/tuxpaint-stamps-default/copyright", "/usr/share/doc/mate-backgrounds/copyright")


def stamp_files(cls: str) -> list[Path]:
    # a stamp's variants (frog.png, frog-1.png) stay on the same side of the split: keyed by folder+base
    return sorted(p for p in (STAMPS / cls).rglob("*.png") if not p.name.endswith("_thumb.png"))


def split_half(files: list[Path], rng: random.Random, test_share: float) -> tuple[list[Path], list[Path]]:
    groups: dict[str, list[Path]] = {}
    for p in files:
        groups.setdefault(f"{p.parent}/{p.stem.split('-')[0]}", []).append(p)
    keys = sorted(groups)
    rng.shuffle(keys)
    n_test = max(1, round(len(keys) * test_share))
    pick = lambda ks: [p for k in ks for p in groups[k]]  # noqa: E731
    return pick(keys[n_test:]), pick(keys[:n_test])


def load_stamp(path: Path) -> Image.Image | None:
    with Image.open(path) as im:
        im = im.convert("RGBA")
    a = np.asarray(im)[..., 3]
    ys, xs = np.nonzero(a > 127)
    if len(xs) < 64:            # (nearly) empty alpha: not a cut-out
        return None
    return im.crop((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))


def background(paths: list[Path], size: int, rng: random.Random) -> Image.Image:
    with Image.open(rng.choice(paths)) as im:
        im = im.convert("RGB")
        im.draft("RGB", (size * 2, size * 2))
    side = int(min(im.size) * rng.uniform(0.4, 1.0))
    x, y = rng.randint(0, im.width - side), rng.randint(0, im.height - side)
    return im.crop((x, y, x + side, y + side)).resize((size, size), Image.BILINEAR)


def compose(stamps, bgs, size: int, rng: random.Random):
    """One image: (RGB image, index mask, [(class index, [x1, y1, x2, y2])])."""
    canvas = background(bgs, size, rng)
    mask = np.zeros((size, size), np.uint8)
    objects = []
    for _ in range(rng.randint(1, 3)):
        for _attempt in range(20):
            cls, path = rng.choice(stamps)
            st = load_stamp(path)
            if st is None:
                continue
            longest = rng.uniform(0.18, 0.5) * size
            scale = longest / max(st.size)
            st = st.resize((max(4, round(st.width * scale)), max(4, round(st.height * scale))), Image.BILINEAR)
            if rng.random() < 0.5:
                st = st.transpose(Image.FLIP_LEFT_RIGHT)
            x, y = rng.randint(0, size - st.width), rng.randint(0, size - st.height)
            alpha = np.asarray(st)[..., 3] > 127
            if mask[y:y + st.height, x:x + st.width][alpha].any():
                continue        # would overlap an object already there: boxes and masks stay exact
            canvas.paste(st, (x, y), st)
            ys, xs = np.nonzero(alpha)
            mask[y:y + st.height, x:x + st.width][alpha] = cls + 1
            objects.append((cls, [float(x + xs.min()), float(y + ys.min()), float(x + xs.max() + 1),
                                  float(y + ys.max() + 1)]))
            break
    return canvas, mask, objects


def write_split(out: Path, name: str, n: int, stamps, bgs, size: int, rng: random.Random) -> int:
    det, seg = out / "detect" / name, out / "segment" / name
    for d in (det / "images", seg / "images", seg / "masks"):
        d.mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(n):
        im, mask, objects = compose(stamps, bgs, size, rng)
        fname = f"{name}_{i:04d}.jpg"
        im.save(det / "images" / fname, quality=92)
        im.save(seg / "images" / fname, quality=92)
        Image.fromarray(mask, "L").save(seg / "masks" / f"{name}_{i:04d}.png")
        images.append({"id": i + 1, "file_name": fname, "width": size, "height": size})
        for cls, (x1, y1, x2, y2) in objects:
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": cls + 1,
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    cats = [{"id": k + 1, "name": c} for k, c in enumerate(CLASSES)]
    (det / "annotations.json").write_text(json.dumps({"images": images, "annotations": anns,
                                                      "categories": cats}), encoding="utf-8")
    (seg / "classes.txt").write_text("background\n" + "\n".join(CLASSES) + "\n", encoding="utf-8")
    return len(anns)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--train", type=int, default=200)
    ap.add_argument("--test", type=int, default=100)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--test-share", type=float, default=0.3, help="share of stamps and backgrounds kept for test")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if not STAMPS.is_dir() or not BACKGROUNDS.is_dir():
        print("build_dense_data: error: needs the Debian packages tuxpaint-stamps-default and "
              "mate-backgrounds (apt-get install tuxpaint-stamps-default mate-backgrounds)", file=sys.stderr)
        return 2
    out = Path(a.out)
    if out.exists() and any(out.iterdir()):
        print(f"build_dense_data: error: {out} is not empty; choose a new folder", file=sys.stderr)
        return 2
    rng = random.Random(a.seed)
    train_st, test_st, lines = [], [], []
    for k, cls in enumerate(CLASSES):
        tr, te = split_half(stamp_files(cls), rng, a.test_share)
        train_st += [(k, p) for p in tr]
        test_st += [(k, p) for p in te]
    bgs = sorted(p for p in BACKGROUNDS.rglob("*") if p.suffix.lower() in (".jpg", ".png"))
    rng.shuffle(bgs)
    n_bg = max(1, round(len(bgs) * a.test_share))
    test_bg, train_bg = bgs[:n_bg], bgs[n_bg:]
    n_tr = write_split(out, "train", a.train, train_st, train_bg, a.size, rng)
    n_te = write_split(out, "test", a.test, test_st, test_bg, a.size, rng)
    for name, st, bg in (("train", train_st, train_bg), ("test", test_st, test_bg)):
        lines += [f"[{name}] stamp {CLASSES[k]} {p}" for k, p in st] + [f"[{name}] background {p}" for p in bg]
    (out / "SOURCES.txt").write_text("Licences: " + ", ".join(LICENCES) + "\n" + "\n".join(lines) + "\n",
                                     encoding="utf-8")
    print(f"wrote {out}: train {a.train} images / {n_tr} objects ({len(train_st)} stamps, {len(train_bg)} "
          f"backgrounds), test {a.test} images / {n_te} objects ({len(test_st)} stamps, {len(test_bg)} backgrounds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
