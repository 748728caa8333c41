"""The run folder: who may write there, and which transferkit made it.

A run folder is claimed by writing `run.json` (format version, transferkit version, start time)
before anything else. From then on the folder is ours; before that, `train --out DIR` refuses

- a DIR equal to or inside the data it reads (DATA, --val, --test): a run must never write into
  the user's dataset;
- a non-empty DIR that is not a transferkit run, unless `--overwrite`; even then, a file of the
  user's whose name we need is renamed to `NAME.orig` (never deleted or replaced);
- a DIR that already holds a run (its `last/` checkpoint) unless resuming or `--overwrite`; then
  only the files transferkit writes are removed.

`run.json` is checked when a run is resumed or loaded: a run of a newer format gets a clear
message instead of a stack trace about unknown keys.

One writer at a time: every command that writes into a run folder (train, train --resume, adapt)
holds an exclusive lock on `RUN/.lock` for as long as it runs (`writing_run`); a second writer is
refused with the first one's pid and command line. A fresh start that fails before its first real
checkpoint (a step or a head fit done) removes the files it wrote, so the same command can simply
be run again once the cause is fixed.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import yaml

try:
    import fcntl
except ImportError:  # Windows: no advisory locks here; the other checks still apply
    fcntl = None

from ..errors import ConfigError

RUN_FORMAT = 1
RUN_META = "run.json"
# what `train` writes in a run folder (files and folders); only these are ever removed by --overwrite
OUTPUTS = ("run.json", "config.yaml", "environment.json", "splits.csv", "source.json", "anchor.safetensors",
           "model.safetensors", "metrics.json", "history.csv", "report.html", "last", ".last.old",
           "sweep", "plots", "auto", "lp_model.safetensors", "logs", "adapt.yaml", "fingerprint.json",
           # a detect run's own files (transferkit/detection/run.py)
           "detector.safetensors", "detector.json", "split.json", "history.json", "test_predictions.json",
           "test_predictions.csv")
LOCK = ".lock"  # held (flock) by the one process writing the run, removed when it is done


def _version() -> str:
    from .. import __version__
    return __version__


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.relative_to(parent)
        return True
    except ValueError:
        return False


def _check_not_in_data(out: Path, cfg) -> None:
    for flag, data in (("DATA", cfg.data), ("--val", cfg.val), ("--test", cfg.test)):
        if not data:
            continue
        d = Path(data).expanduser().resolve()
        if out == d or (d.is_dir() and _inside(out, d)):
            raise ConfigError(f"--out {cfg.out} is {'the' if out == d else 'inside the'} {flag} folder "
                              f"{data}: a run must not write into the data it reads; choose an --out "
                              "outside it (e.g. runs/NAME)")


def is_run(path: Path) -> bool:
    """A folder transferkit claimed (run.json), or a run from before run.json existed."""
    return (path / RUN_META).is_file() or ((path / "config.yaml").is_file() and (path / "last").is_dir())


def claim_out_dir(cfg, *, overwrite: bool = False, log=print) -> Path:
    """Check that `cfg.out` may hold a new run (see the module docstring), then claim it: run.json."""
    check_out_dir(dataclasses.replace(cfg, overwrite=overwrite))
    out = Path(cfg.out).expanduser()
    if overwrite and out.is_dir():
        if is_run(out):
            if (out / "last").exists() or (out / ".last.old").exists():
                for name in OUTPUTS:  # the previous run's files; anything else in the folder stays
                    p = out / name
                    if p.is_dir() and not p.is_symlink():
                        shutil.rmtree(p)
                    elif p.exists() or p.is_symlink():
                        p.unlink()
                log(f"--overwrite: removed the previous run's files in {out}")
        else:
            for name in OUTPUTS:
                if (out / name).exists() or (out / name).is_symlink():
                    kept = free_name(out / f"{name}.orig")
                    (out / name).rename(kept)
                    log(f"--overwrite: kept your {out / name} as {kept.name}")
    out.mkdir(parents=True, exist_ok=True)
    write_run_meta(out)
    return out


def free_name(p: Path) -> Path:
    """`p`, or `p.1`, `p.2`, ... : the first name nothing is at."""
    n, cand = 1, p
    while cand.exists() or cand.is_symlink():
        cand = p.with_name(f"{p.name}.{n}")
        n += 1
    return cand


def write_run_meta(run: Path, **extra) -> dict:
    from .checkpoint import atomic_write_json
    meta = {"format": RUN_FORMAT, "transferkit": _version(),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **extra}
    atomic_write_json(run / RUN_META, meta)
    return meta


def read_run_meta(run: Path) -> dict:
    """run.json of `run`, checked against this transferkit; runs from before run.json are format 0."""
    p = Path(run) / RUN_META
    if not p.is_file():
        return {"format": 0, "transferkit": None}
    from .checkpoint import read_json
    meta = read_json(p)
    fmt = meta.get("format") if isinstance(meta, dict) else None
    if not isinstance(fmt, int):
        raise ConfigError(f"{p}: no run format version; this file was not written by transferkit")
    if fmt > RUN_FORMAT:
        raise ConfigError(f"{run} was written by transferkit {meta.get('transferkit', '?')} (run format {fmt}); "
                          f"this is transferkit {_version()}, which reads run formats up to {RUN_FORMAT}. "
                          "Upgrade transferkit (pip install -U transferkit) to use this run")
    return meta


def note_in_run_meta(run: Path, key: str, value) -> None:
    """Append `value` to the list `key` of run.json (e.g. inexact resumes)."""
    from .checkpoint import atomic_write_json
    meta = read_run_meta(run) if (Path(run) / RUN_META).is_file() else {"format": RUN_FORMAT,
                                                                        "transferkit": _version()}
    meta.setdefault(key, []).append(value)
    atomic_write_json(Path(run) / RUN_META, meta)


def check_out_dir(cfg) -> None:
    """The checks of `claim_out_dir` without touching the disk (run them before slow setup)."""
    if not cfg.out:
        raise ConfigError("train needs --out RUN_DIR (or 'out:' in the recipe)")
    out = Path(cfg.out).expanduser()
    _check_not_in_data(out.resolve(), cfg)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder; choose another --out")
    if cfg.overwrite or not out.is_dir():
        return
    if is_run(out) and ((out / "last").exists() or (out / ".last.old").exists()):
        raise FileExistsError(f"{out} already holds a run; pass --resume to continue it, --overwrite "
                              "to start it again, or choose another --out")
    # a temporary file of ours left by a kill before run.json was renamed into place is not the user's
    entries = sorted(p.name for p in out.iterdir() if not p.name.startswith(f".{RUN_META}.") and p.name != LOCK)
    if entries and not is_run(out):
        shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
        raise FileExistsError(f"--out {out} is not empty and is not a transferkit run (it holds {shown}); "
                              "choose an empty or new folder, or pass --overwrite to write beside those "
                              "files (files of the same name are kept as NAME.orig, nothing is deleted)")


# ------------------------------------------------------------------------------- one writer

class RunBusyError(FileExistsError):
    """Another process is writing the run folder."""


_held: dict[str, list] = {}  # run folder (resolved) -> [lock fd, depth]: re-entrant within a process


def _holder(fd: int) -> dict:
    for _ in range(20):  # the holder writes its name just after taking the lock
        try:
            raw = os.pread(fd, 4096, 0)
            if raw:
                return json.loads(raw.decode("utf-8"))
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    return {}


def _command_line() -> str:
    argv = list(sys.argv)
    if argv and Path(argv[0]).name in ("__main__.py", "transferkit"):
        argv[0] = "transferkit"
    text = " ".join(argv)
    return text if len(text) <= 300 else text[:297] + "..."


@contextmanager
def run_lock(run: Path, command: str | None = None):
    """Hold `run/.lock` exclusively while the block runs (creating `run` if needed); raise
    RunBusyError naming the other process if one holds it. Under torchrun only rank 0 locks."""
    run = Path(run).expanduser()
    key = str(run.resolve())
    if fcntl is None or os.environ.get("RANK", "0") != "0" or key in _held:
        if key in _held:
            _held[key][1] += 1
        try:
            yield
        finally:
            if key in _held:
                _held[key][1] -= 1
        return
    path = run / LOCK
    while True:
        run.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            other = _holder(fd)
            os.close(fd)
            who = (f"pid {other.get('pid', '?')}, since {other.get('since', '?')}: {other.get('command', '?')}"
                   if other else "pid unknown")
            raise RunBusyError(f"{run} is being written by another transferkit process ({who}); wait for it "
                               "to finish (or stop it), or choose another --out") from None
        try:  # the lock file may have been removed (a failed start cleaning up) while we waited
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    info = {"pid": os.getpid(), "command": command or _command_line(),
            "since": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode("utf-8"), 0)
    _held[key] = [fd, 1]
    try:
        yield
    finally:
        del _held[key]
        try:  # removed while still held: a process that opened it meanwhile sees it gone and tries again
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                os.unlink(path)
        except OSError:
            pass
        finally:
            os.close(fd)


def _identity(p: Path):
    st = p.lstat()
    return (st.st_ino, st.st_mtime_ns)


def _snapshot(run: Path) -> dict:
    """What of ours is in `run` now, and which version of it (so a failed start removes only what
    it created or replaced, never a file that was there before and was left alone)."""
    if not run.is_dir():
        return {}
    return {name: _identity(run / name) for name in OUTPUTS if (run / name).exists() or (run / name).is_symlink()}


def made_progress(run: Path) -> bool:
    """Whether `run` holds a checkpoint past the start: a step taken, a phase (head fit) done."""
    from .checkpoint import CheckpointError, read_json
    for d in (run / "last", run / ".last.old"):
        try:
            meta = read_json(d / "state.json")
        except CheckpointError:
            continue
        st = (meta.get("run_state") or meta.get("state") or {}) if isinstance(meta, dict) else {}
        if st.get("global_step", 0) or st.get("step", 0) or st.get("phase", 0) or st.get("done"):
            return True
    return False


def _undo_start(run: Path, before: dict) -> list[str]:
    removed = []
    if not run.is_dir():
        return removed
    for name in OUTPUTS:
        p = run / name
        if not (p.exists() or p.is_symlink()) or before.get(name) == _identity(p):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(name)
    for stale in run.glob(".*.tmp.*"):  # a checkpoint folder being built when the error came
        shutil.rmtree(stale, ignore_errors=True)
    return removed


@contextmanager
def writing_run(run: Path, *, fresh: bool, log=print, command: str | None = None):
    """The whole of a command that writes `run`: holds its lock and, for a fresh start that raises
    before its first real checkpoint, removes the files the start wrote (the folder too, if this
    command made it), so that running the command again after fixing the cause just works."""
    run = Path(run).expanduser()
    if not fresh and not run.is_dir():
        yield  # nothing to lock: the resume itself says there is no run
        return
    main = os.environ.get("RANK", "0") == "0"
    existed = run.exists()
    before = _snapshot(run) if fresh and main else {}
    try:
        with run_lock(run, command):
            try:
                yield
            except Exception:
                if fresh and main and not made_progress(run):
                    removed = _undo_start(run, before)
                    if removed:
                        log(f"the run stopped before its first step: removed what it wrote in {run} "
                            f"({', '.join(removed)}), so the same command can run again")
                raise
    finally:
        if fresh and main and not existed and run.is_dir() and not any(run.iterdir()):
            run.rmdir()


def run_task(run_dir: str | Path) -> str:
    """The task recorded in a run folder (run.json, else config.yaml); runs before dense tasks: classify."""
    run = Path(run_dir)
    for name in ("run.json", "config.yaml"):
        p = run / name
        if not p.is_file():
            continue
        try:
            if name == "run.json":
                task = json.loads(p.read_text(encoding="utf-8")).get("task")
            else:
                task = (yaml.safe_load(p.read_text(encoding="utf-8")) or {}).get("task")
        except (ValueError, AttributeError, OSError, yaml.YAMLError):
            continue  # the run's own loader reports a damaged file with its fix
        if task and task != "auto":
            return task
    return "classify"
