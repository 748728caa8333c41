"""transferkit: transfer learning from pretrained models, as a library and a CLI.

Names are imported on first use, so `transferkit --help` and argument errors answer without loading
PyTorch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "fit": "api", "load": "api", "Model": "api",
    "Backbone": "models", "TransferModel": "models", "attach_head": "models", "load_backbone": "models",
    "TrainConfig": "config", "ConfigError": "config", "make_config": "config",
}

__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'transferkit' has no attribute {name!r}")
