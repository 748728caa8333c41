"""Atomic, pickle-free checkpoints: tensors in safetensors, everything else in JSON.

`last/` holds what an exact resume needs: weights, optimizer state, step, phase, frozen stages,
parameter-group layout and every RNG state. Writes go to a temporary name and are renamed into
place, so an interrupted write never leaves a half file where a good one was.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from .safety import (HASH_KEY, META_HASH_KEY, CheckpointError, json_safe, load_tensors, metadata_hash,
                     read_json, read_safetensors_metadata, tensors_hash)

__all__ = ["CheckpointError", "follow_umask", "json_safe", "load_tensors", "read_json", "read_safetensors_metadata",
           "tensors_hash", "HASH_KEY"]

CHECKSUMS = "checksums.json"     # in a checkpoint folder: sha256 of every file, verified on resume

_DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def follow_umask(path: Path) -> None:
    """Give `path`, and everything under it when it is a folder, the permissions a plain open() or
    mkdir() gives under the process's umask. For what writers create private: mkstemp and
    safetensors' save_file (and so transformers' save_pretrained) make files 0600, mkdtemp makes
    folders 0700; colleagues should open a run, an export or a cache as any file of theirs."""
    mask = _umask()
    path = Path(path)
    todo = [path]
    while todo:
        p = todo.pop()
        if p.is_symlink():
            continue
        if p.is_dir():
            os.chmod(p, 0o777 & ~mask)
            todo += list(p.iterdir())
        else:
            os.chmod(p, 0o666 & ~mask)


def _tmp_beside(path: Path) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    return Path(name)


def _disk_error(target: Path, e: OSError, intact: str) -> Exception:
    if e.errno in _DISK_FULL:
        return CheckpointError(f"disk full while writing {target} ({e.strerror or 'no space left on device'}); "
                               f"{intact} Free some space and run the command again (a training run: "
                               "transferkit train --resume RUN_DIR)")
    return e


def _write_via_tmp(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_beside(path)
    try:
        write(tmp)
        follow_umask(tmp)  # mkstemp (and safetensors) make 0600
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise _disk_error(path, e, "the previous version of the file, if any, is intact.") from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    _write_via_tmp(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: Path, obj: Any) -> list[str]:
    """Write strict JSON: NaN and infinities (which JSON lacks) become null. Returns where they were."""
    clean, bad = json_safe(obj)
    atomic_write_text(path, json.dumps(clean, indent=2, sort_keys=False, allow_nan=False) + "\n")
    return bad


def atomic_save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    # safetensors refuses tensors that share memory; checkpoints want independent copies anyway
    tensors = {k: v.detach().contiguous().cpu().clone() for k, v in tensors.items()}
    meta = {k: str(v) for k, v in (metadata or {}).items()}
    meta[HASH_KEY] = tensors_hash(tensors)
    meta[META_HASH_KEY] = metadata_hash(meta)
    _write_via_tmp(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_last(run: Path, model, optimizer, run_state: dict, **extra_meta) -> None:
    """RUN/last/: the model, the optimizer, every random generator and the run state, swapped in
    whole (atomic_replace_dir), so that a resume continues exactly where this left off."""
    def build(tmp: Path) -> None:
        tensors, rng_meta = rng_state()
        meta = {"run_state": run_state, "rng": rng_meta, **extra_meta}
        if optimizer is not None:
            opt_t, opt_meta = optimizer_to_flat(optimizer)
            atomic_save_tensors(tmp / "optimizer.safetensors", opt_t)
            meta["optimizer"] = opt_meta
            meta["param_groups"] = [g.get("name") for g in optimizer.param_groups]
        atomic_save_tensors(tmp / "rng.safetensors", tensors)
        atomic_save_tensors(tmp / "model.safetensors", model.state_dict())
        atomic_write_json(tmp / "state.json", meta)
    atomic_replace_dir(build, Path(run) / "last")


_DATA_DIGESTS: dict[tuple, str] = {}


def data_file_digest(path: str | Path) -> str:
    """sha256 of a data file's bytes, remembered per (path, size, mtime) for the process: the
    checks of the data (same content in two classes, overlap with --test) and the run's fingerprint
    ask for the same files, which are then read once. Checkpoint checksums do not use it (they
    hash files rewritten in place)."""
    st = os.stat(path)
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _DATA_DIGESTS:
        _DATA_DIGESTS[key] = sha256_file(Path(path))
    return _DATA_DIGESTS[key]


def atomic_replace_dir(build, final: Path) -> None:
    """Write a directory with `build(tmpdir)` and swap it in for `final`.

    The folder gets a `checksums.json`. Two renames swap it in: `final` -> `.final.old`, then the new
    one -> `final`. A crash between them leaves `.final.old` complete, and `find_checkpoint` looks
    there; a failed build (disk full, an error) removes its temporary folder and leaves `final` as it was.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp.", dir=final.parent))
    follow_umask(tmp)  # mkdtemp makes 0700; colleagues should read a run as any folder
    try:
        build(tmp)
        sums = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        with open(tmp / CHECKSUMS, "w", encoding="utf-8") as f:
            json.dump(sums, f, indent=2)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        cause = e.__cause__ if isinstance(e, CheckpointError) else e
        if isinstance(cause, OSError):
            raise _disk_error(final, cause, f"the previous {final.name}/ is intact.") from cause
        raise
    old = final.with_name(f".{final.name}.old")
    if final.exists():
        if old.exists():  # only ever removed while a complete `final` exists beside it
            shutil.rmtree(old)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    for stale in final.parent.glob(f".{final.name}.tmp.*"):  # left by a process killed mid-write
        shutil.rmtree(stale, ignore_errors=True)


