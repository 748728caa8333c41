"""What every hub-backed source shares: the error type, the offline check, the offline message."""

from __future__ import annotations

import os
import socket


class SourceError(ValueError):
    """A source id that cannot be loaded; the message says why and what to do instead."""


def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    # huggingface_hub retries for ~45 s before it gives up offline; one quick probe avoids that.
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def offline_error(source: str, detail: str) -> SourceError:
    return SourceError(
        f"cannot load '{source}': {detail}. The weights are not in the local cache and the hub is "
        "not reachable. Work offline with 'bundled:efficientnet_lite0' / 'bundled:minilm-l6' "
        "(weights installed with pip), or 'file:PATH --arch NAME' for weights on disk "
        "(see 'transferkit models').")


def reload_hf_constants() -> None:
    # huggingface_hub reads HF_HUB_OFFLINE once at import; keep its constant in step with the env.
    import huggingface_hub.constants as c
    truthy = ("1", "ON", "YES", "TRUE")
    c.HF_HUB_OFFLINE = (os.environ.get("HF_HUB_OFFLINE", "").upper() in truthy
                        or os.environ.get("TRANSFORMERS_OFFLINE", "").upper() in truthy)
