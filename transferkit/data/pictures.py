"""Image files as an input kind (data/kinds.py): decoded by Pillow, RGB or, with `--in-chans 1`,
luminance; an RGB run keeps the source's own mean/std, a luminance run gets the data's."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import ConfigError
from .kind import InputKind

# decoded by Pillow: .jfif/.jpe are JPEG, a .gif is read as its first frame, .tga and the netpbm
# formats as they are; any other extension in a class folder is listed under `skipped`
IMAGE_EXTS = {".jpg", ".jpeg", ".jfif", ".jpe", ".png", ".webp", ".bmp", ".gif", ".tga", ".ppm", ".pgm", ".pnm"}


def read_picture(path: str, channels: int, layout: str = "auto", spectrogram: str | None = None) -> torch.Tensor:
    """[1 or 3, H, W] values in [0, 1]: luminance for a one-channel model, else RGB."""
    from PIL import Image
    with Image.open(path) as im:
        im = im.convert("L" if channels == 1 else "RGB")
        x = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0)
    return x[None] if x.ndim == 2 else x.permute(2, 0, 1)


def picture_channels(first: str, in_chans: int | None, layout: str) -> int:
    if in_chans not in (1, 3):  # RGB data without --in-chans never gets here (engine/input_kind.py)
        raise ConfigError(f"image files give 1 (--in-chans 1, luminance) or 3 (RGB) channels, not "
                          f"{in_chans}; store N-band data as .npy or .tif")
    return in_chans


PICTURE = InputKind("image", frozenset(IMAGE_EXTS), read=read_picture, data_channels=picture_channels,
                    words=lambda first: "images",
                    picture=True)

