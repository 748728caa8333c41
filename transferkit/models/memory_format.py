"""Image backbones keep their convolution weights in channels-last (NHWC) memory order.

oneDNN (CPU) and cuDNN (GPU tensor cores) have their fast convolution kernels for NHWC; with the
weights in that order PyTorch runs every convolution of the network in it, the input is converted
once by the first convolution, and the values are those of the default (NCHW) order up to float
rounding. Measured by benchmarks/bench_speed.py on EfficientNet-Lite0 with one CPU thread: about
1.4x the training steps and 1.5x the inference of NCHW. Checkpoints are written contiguous (NCHW)
as before (engine/checkpoint.py), so runs and exports do not depend on it.
`TRANSFERKIT_CHANNELS_LAST=0` keeps the default order.
"""

from __future__ import annotations

import os

import torch
from torch import nn


def channels_last_enabled() -> bool:
    return os.environ.get("TRANSFERKIT_CHANNELS_LAST", "1") not in ("0", "false", "no", "off")


def prefer_channels_last(module: nn.Module) -> nn.Module:
    """Convert `module`'s 4-D parameters and buffers to channels-last in place (same Parameter
    objects, so optimizers and hooks keep theirs), unless switched off."""
    if channels_last_enabled() and any(p.ndim == 4 for p in module.parameters()):
        module.to(memory_format=torch.channels_last)
    return module
