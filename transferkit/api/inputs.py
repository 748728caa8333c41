"""Inputs of the notebook API: what `Model.predict` and `fit` take besides files (PIL images, numpy
arrays, torch tensors; one input or many) turned into what the engine reads, and paths made absolute."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from ..data.materialise import is_in_memory, materialise


def is_tensor(x: Any) -> bool:
    return "torch" in sys.modules and isinstance(x, sys.modules["torch"].Tensor)


def is_array(x: Any) -> bool:
    return (type(x).__module__ == "numpy" and hasattr(x, "ndim")) or is_tensor(x)


def as_numpy(x: Any):
    import numpy as np
    return x.detach().cpu().numpy() if is_tensor(x) else np.asarray(x)


def split_inputs(inputs: Any, modality: str) -> tuple[bool, list]:
    """(one input?, the inputs as a list). Lists, tuples, Series and 4-D arrays/tensors are many."""
    if isinstance(inputs, (list, tuple)) or type(inputs).__name__ in ("Series", "Index"):
        return False, list(inputs)
    if is_array(inputs) and (inputs.ndim == 4 or (modality == "text" and inputs.ndim == 1)):
        return False, [x.item() if modality == "text" else x for x in inputs]
    return True, [inputs]


def to_pil(x: Any):
    """An image array as a PIL image: numpy H x W or H x W x C, a tensor C x H x W (or H x W);
    uint8 as it is, floats in 0..1 scaled to 0..255."""
    import numpy as np
    from PIL import Image
    a = as_numpy(x)
    if is_tensor(x) and a.ndim == 3:
        a = a.transpose(1, 2, 0)  # C x H x W -> H x W x C
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise ValueError(f"an image array has shape H x W or H x W x 3/4 (a tensor: C x H x W), got "
                         f"{tuple(as_numpy(x).shape)}")
    if a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    elif np.issubdtype(a.dtype, np.floating):
        if np.nanmax(a) > 1.0 or np.nanmin(a) < 0.0:
            raise ValueError(f"a float image array holds values in 0..1, got {np.nanmin(a):.3g}..{np.nanmax(a):.3g}; "
                             "give uint8 (0..255) or divide by 255")
        a = np.round(np.nan_to_num(a) * 255)
    elif a.dtype != np.uint8 and (a.min() < 0 or a.max() > 255):
        raise ValueError(f"an integer image array holds values in 0..255, got {a.min()}..{a.max()}")
    return Image.fromarray(np.ascontiguousarray(a.astype(np.uint8))).convert("RGB")


def shown_input(x: Any, i: int) -> str:
    if isinstance(x, (str, Path)):
        return str(x)
    return f"<{'array' if is_array(x) else 'image'} {i}>"


def device() -> str:
    from ..infer.predictions import default_device
    return default_device()


def absolute(p: str | Path) -> Path:
    return Path(os.path.abspath(os.path.expanduser(str(p))))


def as_path(data: Any, dest: Path, name: str, text_col: str, label_col: str) -> str | None:
    if data is None:
        return None
    if not is_in_memory(data):
        return str(absolute(data))
    if isinstance(data, (list, tuple)):  # arrays and tensors among the x: pictures, as predict reads them
        data = [(to_pil(p[0]), p[1]) if isinstance(p, (list, tuple)) and len(p) == 2 and is_array(p[0]) else p
                for p in data]
    return materialise(data, dest, name, text_col=text_col, label_col=label_col)[0]
