"""Reading files a run wrote, or that someone handed us, without trusting them.

Every reader here turns a damaged, truncated, edited or foreign file into a `CheckpointError` whose
message names the file and what to do; nothing unpickles and nothing passes a stack trace to the user.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError

HASH_KEY = "tk_tensors_sha256"  # safetensors metadata: content hash of the tensors, verified on load
# ... and a hash of every other metadata entry (the class list, the source; the tensors' hash among
# them), so an edited class list cannot silently swap the labels of a run
META_HASH_KEY = "tk_metadata_sha256"
_FIX = "restore it from a copy, or train the run again"


def tensors_hash(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name, t in sorted(tensors.items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return "sha256:" + h.hexdigest()[:32]


def _what_is(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    if head[:1] == b"\x80" or head[:4] == b"PK\x03\x04":
        return ("is a PyTorch pickle (torch.save), not safetensors; transferkit never unpickles such files, "
                "because loading a pickle can run any code it carries. Convert it where you trust it: "
                "safetensors.torch.save_file(torch.load(f, weights_only=True), 'model.safetensors')")
    if not head:
        return f"is empty; {_FIX}"
    return f"is not a valid safetensors file (truncated or damaged); {_FIX}"


def metadata_hash(meta: dict[str, str]) -> str:
    body = {k: v for k, v in meta.items() if k != META_HASH_KEY}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode("utf-8")).hexdigest()


def _check_metadata(path: Path, meta: dict[str, str]) -> None:
    claimed = meta.get(META_HASH_KEY)
    if claimed and metadata_hash(meta) != claimed:
        edited = ", ".join(sorted(k for k in meta if k not in (HASH_KEY, META_HASH_KEY))) or "none"
        raise CheckpointError(f"{path} was edited: its metadata (entries: {edited}) no longer match the "
                              f"checksum written with them, so its class list cannot be trusted; {_FIX}")


def read_safetensors_metadata(path: Path, *, verify: bool = True) -> dict[str, str]:
    from safetensors import safe_open
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; {_FIX}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for bad headers
        raise CheckpointError(f"{path} {_what_is(path)}") from e
    if verify:
        _check_metadata(path, meta)
    return meta


def load_tensors(path: Path, *, verify: bool = True) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, checked against the content hash written with them."""
    from safetensors import safe_open
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; {_FIX}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{path} {_what_is(path)}") from e
    if verify:
        _check_metadata(path, meta)
    claimed = meta.get(HASH_KEY)
    if verify and claimed and tensors_hash(tensors) != claimed:
        raise CheckpointError(f"{path} is damaged: its tensors no longer match the checksum written with "
                              f"them (a disk error, or the file was edited); {_FIX}")
    return tensors


def read_json(path: Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; {_FIX}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{path} is not UTF-8 text (damaged?); {_FIX}") from e
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); "
                              f"it was truncated or edited; {_FIX}") from e


def json_safe(obj: Any, where: str = "") -> tuple[Any, list[str]]:
    """`obj` with every NaN/infinity replaced by None (JSON has neither), and the paths where they were."""
    bad: list[str] = []

    def walk(o, at):
        if isinstance(o, float) and not math.isfinite(o):
            bad.append(at or "value")
            return None
        if isinstance(o, dict):
            return {k: walk(v, f"{at}.{k}" if at else str(k)) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [walk(v, f"{at}[{i}]") for i, v in enumerate(o)]
        return o
    return walk(obj, where), bad
