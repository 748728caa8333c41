"""The software a run was made with (RUN/environment.json): Python, the platform, the versions of
transferkit and the libraries that decide its numbers, and the accelerator. A result that cannot be
reproduced is first compared against this file."""

from __future__ import annotations

import platform
import sys
from importlib import metadata
from pathlib import Path

LIBRARIES = ("transferkit", "torch", "torchvision", "timm", "transformers", "accelerate", "peft",
             "safetensors", "huggingface-hub", "scikit-learn", "numpy", "pillow", "tokenizers")


def environment() -> dict:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    if versions["transferkit"] is None:  # a source checkout that was never installed
        from .. import __version__
        versions["transferkit"] = __version__
    env = {"python": sys.version.split()[0], "implementation": platform.python_implementation(),
           "platform": platform.platform(), "machine": platform.machine(), "libraries": versions}
    from ..allocator import allocator_state
    env["allocator"] = allocator_state()
    import torch
    env["torch_threads"] = torch.get_num_threads()
    if torch.cuda.is_available():
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
        env["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return env


def write_environment(run: Path) -> dict:
    from .checkpoint import atomic_write_json
    env = environment()
    atomic_write_json(Path(run) / "environment.json", env)
    return env
