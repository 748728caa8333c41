"""Image-like arrays (`.npy`, multi-page/multi-band `.tif`) as an input kind (data/kinds.py), in the
same folder/CSV layouts as images.

An array becomes a float tensor [C, H, W] by its channel axis (H x W x C or C x H x W, any dtype).
Values are normalised per channel by the mean and standard deviation of the *training* data
(`data.kinds.channel_stats`, computed once and stored in the run): an array's value range says
nothing a source model knows about. `array_transforms` serves every kind that is resized whole
(arrays and signals).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .kind import InputKind
from .splits import DataError

ARRAY_EXTS = {".npy", ".tif", ".tiff"}
LAYOUTS = ("auto", "hwc", "chw")


def check_array(p: Path) -> str | None:
    """Why the array at `p` cannot be used, or None; only its header is read."""
    if p.suffix.lower() == ".npy":
        a = np.load(p, mmap_mode="r", allow_pickle=False)
        if a.ndim not in (1, 2, 3):
            return f"array of shape {a.shape}: expected 1-D (signal), H x W, H x W x C or C x H x W"
        return None
    import tifffile
    with tifffile.TiffFile(p) as tf:
        if not tf.series:
            return "TIFF with no image data"
        return _tiff_bomb(tf.series[0].shape)


def _tiff_bomb(shape: tuple[int, ...]) -> str | None:
    """A compressed TIFF is not bounded by its file size (a few MB of zlib can hold GBs of zeros):
    one that holds more values than an RGB image at Pillow's decompression-bomb limit is refused,
    by the same rule (`PIL.Image.MAX_IMAGE_PIXELS`) images are."""
    from PIL import Image
    limit = Image.MAX_IMAGE_PIXELS
    n = int(np.prod(shape, dtype=np.int64))
    if limit and n > 3 * limit:
        return (f"TIFF of shape {tuple(shape)}: {n:,} values, over {3 * limit:,} (a possible decompression "
                "bomb); crop or split it, or raise PIL.Image.MAX_IMAGE_PIXELS if you trust it")
    return None


def _channels_first(a: np.ndarray, layout: str, path) -> np.ndarray:
    if a.ndim == 2:
        return a[None]
    if a.ndim != 3:
        raise DataError(f"{path}: array of shape {a.shape}: expected H x W, H x W x C or C x H x W")
    if layout == "chw":
        return a
    if layout == "hwc":
        return np.moveaxis(a, -1, 0)
    if a.shape[0] < a.shape[-1]:
        return a
    if a.shape[-1] < a.shape[0]:
        return np.moveaxis(a, -1, 0)
    raise DataError(f"{path}: cannot tell the channel axis of an array of shape {a.shape}; "
                    "pass --array-layout hwc or --array-layout chw")


def read_array(path: str | Path, layout: str = "auto") -> np.ndarray:
    """[C, H, W] float32 from a .npy or .tif; the channel axis is the smaller of the first and last
    (or as `layout` says)."""
    p = Path(path)
    if layout not in LAYOUTS:
        raise ValueError(f"array_layout must be one of {', '.join(LAYOUTS)}, got '{layout}'")
    if p.suffix.lower() == ".npy":
        a = np.load(p, allow_pickle=False)
    else:
        import tifffile
        a = tifffile.imread(p)
        a = np.squeeze(a) if a.ndim > 3 else a
    if a.dtype == bool:
        a = a.astype(np.uint8)
    if not np.issubdtype(a.dtype, np.number):
        raise DataError(f"{p}: array of dtype {a.dtype}; expected numbers")
    return np.ascontiguousarray(_channels_first(a, layout, p), dtype=np.float32)


def _read(path: str, channels: int, layout: str = "auto", spectrogram: str | None = None) -> torch.Tensor:
    return torch.from_numpy(read_array(path, layout))


ARRAY = InputKind("array", frozenset(ARRAY_EXTS), read=_read, check=check_array,
                  data_channels=lambda first, in_chans, layout: read_array(first, layout).shape[0],
                  words=lambda first: f"arrays, {Path(first).name}",
                  preview=lambda path, pre: read_array(path, getattr(pre, "array_layout", "auto")),
                  feed="the array as C x H x W floats in its own units")


def array_transforms(pre, image_size: int | None = None, augment: bool = True):
    """(train, eval) transforms on [C, H, W] tensors: resize the whole array to size x size (no
    centre crop: an array or spectrogram has no background margin to spare), normalise per channel;
    training adds a random resized crop over most of the input and, for arrays, a horizontal flip."""
    from torchvision.transforms import v2 as T

    size = image_size or pre.size
    norm = T.Normalize(list(pre.mean), list(pre.std))
    eval_tf = T.Compose([T.Resize((size, size), antialias=True), norm])
    if not augment:
        return eval_tf, eval_tf
    crop = T.RandomResizedCrop((size, size), scale=(0.6, 1.0), antialias=True)
    flip = [] if pre.spectrogram else [T.RandomHorizontalFlip()]  # time does not run backwards
    return T.Compose([crop, *flip, norm]), eval_tf
