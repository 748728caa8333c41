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
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import shutil
from pathlib import Path

from ..config import ConfigError, TrainConfig

RUN_FORMAT = 1
RUN_META = "run.json"
# what `train` writes in a run folder (files and folders); only these are ever removed by --overwrite
OUTPUTS = ("run.json", "config.yaml", "environment.json", "splits.csv", "source.json", "anchor.safetensors",
           "model.safetensors", "metrics.json", "history.csv", "report.html", "last", ".last.old",
           "sweep", "plots", "auto", "lp_model.safetensors", "logs")


def _version() -> str:
    from .. import __version__
    return __version__


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.relative_to(parent)
        return True
    except ValueError:
        return False


def _check_not_in_data(out: Path, cfg: TrainConfig) -> None:
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


def claim_out_dir(cfg: TrainConfig, *, overwrite: bool = False, log=print) -> Path:
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
                    kept = _free_name(out / f"{name}.orig")
                    (out / name).rename(kept)
                    log(f"--overwrite: kept your {out / name} as {kept.name}")
    out.mkdir(parents=True, exist_ok=True)
    write_run_meta(out)
    return out


def _free_name(p: Path) -> Path:
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


def check_out_dir(cfg: TrainConfig) -> None:
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
    entries = sorted(p.name for p in out.iterdir() if not p.name.startswith(f".{RUN_META}."))
    if entries and not is_run(out):
        shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
        raise FileExistsError(f"--out {out} is not empty and is not a transferkit run (it holds {shown}); "
                              "choose an empty or new folder, or pass --overwrite to write beside those "
                              "files (files of the same name are kept as NAME.orig, nothing is deleted)")