def verify_dir(folder: Path) -> None:
    """Check the files of a checkpoint folder against its checksums.json (files absent are not
    checked here: the caller decides whether it can do without them)."""
    folder = Path(folder)
    sums_path = folder / CHECKSUMS
    if not sums_path.is_file():
        return  # written before checksums existed
    sums = read_json(sums_path)
    for name, digest in sums.items():
        p = folder / name
        if p.is_file() and sha256_file(p) != digest:
            raise CheckpointError(f"{p} is damaged: its contents no longer match the checksum written with "
                                  "it (a disk error, or the file was edited)")


def find_checkpoint(run: Path, log=print) -> Path | None:
    """The folder to resume from: `last/`, or `.last.old` when a crash hit while `last/` was being
    replaced (or `last/` is damaged and the older copy is not). None when the run has neither."""
    run = Path(run)
    errors = []
    for d in (run / "last", run / ".last.old"):
        if not (d / "state.json").is_file():
            continue
        try:
            verify_dir(d)
            read_json(d / "state.json")
        except CheckpointError as e:
            errors.append(e)
            continue
        if errors:
            log(f"warning: {errors[0]}; resuming from the previous checkpoint {d}")
        return d
    if errors:
        raise errors[0]
    return None


class CheckpointClock:
    """When to rewrite `last/`: every `every_steps` optimisation steps or `every_seconds`, whichever
    comes first (a run killed at any moment loses at most that much)."""

    def __init__(self, every_steps: int | None, every_seconds: float | None, step: int, now: float):
        self.every_steps, self.every_seconds = every_steps, every_seconds
        self.last_step, self.last_time = step, now

    def due(self, step: int, now: float) -> bool:
        by_steps = bool(self.every_steps) and step - self.last_step >= self.every_steps
        by_time = self.every_seconds is not None and now - self.last_time >= self.every_seconds
        return by_steps or by_time

    def saved(self, step: int, now: float) -> None:
        self.last_step, self.last_time = step, now


# ---------------------------------------------------------------------------- optimizer state

def optimizer_to_flat(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state dict into tensors (safetensors) and a JSON-able remainder."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"state.{pid}.{k}"] = v
            else:
                scalars.setdefault(str(pid), {})[k] = v
    groups = [{k: v for k, v in g.items() if k not in ("param_names",)} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def optimizer_from_flat(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        _, pid, k = key.split(".", 2)
        state.setdefault(int(pid), {})[k] = v
    for pid, st in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(st)
    current = opt.state_dict()["param_groups"]
    saved = meta["param_groups"]
    if len(current) != len(saved) or any(len(a["params"]) != len(b["params"]) for a, b in zip(current, saved)):
        raise RuntimeError("the optimizer's parameter groups differ from the checkpoint's: "
                           "the run's strategy or frozen stages changed since it was saved")
    groups = []
    for cur, sv in zip(current, saved):
        g = dict(sv)
        if "param_names" in cur:
            g["param_names"] = cur["param_names"]
        groups.append(g)
    opt.load_state_dict({"state": state, "param_groups": groups})


# ---------------------------------------------------------------------------------------- RNG

def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    py = random.getstate()
    np_state = np.random.get_state()
    meta = {"python": [py[0], list(py[1]), py[2]],
            "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]),
                      float(np_state[4])]}
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    v, st, g = meta["python"]
    random.setstate((v, tuple(st), g))
    n = meta["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))

