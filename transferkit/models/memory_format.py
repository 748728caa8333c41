"""Image backbones keep their convolution weights in channels-last (NHWC) memory order on the CPU.

oneDNN (CPU) has its fast convolution kernels for NHWC; with the weights in that order PyTorch runs
every convolution of the network in it, the input is converted once by the first convolution, and
the values are those of the default (NCHW) order up to float rounding. On the CPU that makes
training steps and inference faster; on a GPU it went the other way (EfficientNet-Lite0 is mostly
depthwise convolutions, whose channels-last kernels are slower there); benchmarks/bench_speed.py
measures both and the README holds the numbers. So the default (`TRANSFERKIT_CHANNELS_LAST` unset or
`auto`) is channels-last only where no CUDA device is present; `=1` forces it, `=0` keeps NCHW.
Checkpoints are written contiguous (NCHW) whatever the memory order (store/checkpoint.py), so runs
and exports do not depend on it.
"""

from __future__ import annotations

import os

import torch
from torch import nn


def channels_last_enabled() -> bool:
    v = os.environ.get("TRANSFERKIT_CHANNELS_LAST", "auto").strip().lower()
    if v in ("0", "false", "no", "off"):
        return False
    if v in ("1", "true", "yes", "on"):
        return True
    return not torch.cuda.is_available()  # auto: a CPU's oneDNN gains, cuDNN lost here


def prefer_channels_last(module: nn.Module) -> nn.Module:
    """Convert `module`'s 4-D parameters and buffers to channels-last in place (same Parameter
    objects, so optimizers and hooks keep theirs), unless switched off."""
    if channels_last_enabled() and any(p.ndim == 4 for p in module.parameters()):
        module.to(memory_format=torch.channels_last)
    return module
