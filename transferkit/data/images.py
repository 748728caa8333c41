"""Image data: ImageFolder layout or a `path,label` CSV, transforms from the backbone's preprocessing."""

from __future__ import annotations

import csv
import os
import unicodedata
import warnings
import zlib
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from ..models.backbone import ImagePreprocess
from .kinds import INPUT_EXTS, check_input
from .pictures import IMAGE_EXTS
from .splits import DataError, Example, check_utf8_path, shown
from .tables import decode_table, is_missing_label

# decoded images kept in memory across epochs, at most this many bytes (LRU): a few-shot set fits
# whole, a 20,000-image set does not grow the process without bound
CACHE_BYTES = int(float(os.environ.get("TRANSFERKIT_IMAGE_CACHE_MB", "256")) * 2**20)

# The eval resize keeps the aspect ratio: it brings the short side to size / crop_pct, so a 1 x 100,000
# strip (475 bytes as a PNG) would become 256 x 25,600,000 pixels (GBs) for the centre crop to keep
# 224 x 224 of it. An image longer than MAX_ASPECT times its width is refused (no photo or scan is:
# a strip of pixels says nothing about a class), and the eval resize first centre-crops anything over
# RESIZE_ASPECT : 1, which the centre crop after it would cut away anyway, so no resize of any
# input makes more than RESIZE_ASPECT x (size / crop_pct)^2 pixels.
MAX_ASPECT = 100
RESIZE_ASPECT = 4


def read_image_items(path: str | Path, warnings_out: list[str] | None = None) -> tuple[list[Example], list[str]]:
    """Read labelled images from a folder (`DATA/<class>/<image>`) or a CSV with `path,label` columns
    (paths relative to the CSV); arrays (.npy, .tif) and signals (.wav) are read the same way. Returns
    (examples, skipped) where `skipped` lists every file not used, with the reason: a corrupt image is
    skipped and reported, never fatal. What is read but worth a look (one class in two Unicode
    spellings) is added to `warnings_out`.
    """
    path = Path(path)
    check_utf8_path(path)
    if not path.exists():
        raise DataError(f"data not found: {path}")
    items, skipped = _read_csv(path) if path.is_file() else _read_folder(path, warnings_out)
    good = []
    for ex in items:
        reason = check_image(Path(ex.x))
        if reason:
            skipped.append(f"{shown(ex.x)}: {reason}")
        else:
            good.append(ex)
    if not good:
        raise DataError(f"no readable images in {path}" + (f" ({len(skipped)} unreadable)" if skipped else ""))
    return good, skipped


# macOS leaves these beside copied or zipped files: resource forks, not pictures (`._*` and
# `.DS_Store` are hidden files already; `__MACOSX/` is a folder that is not)
_MACOS_JUNK = {"__MACOSX"}


def _read_folder(root: Path, warnings_out: list[str] | None = None) -> tuple[list[Example], list[str]]:
    """The folder rule: every non-hidden sub-folder of DATA is a class (a link to a folder outside
    DATA too); its images are the non-hidden image files anywhere below it, hidden folders (.git,
    .ipynb_checkpoints) and macOS resource folders (`__MACOSX`) excluded, links followed. Every file
    and folder is read once, as the user sees the tree: a link that re-enters DATA (to DATA itself,
    a folder above it, a class folder, or any file or folder inside DATA) or reaches a folder or
    file already read is skipped and listed. Files that are not images, and files beside the class
    folders, are listed, never data. Class names are Unicode NFC, so "café" typed on macOS (NFD)
    and on Linux (NFC) is one class; a folder named like a missing-value marker (None, NaN, null)
    is missing, as that label is in a table."""
    root_real = os.path.realpath(root)
    entries = sorted(root.iterdir())
    notes: list[str] = []
    classes = []
    for d in entries:
        if d.name.startswith(".") or d.name in _MACOS_JUNK or not d.is_dir():
            continue
        if not _is_utf8(d.name):
            raise DataError(f"class folder {shown(d)} has a name that is not valid UTF-8; rename it "
                            "(e.g. convmv -f latin1 -t utf-8)")
        reason = _reentry(d, root_real) if d.is_symlink() else None
        if reason:
            notes.append(f"{shown(d)}: {reason}; skipped")
        elif is_missing_label(d.name):
            notes.append(f"{shown(d)}: missing label ({d.name!r}): a folder named like a missing-value "
                         "marker is read as a table reads that label; skipped (rename the folder to keep "
                         "it as a class)")
        else:
            classes.append(d)
    if not classes:
        raise DataError(f"{shown(root)} has no class folders: expected the layout {shown(root)}/<class>/<image>, "
                        "or pass a CSV with 'path,label' columns")
    notes += [f"{shown(f)}: not in a class folder (files beside the class folders are ignored)"
              for f in entries if not f.name.startswith(".") and not f.is_dir()]
    # class folders themselves are "read" before any walk: a link inside one class to another class
    # folder re-enters the data instead of adding images
    seen, by_real = set(), {}
    for d in list(classes):
        real = os.path.realpath(d)
        if real in by_real:
            notes.append(f"{shown(d)}: a link to {shown(Path(real))}, the same folder as class "
                         f"'{shown(Path(by_real[real]))}'; skipped")
            classes.remove(d)
        else:
            by_real[real] = d.name
            seen.add(real)
    items, spellings = [], {}
    for d in classes:
        label = unicodedata.normalize("NFC", d.name)
        spellings.setdefault(label, []).append(d.name)
        files = _walk_images(d, root_real, seen, notes, by_real)
        if not files:
            raise DataError(f"class folder {shown(d)} holds no images ({', '.join(sorted(INPUT_EXTS))}); "
                            "add images or remove the folder")
        items += [Example(str(f), label, str(f.relative_to(root))) for f in files]
    if warnings_out is not None:
        warnings_out += [f"class folders {', '.join(repr(n) for n in names)} are one class '{label}': the "
                         "same name in two Unicode spellings (NFC and NFD)"
                         for label, names in spellings.items() if len(names) > 1]
    return items, notes


