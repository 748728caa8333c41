"""Segmentation data: `DATA/images/*` + `DATA/masks/*` (same stem) + `DATA/classes.txt`.

A mask is an index PNG (one channel): 0 = background, k = class k of classes.txt (whose first line
is the background). Every problem is found before training starts and named with its file and fix.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data.pictures import IMAGE_EXTS
from ..data.splits import DataError

LAYOUT = "images/ + masks/ (same stems) + classes.txt"


@dataclass
class SegItem:
    image: Path
    mask: Path | None


def looks_like(path: Path) -> bool:
    return (path / "images").is_dir() and (path / "masks").is_dir()


def _files(folder: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not p.is_file() or p.suffix.lower() not in IMAGE_EXTS:
            continue
        if p.stem in out:
            raise DataError(f"{p} and {out[p.stem]} have the same stem; keep one file per stem in {folder}")
        out[p.stem] = p
    return out


def read_classes(root: Path) -> list[str]:
    p = root / "classes.txt"
    if not p.is_file():
        raise DataError(f"{p} is missing: write one class name per line, the first being the background "
                        "(e.g. 'background' then 'defect')")
    names = [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not names:
        raise DataError(f"{p} is empty: write one class name per line, the first being the background")
    if len(names) < 2:
        raise DataError(f"{p} names only the background ({names[0]}); add a line per object class")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DataError(f"{p} names {dupes[0]!r} twice; class names must be unique")
    return names


def scan(data: str | Path, *, need_masks: bool = True) -> list[SegItem]:
    """Pair images and masks by stem; an image without a mask (or a mask without an image) is an error."""
    root = Path(data).expanduser()
    if not root.is_dir():
        raise DataError(f"segmentation data not found: {root} (expected a folder with {LAYOUT})")
    for sub in ("images", "masks") if need_masks else ("images",):
        if not (root / sub).is_dir():
            raise DataError(f"{root / sub} is missing: segmentation data is {LAYOUT}")
    images = _files(root / "images")
    if not images:
        raise DataError(f"{root / 'images'} holds no images ({', '.join(sorted(IMAGE_EXTS))})")
    if not need_masks:
        return [SegItem(p, None) for p in images.values()]
    masks = _files(root / "masks")
    lone = [images[s] for s in images if s not in masks]
    if lone:
        raise DataError(f"{lone[0]} has no mask: add {root / 'masks' / (lone[0].stem + '.png')}, or remove the "
                        "image" + (f" ({len(lone) - 1} more images lack masks)" if len(lone) > 1 else ""))
    orphans = [masks[s] for s in masks if s not in images]
    if orphans:
        raise DataError(f"{orphans[0]} is a mask with no image of the same stem in {root / 'images'}; add the "
                        "image or remove the mask" + (f" ({len(orphans) - 1} more)" if len(orphans) > 1 else ""))
    return [SegItem(images[s], masks[s]) for s in images]


def read_mask(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        if im.mode not in ("L", "P", "I", "I;16", "1"):
            raise DataError(f"{path} is a {im.mode} image; a mask is an index PNG with one channel "
                            "(0 = background, k = class k of classes.txt)")
        return np.asarray(im).astype(np.int64)


def check_items(items: list[SegItem], classes: list[str], classes_file: Path) -> None:
    """Each mask has its image's size and only values of the class list."""
    for it in items:
        with Image.open(it.image) as im:
            size = im.size
        mask = read_mask(it.mask)
        if (mask.shape[1], mask.shape[0]) != size:
            raise DataError(f"{it.mask} is {mask.shape[1]}x{mask.shape[0]} but its image {it.image} is "
                            f"{size[0]}x{size[1]}; a mask must have its image's size")
        top = int(mask.max()) if mask.size else 0
        if top >= len(classes) or mask.min() < 0:
            raise DataError(f"{it.mask} holds value {top}, beyond the {len(classes)} classes of {classes_file} "
                            f"(values 0..{len(classes) - 1}); add the missing class names or fix the mask")


def load_dataset(data: str | Path) -> tuple[list[SegItem], list[str]]:
    root = Path(data).expanduser()
    items = scan(root)
    classes = read_classes(root)
    check_items(items, classes, root / "classes.txt")
    return items, classes


def split(items: list[SegItem], *, seed: int, test_items: list[SegItem] | None, val_items: list[SegItem] | None,
          test_fraction: float, val_fraction: float | None, shots: int | None):
    """(train, val, test), seeded. `shots` keeps N labelled training images and, unless --val or
    --val-fraction asks for one, holds out no validation share (N labels are all the labels: none is
    spent on choosing a checkpoint, the final weights are kept); without `shots` a share (default 0.2
    from 10 images up, else none) is held out to pick the best checkpoint."""
    pool = sorted(items, key=lambda it: str(it.image))
    random.Random(seed).shuffle(pool)
    test = test_items if test_items is not None else []
    if test_items is None and test_fraction > 0 and len(pool) > 2:
        n = max(1, round(len(pool) * test_fraction))
        test, pool = pool[:n], pool[n:]
    val = val_items if val_items is not None else []
    if val_items is None:
        frac = val_fraction if val_fraction is not None else (0.2 if len(pool) >= 10 and shots is None else 0.0)
        n = round(len(pool) * frac) if frac > 0 and len(pool) > 2 else 0
        val, pool = pool[:n], pool[n:]
    if shots is not None:
        if shots > len(pool):
            raise DataError(f"--shots {shots}: only {len(pool)} labelled training images are left after the "
                            "test/validation splits; lower --shots")
        pool = pool[:shots]
    if not pool:
        raise DataError("no training images left after the test/validation splits; add images or lower "
                        "--test-fraction / --val-fraction")
    return pool, val, test


def load_pair(item: SegItem, size: int, mean, std, flip: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(image [3,S,S] normalised, mask [S,S] long) resized to S x S (the mask by nearest neighbour)."""
    x = load_image(item.image, size, mean, std)
    with Image.open(item.mask) as m:
        m = m.resize((size, size), Image.NEAREST)
        y = torch.from_numpy(np.asarray(m).astype(np.int64))
    if flip:
        x, y = x.flip(-1), y.flip(-1)
    return x, y


def load_image(path, size: int, mean, std) -> torch.Tensor:
    """[3, S, S] normalised, from a path or an RGB PIL image already decoded (the server's uploads)."""
    from ..data.images import open_rgb
    im = (path if isinstance(path, Image.Image) else open_rgb(str(path))).resize((size, size), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
