"""An on-disk cache of frozen pooled features, so a head can be fitted without the backbone.

A cached feature row is found by two keys:

- the *namespace*: everything that decides the feature of an item besides the item itself: a
  content hash of the backbone's weights as they are now (BatchNorm statistics included), the
  module's class and pooling, the preprocessing (the full eval transform for images, the tokenizer's
  vocabulary and max length for text), the view (`plain` or `flip`), the device / autocast and the
  transferkit version;
- the *item key*: an image is its absolute path with its size and modification time (touching or
  rewriting a file makes a new key, so a changed file is computed afresh); a text is its SHA-256.

Layout: ``ROOT/features/<namespace>/`` holds ``meta.json`` (the key parts, for `cache info`) and
shards: ``<id>.npy`` (float32 rows, read memory-mapped) and ``<id>.json`` (the item keys of those
rows, the shape and the byte size of the ``.npy``). Both files are written to a temporary name and
renamed into place, the ``.npy`` first: the ``.json`` is the commit record, so a shard whose writer
was interrupted has no record and is never read. A record whose ``.npy`` does not have the
recorded size and shape (a truncated file) is ignored as well, and its rows are computed again.

Only deterministic features may be cached: `preprocess_key` returns None for a random transform.

`cache clear` deletes only what this cache wrote: a namespace folder is ours when its ``meta.json``
hashes to the folder's name (true of every entry any transferkit version wrote) and it holds
nothing but our shards; ``features/.transferkit-cache`` marks a ``features/`` folder we created.
Anything else under ``features/`` (a folder of the user's that happens to have this name) is left
in place and named.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from .splits import Example

# transforms whose output is a pure function of the input image (a random one makes caching wrong)
_DETERMINISTIC = {"Compose", "CapAspect", "Resize", "CenterCrop", "ToTensor", "Normalize", "PILToTensor",
                  "ConvertImageDtype", "ToImage", "ToDtype", "Grayscale"}
FORMAT = 1  # bump when the meaning of a cached row changes
MARKER = ".transferkit-cache"  # in ROOT/features/ when transferkit created that folder
# every file a namespace folder of ours holds: meta.json, shards, and temporary files of _atomic_write
_OUR_FILE = re.compile(r"(meta\.json|[0-9a-f]{16}\.(npy|json)|\.(meta\.json|[0-9a-f]{16}\.(npy|json))\..+\.tmp)")


def default_cache_dir() -> Path:
    """``$TRANSFERKIT_CACHE``, else ``$XDG_CACHE_HOME/transferkit``, else ``~/.cache/transferkit``."""
    if os.environ.get("TRANSFERKIT_CACHE"):
        return Path(os.environ["TRANSFERKIT_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "transferkit"


def item_key(ex: Example, modality: str) -> str:
    """Identity of an input: path + size + mtime for a file, a content hash for a text."""
    if modality == "image":
        p = Path(ex.x).resolve()
        st = p.stat()
        return f"file:{p}|{st.st_size}|{st.st_mtime_ns}"
    return "text:" + hashlib.sha256(ex.x.encode("utf-8")).hexdigest()


def preprocess_key(dataset: Any, collate_fn: Any = None) -> dict | None:
    """What the preprocessing does to an item, or None when it is not deterministic."""
    tokenizer = getattr(collate_fn, "tokenizer", None)
    if tokenizer is not None:
        vocab = sorted(tokenizer.get_vocab().items())
        return {"kind": "text", "tokenizer": type(tokenizer).__name__,
                "vocab": hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:24],
                "lower": bool(getattr(tokenizer, "do_lower_case", False)),
                "max_length": int(collate_fn.max_length)}
    transform = getattr(dataset, "transform", None)
    if transform is None:
        return None
    steps = getattr(transform, "transforms", [transform])
    if any(type(t).__name__ not in _DETERMINISTIC for t in steps):
        return None
    return {"kind": "image", "transform": repr(transform)}


def namespace(weights: str, module: str, preprocess: dict, view: str, device: str) -> tuple[str, dict]:
    """(directory name, key parts) of one feature space."""
    from .. import __version__  # image decoding or pooling may change between versions
    parts = {"format": FORMAT, "transferkit": __version__, "weights": weights, "module": module,
             "preprocess": preprocess, "view": view, "device": device}
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]
    return digest, parts


def _atomic_write(path: Path, write) -> None:
    """`write(file)` into a temporary file beside `path`, flushed to disk, then renamed over it."""
    from ..store.checkpoint import follow_umask
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        follow_umask(Path(tmp))  # mkstemp makes 0600: a shared cache is read as any file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    ignored_shards: int = 0


class FeatureCache:
    """Feature rows on disk under `root` (see the module docstring for the layout)."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root).expanduser() if root else default_cache_dir()
        self.stats = CacheStats()

    def _dir(self, ns: str) -> Path:
        return self.root / "features" / ns

    def _shards(self, ns: str) -> Iterable[tuple[Path, dict]]:
        d = self._dir(ns)
        if not d.is_dir():
            return
        for rec in sorted(d.glob("*.json")):
            if rec.name == "meta.json" or rec.name.startswith("."):
                continue
            try:
                meta = json.loads(rec.read_text())
            except (OSError, ValueError):
                self.stats.ignored_shards += 1
                continue
            npy = rec.with_suffix(".npy")
            if not npy.is_file() or npy.stat().st_size != meta.get("npy_bytes"):
                self.stats.ignored_shards += 1  # truncated or missing: never read a partial file
                continue
            yield npy, meta

    def lookup(self, ns: str, keys: list[str]) -> tuple[np.ndarray | None, list[int]]:
        """Rows for `keys` from the cache: (array [len(keys), D] with the found rows filled, or None
        when nothing was found; the positions that are missing)."""
        where: dict[str, tuple[Path, int]] = {}
        wanted = set(keys)
        for npy, meta in self._shards(ns):
            for row, k in enumerate(meta["keys"]):
                if k in wanted:
                    where[k] = (npy, row)
        missing = [i for i, k in enumerate(keys) if k not in where]
        if len(missing) == len(keys):
            self.stats.misses += len(keys)
            return None, missing
        out = None
        by_file: dict[Path, list[tuple[int, int]]] = {}
        for i, k in enumerate(keys):
            if k in where:
                npy, row = where[k]
                by_file.setdefault(npy, []).append((i, row))
        for npy, pairs in by_file.items():
            try:
                arr = np.load(npy, mmap_mode="r")
            except (OSError, ValueError):
                self.stats.ignored_shards += 1
                missing += [i for i, _ in pairs]
                continue
            if out is None:
                out = np.zeros((len(keys), arr.shape[1]), dtype=np.float32)
            dst = [i for i, _ in pairs]
            out[dst] = arr[[r for _, r in pairs]]
        missing = sorted(set(missing))
        self.stats.hits += len(keys) - len(missing)
        self.stats.misses += len(missing)
        return out, missing

    def store(self, ns: str, parts: dict, keys: list[str], feats: np.ndarray) -> Path:
        """Write one shard of rows (atomically: the record is renamed into place last)."""
        feats = np.ascontiguousarray(feats, dtype=np.float32)
        if feats.shape[0] != len(keys):
            raise ValueError(f"{len(keys)} keys for {feats.shape[0]} feature rows")
        d = self._dir(ns)
        if not d.parent.is_dir():
            d.parent.mkdir(parents=True)
            (d.parent / MARKER).write_text("transferkit feature cache: `transferkit cache clear` deletes the "
                                           "feature spaces in this folder that transferkit wrote\n")
        d.mkdir(parents=True, exist_ok=True)
        if not (d / "meta.json").exists():
            _atomic_write(d / "meta.json", lambda f: f.write(json.dumps(parts, indent=2).encode()))
        shard = d / uuid.uuid4().hex[:16]
        npy = shard.with_suffix(".npy")
        _atomic_write(npy, lambda f: np.save(f, feats))
        record = {"keys": keys, "shape": list(feats.shape), "npy_bytes": npy.stat().st_size}
        _atomic_write(shard.with_suffix(".json"), lambda f: f.write(json.dumps(record).encode()))
        return npy

    def info(self) -> dict:
        """Feature spaces, rows and bytes held under the root."""
        spaces = []
        total = 0
        for d in sorted((self.root / "features").glob("*")) if (self.root / "features").is_dir() else []:
            if not d.is_dir():
                continue
            size = sum(f.stat().st_size for f in d.iterdir() if f.is_file())
            total += size
            rows = sum(m["shape"][0] for _, m in self._shards(d.name))
            try:
                parts = json.loads((d / "meta.json").read_text())
            except (OSError, ValueError):
                parts = {}
            spaces.append({"namespace": d.name, "rows": rows, "bytes": size,
                           "weights": parts.get("weights"), "view": parts.get("view"),
                           "preprocess": (parts.get("preprocess") or {}).get("kind")})
        return {"root": str(self.root), "spaces": spaces, "bytes": total}

    def clear(self) -> dict:
        """Delete the feature spaces this cache wrote, and nothing else (see the module docstring).

        Returns ``{"freed_bytes", "removed" (namespaces), "kept" (paths under features/ that are
        not ours, left in place)}``."""
        d = self.root / "features"
        result = {"freed_bytes": 0, "removed": 0, "kept": []}
        if not d.is_dir() or d.is_symlink():
            if d.exists() or d.is_symlink():
                result["kept"].append(str(d))
            return result
        marked = (d / MARKER).is_file()
        for entry in sorted(d.iterdir()):
            if entry.name == MARKER and entry.is_file():
                continue
            empty_of_ours = marked and _is_empty_dir(entry) and re.fullmatch(r"[0-9a-f]{24}", entry.name)
            if not (empty_of_ours or is_our_namespace(entry)):
                result["kept"].append(str(entry))
                continue
            result["freed_bytes"] += sum(f.stat().st_size for f in entry.iterdir())
            shutil.rmtree(entry)
            result["removed"] += 1
        if not result["kept"]:  # nothing of anyone else's is left: the folder itself goes too
            (d / MARKER).unlink(missing_ok=True)
            try:
                d.rmdir()
            except OSError:
                pass
        return result


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink() and not any(path.iterdir())