def _reentry(link: Path, root_real: str, classes: dict[str, str] | None = None) -> str | None:
    """Why following `link` would read part of DATA again, or None (it leads outside DATA).
    `classes`: real path -> name of the class folders."""
    target = os.path.realpath(link)
    where = os.path.realpath(link.parent)
    if target == root_real or root_real.startswith(target.rstrip(os.sep) + os.sep):
        return (f"a link to {shown(Path(target))}, DATA itself or a folder above it (its images would be "
                "read again under this class)")
    if target == where or where.startswith(target.rstrip(os.sep) + os.sep):
        return f"a link back to {shown(Path(target))}, a folder already read (loop)"
    if classes and target in classes:
        return f"a link to the class folder '{shown(Path(classes[target]))}' (its images are that class already)"
    if target.startswith(root_real + os.sep):
        return f"a link into DATA ({shown(Path(os.path.relpath(target, root_real)))}), read already where it is"
    return None


def _walk_images(here: Path, root_real: str, seen: set[str], notes: list[str],
                 classes: dict[str, str]) -> list[Path]:
    """The image files below `here`, sorted, each read once (see _read_folder)."""
    try:
        entries = sorted(os.scandir(here), key=lambda e: e.name)
    except OSError as e:
        notes.append(f"{shown(here)}: cannot be read ({e.strerror}); skipped")
        return []
    files = []
    for e in entries:
        p = Path(e.path)
        if e.name.startswith(".") or e.name in _MACOS_JUNK:
            continue
        if not _is_utf8(e.name):
            notes.append(f"{shown(p)}: the name is not valid UTF-8; skipped (rename it, e.g. "
                         "convmv -f latin1 -t utf-8)")
            continue
        if e.is_symlink():
            reason = _reentry(p, root_real, classes)
            if reason:
                notes.append(f"{shown(p)}: {reason}; skipped")
                continue
        try:
            is_dir = e.is_dir()
        except OSError:
            is_dir = False
        if is_dir:
            real = os.path.realpath(p)
            if real in seen:
                notes.append(f"{shown(p)}: a link back to {shown(Path(real))}, a folder already read (loop); skipped")
                continue
            seen.add(real)
            files += _walk_images(p, root_real, seen, notes, classes)
        elif p.suffix.lower() not in INPUT_EXTS:
            notes.append(f"{shown(p)}: not an image or input file ({p.suffix.lower() or 'no extension'}; "
                         f"read: {', '.join(sorted(INPUT_EXTS))}); skipped")
        else:
            real = os.path.realpath(p)
            if e.is_symlink() and real in seen:
                notes.append(f"{shown(p)}: a link to {shown(Path(real))}, a file already read; skipped")
                continue
            seen.add(real)
            files.append(p)
    return files


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # os.fsdecode kept undecodable bytes as lone surrogates
        return False
    return True


