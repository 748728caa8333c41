"""Image data: ImageFolder layout or a `path,label` CSV, transforms from the backbone's preprocessing."""

from __future__ import annotations

import csv
import zlib
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from ..models.backbone import ImagePreprocess
from .splits import DataError, Example

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


def read_image_items(path: str | Path) -> tuple[list[Example], list[str]]:
    """Read labelled images from a folder (`DATA/<class>/<image>`) or a CSV with `path,label` columns
    (paths relative to the CSV). Returns (examples, skipped) where `skipped` lists unreadable files
    with the reason: a corrupt image is skipped and reported, never fatal.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"data not found: {path}")
    items = _read_csv(path) if path.is_file() else _read_folder(path)
    good, skipped = [], []
    for ex in items:
        reason = _check_image(Path(ex.x))
        if reason:
            skipped.append(f"{ex.x}: {reason}")
        else:
            good.append(ex)
    if not good:
        raise DataError(f"no readable images in {path}" + (f" ({len(skipped)} unreadable)" if skipped else ""))
    return good, skipped


def _read_folder(root: Path) -> list[Example]:
    classes = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"{root} has no class folders: expected the layout {root}/<class>/<image>, "
                        "or pass a CSV with 'path,label' columns")
    items = []
    for d in classes:
        files = sorted(f for f in d.rglob("*") if f.suffix.lower() in IMAGE_EXTS and f.is_file())
        if not files:
            raise DataError(f"class folder {d} holds no images ({', '.join(sorted(IMAGE_EXTS))}); "
                            "add images or remove the folder")
        items += [Example(str(f), d.name, str(f.relative_to(root))) for f in files]
    return items


def _read_csv(path: Path) -> list[Example]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        cols = reader.fieldnames or []
        for need in ("path", "label"):
            if need not in cols:
                raise DataError(f"{path}: no '{need}' column (columns: {', '.join(cols) or 'none'}); "
                                "an image CSV needs a header 'path,label'")
        items = []
        for line, row in enumerate(reader, start=2):
            if not row["path"] or not row["label"]:
                raise DataError(f"{path}:{line}: empty path or label")
            p = Path(row["path"])
            p = p if p.is_absolute() else path.parent / p
            items.append(Example(str(p), row["label"].strip(), f"{row['path']}"))
    if not items:
        raise DataError(f"{path} has a header but no rows")
    return items


def _check_image(p: Path) -> str | None:
    if not p.is_file():
        return "file not found"
    try:
        with Image.open(p) as im:
            im.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        return f"unreadable image ({type(e).__name__})"
    return None


def open_rgb(path: str) -> Image.Image:
    """Open an image as RGB; transparency is composited onto white (clip art, logos)."""
    with Image.open(path) as im:
        im.load()
        if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
            im = im.convert("RGBA")
            bg = Image.new("RGB", im.size, (255, 255, 255))
            bg.paste(im, mask=im.split()[-1])
            return bg
        return im.convert("RGB")


def build_transforms(pre: ImagePreprocess, image_size: int | None = None, augment: bool = True):
    """(train, eval) transforms from the backbone's own preprocessing: size, mean/std, interpolation.

    Training augmentation is deliberately light (random resized crop over most of the image,
    horizontal flip, mild colour jitter): few-shot fine-tuning has little data to correct for
    aggressive distortions that move images away from what the source model saw.
    """
    from torchvision import transforms as T

    size = image_size or pre.size
    interp = {"bicubic": T.InterpolationMode.BICUBIC, "bilinear": T.InterpolationMode.BILINEAR,
              "nearest": T.InterpolationMode.NEAREST}.get(pre.interpolation, T.InterpolationMode.BICUBIC)
    norm = [T.ToTensor(), T.Normalize(pre.mean, pre.std)]
    resize = int(round(size / pre.crop_pct))
    eval_tf = T.Compose([T.Resize(resize, interpolation=interp), T.CenterCrop(size), *norm])
    if not augment:
        return eval_tf, eval_tf
    train_tf = T.Compose([T.RandomResizedCrop(size, scale=(0.6, 1.0), interpolation=interp),
                          T.RandomHorizontalFlip(), T.ColorJitter(0.2, 0.2, 0.2), *norm])
    return train_tf, eval_tf


class ImageDataset(Dataset):
    """Images with labels; optionally keeps decoded images in memory (few-shot sets are small and
    decoding dominates CPU time otherwise).

    Indexed by `(index, epoch)` during training: the augmentation of an item is a pure function of
    (seed, epoch, index), so data loader workers, restarts and exact resume all see the same pixels.
    """

    def __init__(self, items: list[Example], class_to_idx: dict[str, int], transform,
                 seed: int = 0, cache: bool = True):
        self.items = items
        self.class_to_idx = class_to_idx
        self.transform = transform
        self.seed = seed
        self._cache: dict[int, Image.Image] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.items)

    def _image(self, i: int) -> Image.Image:
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        im = open_rgb(self.items[i].x)
        if self._cache is not None:
            self._cache[i] = im
        return im

    def __getitem__(self, key):
        i, epoch = key if isinstance(key, tuple) else (key, 0)
        ex = self.items[i]
        label = self.class_to_idx.get(ex.label, -1)
        seed = zlib.crc32(f"{self.seed}/{epoch}/{i}".encode())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            x = self.transform(self._image(i))
        return x, label
