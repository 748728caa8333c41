"""Image-like arrays (`.npy`, multi-page/multi-band `.tif`) and signals (`.wav`, 1-D `.npy`) as model
inputs, in the same folder/CSV layouts as images.

Every input becomes a float tensor [C, H, W]: an array by its channel axis (H x W x C or C x H x W,
any dtype), a signal by its log-mel spectrogram (data/signals.py, C = 1). Values are normalised per
channel by the mean and standard deviation of the *training* data (`channel_stats`, computed once
and stored in the run): an array's value range says nothing a source model knows about.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .signals import SpectrogramSpec, log_mel, read_signal
from .splits import DataError, Example

# decoded by Pillow: .jfif/.jpe are JPEG, a .gif is read as its first frame, .tga and the netpbm
# formats as they are; any other extension in a class folder is listed under `skipped`
IMAGE_EXTS = {".jpg", ".jpeg", ".jfif", ".jpe", ".png", ".webp", ".bmp", ".gif", ".tga", ".ppm", ".pgm", ".pnm"}
ARRAY_EXTS = {".npy", ".tif", ".tiff"}
SIGNAL_EXTS = {".wav"}
INPUT_EXTS = IMAGE_EXTS | ARRAY_EXTS | SIGNAL_EXTS
LAYOUTS = ("auto", "hwc", "chw")


def input_kind(path: str | Path) -> str:
    """"image", "array" or "signal" by the file's extension (and, for .npy, its dimensions)."""
    suffix = Path(path).suffix.lower()
    if suffix in IMAGE_EXTS:
        return "image"
    if suffix in SIGNAL_EXTS:
        return "signal"
    if suffix == ".npy":
        try:
            return "signal" if np.load(path, mmap_mode="r", allow_pickle=False).ndim == 1 else "array"
        except (ValueError, OSError):
            return "array"  # the reader reports it as unreadable
    if suffix in ARRAY_EXTS:
        return "array"
    raise DataError(f"{path}: unknown input type '{suffix}' (known: {', '.join(sorted(INPUT_EXTS))})")


def check_input(path: str | Path) -> str | None:
    """Why `path` cannot be read, or None. Only headers are read (cheap on large folders)."""
    p = Path(path)
    if not p.is_file():
        return "file not found"
    suffix = p.suffix.lower()
    try:
        if suffix == ".npy":
            a = np.load(p, mmap_mode="r", allow_pickle=False)
            if a.ndim not in (1, 2, 3):
                return f"array of shape {a.shape}: expected 1-D (signal), H x W, H x W x C or C x H x W"
        elif suffix in (".tif", ".tiff"):
            import tifffile
            with tifffile.TiffFile(p) as tf:
                if not tf.series:
                    return "TIFF with no image data"
                return _tiff_bomb(tf.series[0].shape)
        elif suffix == ".wav":
            from scipy.io import wavfile
            wavfile.read(p, mmap=True)
    except (ValueError, OSError, EOFError) as e:
        return f"unreadable {suffix} ({type(e).__name__})"
    return None


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


def load_input(path: str, channels: int, layout: str = "auto", spectrogram: str | None = None) -> torch.Tensor:
    """The unnormalised [channels, H, W] tensor of one array, signal or image file. One-channel data
    fed to a model with more channels is repeated (the naive baseline); other mismatches are errors."""
    kind = input_kind(path)
    if kind == "signal":
        spec = SpectrogramSpec.parse(spectrogram)
        x = log_mel(read_signal(path, spec.sr), spec)
    elif kind == "array":
        x = torch.from_numpy(read_array(path, layout))
    else:
        from PIL import Image
        with Image.open(path) as im:
            im = im.convert("L" if channels == 1 else "RGB")
            x = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0)
        x = x[None] if x.ndim == 2 else x.permute(2, 0, 1)
    if x.shape[0] == 1 and channels > 1:
        x = x.repeat(channels, 1, 1)
    if x.shape[0] != channels:
        raise DataError(f"{path}: {x.shape[0]} channels, but the model reads {channels}; train with "
                        f"--in-chans {x.shape[0]} or give inputs with {channels} channels")
    return x


def channel_stats(items: list[Example], channels: int, layout: str = "auto",
                  spectrogram: str | None = None) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation over every value of every item (float64 sums)."""
    n = 0
    s = np.zeros(channels)
    ss = np.zeros(channels)
    for ex in items:
        x = load_input(ex.x, channels, layout, spectrogram).double().reshape(channels, -1)
        n += x.shape[1]
        s += x.sum(1).numpy()
        ss += (x * x).sum(1).numpy()
    if not n:
        raise DataError("no training inputs to compute channel statistics from")
    mean = s / n
    std = np.sqrt(np.maximum(ss / n - mean ** 2, 0.0))
    std = np.where(std < 1e-8, 1.0, std)  # a constant channel is centred, not blown up
    return [round(float(v), 8) for v in mean], [round(float(v), 8) for v in std]


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