def _read_csv(path: Path) -> tuple[list[Example], list[str]]:
    rows, cols = decode_table(path, delimiter=",")
    for need in ("path", "label"):
        if need not in cols:
            raise DataError(f"{path}: no '{need}' column (columns: {', '.join(cols) or 'none'}); "
                            "an image CSV needs a header 'path,label'")
    items, notes = [], []
    for line, row in rows:
        label = (row["label"] or "").strip()
        if not row["path"]:
            raise DataError(f"{path}:{line}: empty path")
        if is_missing_label(label):
            notes.append(f"{path}:{line}: missing label ({label!r})")
            continue
        p = Path(row["path"])
        p = p if p.is_absolute() else path.parent / p
        items.append(Example(str(p), unicodedata.normalize("NFC", label), f"{row['path']}"))
    if not items and not notes:
        raise DataError(f"{path} has a header but no rows")
    return items, notes


def check_image(p: Path) -> str | None:
    """Why the image at `p` cannot be used, or None. It is decoded in full (at reduced scale where the
    format allows): a truncated JPEG passes a header check and fails only when its pixels are read."""
    if not p.is_file():
        return "file not found" if not p.is_symlink() else "a link to nothing (broken symbolic link)"
    if p.suffix.lower() not in IMAGE_EXTS:
        return check_input(p)
    return image_problem(p)