def is_our_namespace(path: Path) -> bool:
    """A feature space that transferkit wrote: a plain folder whose meta.json holds the key parts that
    hash to its name, and nothing but our own files (shards, temporary files of a killed writer)."""
    if path.is_symlink() or not path.is_dir() or not re.fullmatch(r"[0-9a-f]{24}", path.name):
        return False
    try:
        parts = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(parts, dict) or "format" not in parts or "transferkit" not in parts:
        return False
    if hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24] != path.name:
        return False
    return all(f.is_file() and not f.is_symlink() and _OUR_FILE.fullmatch(f.name) for f in path.iterdir())


def cache_disabled() -> bool:
    """``TRANSFERKIT_NO_CACHE=1`` turns the cache off for every command (`train`, `compare` too)."""
    return os.environ.get("TRANSFERKIT_NO_CACHE", "").strip().lower() in ("1", "true", "yes", "on")


def open_cache(enabled: bool = True, cache_dir: str | Path | None = None) -> FeatureCache | None:
    """The cache the options ask for: None with ``--no-cache`` or ``TRANSFERKIT_NO_CACHE=1``."""
    return FeatureCache(cache_dir) if enabled and not cache_disabled() else None


def feature_cache_for(cfg: Any) -> FeatureCache | None:
    """The cache of a training run: the default root (``$TRANSFERKIT_CACHE``), unless turned off."""
    return open_cache(getattr(cfg, "cache", True), getattr(cfg, "cache_dir", None))