def image_problem(src) -> str | None:
    """Why the image in `src` (a path or a binary file object) cannot be used, or None: unreadable,
    a decompression bomb, or a strip over MAX_ASPECT : 1."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(src) as im:
                w, h = im.size
                if max(w, h) > MAX_ASPECT * max(1, min(w, h)):
                    return (f"{w}x{h} pixels, an aspect ratio over {MAX_ASPECT}:1, which no resize to a "
                            "square input can use; crop or pad it")
                im.draft("RGB", (512, 512))
                im.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        return (f"too many pixels to decode safely (a possible decompression bomb: {e}); "
                "resize it, or raise PIL.Image.MAX_IMAGE_PIXELS if you trust it")
    except Exception as e:  # noqa: BLE001 - a hostile file can make any decoder raise anything
        return f"unreadable image ({type(e).__name__}: {str(e)[:120]})"
    return None


def open_rgb(path: str) -> Image.Image:
    """The image as a person sees it, in RGB: EXIF rotation applied, 16-bit and float images scaled
    to 8 bits (not clipped to white), CMYK converted, transparency composited onto white."""
    try:
        with Image.open(path) as im:
            im.load()
            return _to_rgb(ImageOps.exif_transpose(im))
    except Exception as e:  # noqa: BLE001
        raise DataError(f"{path}: cannot read the image ({type(e).__name__}: {str(e)[:120]}); "
                        "replace or remove the file") from e


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        top = 1.0 if im.mode == "F" and a.max(initial=0) <= 1.0 else (255.0 if a.max(initial=0) <= 255 else 65535.0)
        im = Image.fromarray(np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        bg = Image.new("RGB", im.size, (255, 255, 255))
        bg.paste(im, mask=im.split()[-1])
        return bg
    return im.convert("RGB")


AUGMENT_POLICIES = ("light", "strong")


class CapAspect:
    """Centre-crop an image (PIL or a [..., H, W] tensor) whose long side is over `ratio` times its
    short side down to `ratio` : 1; any other image passes untouched. Put before the eval resize, it
    bounds what the resize makes (see RESIZE_ASPECT) and changes nothing the centre crop keeps."""

    def __init__(self, ratio: float = RESIZE_ASPECT):
        self.ratio = ratio

    def __call__(self, im):
        w, h = im.size if isinstance(im, Image.Image) else (im.shape[-1], im.shape[-2])
        short, long = min(w, h), max(w, h)
        keep = max(1, int(round(short * self.ratio)))
        if long <= keep:
            return im
        if isinstance(im, Image.Image):
            left, top = ((w - keep) // 2, 0) if w > h else (0, (h - keep) // 2)
            return im.crop((left, top, left + (keep if w > h else w), top + (h if w > h else keep)))
        start = (long - keep) // 2
        return im[..., start:start + keep] if w > h else im[..., start:start + keep, :]

    def __repr__(self) -> str:
        return f"CapAspect(ratio={self.ratio})"


def build_transforms(pre: ImagePreprocess, image_size: int | None = None, augment: bool = True,
                     policy: str = "light"):
    """(train, eval) transforms from the backbone's own preprocessing: size, mean/std, interpolation.

    Training augmentation policies (torchvision.transforms.v2):
    - `light`: random resized crop over most of the image (scale 0.6-1), horizontal flip, mild
      colour jitter: little distortion away from what the source model saw.
    - `strong`: random resized crop at scale 0.25-1, flip and TrivialAugmentWide (Muller & Hutter,
      ICCV 2021): one random photometric/geometric operation per image, no tuning. With a handful
      of labels per class the backbone otherwise memorises its few images within a few epochs.
    """
    from torchvision.transforms import v2 as T

    size = image_size or pre.size
    interp = {"bicubic": T.InterpolationMode.BICUBIC, "bilinear": T.InterpolationMode.BILINEAR,
              "nearest": T.InterpolationMode.NEAREST}.get(pre.interpolation, T.InterpolationMode.BICUBIC)
    norm = [T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(list(pre.mean), list(pre.std))]
    resize = int(round(size / pre.crop_pct))
    eval_tf = T.Compose([CapAspect(), T.Resize(resize, interpolation=interp), T.CenterCrop(size), *norm])
    if not augment:
        return eval_tf, eval_tf
    if policy not in AUGMENT_POLICIES:
        raise ValueError(f"unknown augmentation policy '{policy}'; use one of {', '.join(AUGMENT_POLICIES)}")
    if policy == "strong":
        train_tf = T.Compose([T.RandomResizedCrop(size, scale=(0.25, 1.0), interpolation=interp, antialias=True),
                              T.RandomHorizontalFlip(), T.TrivialAugmentWide(interpolation=interp), *norm])
    else:
        train_tf = T.Compose([T.RandomResizedCrop(size, scale=(0.6, 1.0), interpolation=interp, antialias=True),
                              T.RandomHorizontalFlip(), T.ColorJitter(0.2, 0.2, 0.2), *norm])
    return train_tf, eval_tf


def _nbytes(im) -> int:
    return im.numel() * im.element_size() if isinstance(im, torch.Tensor) else im.width * im.height * 3


class _ImageCache:
    """Decoded images (and arrays, data/arrays.py) by path and reading mode, least recently used dropped first beyond `limit` bytes. One per
    process, shared by the train/val/test datasets (they read the same files)."""

    def __init__(self, limit: int):
        self.limit, self.used = limit, 0
        self._items: OrderedDict[str, Image.Image] = OrderedDict()

    def get(self, path: str) -> Image.Image | None:
        im = self._items.get(path)
        if im is not None:
            self._items.move_to_end(path)
        return im

    def put(self, path: str, im: Image.Image) -> None:
        size = _nbytes(im)
        if size > self.limit or path in self._items:
            return
        while self._items and self.used + size > self.limit:
            old = self._items.popitem(last=False)[1]
            self.used -= _nbytes(old)
        self._items[path] = im
        self.used += size


_CACHE = _ImageCache(CACHE_BYTES)


class ImageDataset(Dataset):
    """Images with labels; optionally keeps decoded images in memory, up to CACHE_BYTES with the least
    recently used dropped first (few-shot sets fit whole, and decoding dominates CPU time otherwise).

    Indexed by `(index, epoch)` during training: the augmentation of an item is a pure function of
    (seed, epoch, index), so data loader workers, restarts and exact resume all see the same pixels.
    """

    def __init__(self, items: list[Example], class_to_idx: dict[str, int], transform,
                 seed: int = 0, cache: bool = True, gray: bool = False):
        self.gray = gray  # a 1-channel model: images are read as luminance ('L')
        self.items = items
        self.class_to_idx = class_to_idx
        self.transform = transform
        self.seed = seed
        self._cache = _CACHE if cache else None

    def __len__(self) -> int:
        return len(self.items)

    def _decode(self, i: int):
        im = open_rgb(self.items[i].x)
        return im.convert("L") if self.gray else im

    def _key(self, i: int) -> str:
        # size and mtime too: a file edited while the process runs is decoded again
        st = os.stat(self.items[i].x)
        return f"{self.items[i].x}|{st.st_size}|{st.st_mtime_ns}|{'L' if self.gray else 'RGB'}"

    def _image(self, i: int) -> Image.Image:
        key = self._key(i)
        im = self._cache.get(key) if self._cache is not None else None
        if im is None:
            im = self._decode(i)
            if self._cache is not None:
                self._cache.put(key, im)
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


class ArrayDataset(ImageDataset):
    """Arrays and signals (data/arrays.py) as [C, H, W] tensors, with the same seeding by
    (seed, epoch, index) as images; `transform` works on tensors (`array_transforms`)."""

    def __init__(self, items: list[Example], class_to_idx: dict[str, int], transform, pre: ImagePreprocess,
                 seed: int = 0, cache: bool = True):
        super().__init__(items, class_to_idx, transform, seed=seed, cache=cache)
        self.pre = pre

    def _decode(self, i: int) -> torch.Tensor:
        from .kinds import load_input
        return load_input(self.items[i].x, self.pre.channels, self.pre.array_layout, self.pre.spectrogram)

    def _key(self, i: int) -> str:
        p = self.pre
        return f"{self.items[i].x}|{p.channels}|{p.array_layout}|{p.spectrogram}"
