"""Output folders of `export --out` and `evaluate --out`: the rule of train's run folder
(store/runfolder.py) for folders that hold one result.

- a new or empty folder is simply written;
- a folder the same command wrote before (recognised by its manifest: `export.json`,
  `evaluation.json`) is refused unless `--overwrite`; then only the files that command wrote are
  replaced;
- any other non-empty folder is refused (some of its files are named) unless `--overwrite`; then a
  file of the user's whose name we need is renamed to `NAME.orig` (never deleted or replaced);
- a training run's folder is refused even with `--overwrite`: its metrics.json and report.html
  belong to the run.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .runfolder import free_name

STAGING = ".transferkit-staging-"  # a folder of ours inside OUT while an export is written


@dataclass
class OutFolder:
    path: Path
    state: str  # "new" (absent or empty), "ours" (this command wrote it before), "foreign"
    what: str


def _listing(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if not p.name.startswith(STAGING)
                  and not (p.name.startswith(".") and p.name.endswith(".tmp")))


def check_out_folder(out: str | Path, *, is_ours: Callable[[Path], bool], what: str, sub: str,
                     overwrite: bool = False, flag: str = "--out") -> OutFolder:
    """Whether `out` may receive `what` (see the module docstring); nothing is written. `sub`: a
    folder name to suggest inside a training run."""
    d = Path(out).expanduser()
    if d.exists() and not d.is_dir():
        raise FileExistsError(f"{flag} {d} is a file, not a folder; choose another {flag}")
    entries = _listing(d) if d.is_dir() else []
    if not entries:
        return OutFolder(d, "new", what)
    from .runfolder import is_run
    if is_run(d):
        raise FileExistsError(f"{flag} {d} is a transferkit training run; its files belong to the run. "
                              f"choose another {flag} (e.g. {d / sub})")
    if is_ours(d):
        if not overwrite:
            raise FileExistsError(f"{flag} {d} already holds {what} written by transferkit; pass --overwrite "
                                  f"to replace it, or choose another {flag}")
        return OutFolder(d, "ours", what)
    if not overwrite:
        shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
        raise FileExistsError(f"{flag} {d} is not empty and transferkit did not write it (it holds {shown}); "
                              "choose an empty or new folder, or pass --overwrite to write beside those "
                              "files (files of the same name are kept as NAME.orig, nothing is deleted)")
    return OutFolder(d, "foreign", what)


def make_room(folder: OutFolder, names: list[str], ours: set[str], log=print) -> None:
    """Before writing `names` into the folder: an entry that a previous run of this command wrote
    (`ours`, from its manifest) is removed; anything else of the same name is kept as NAME.orig."""
    for name in names:
        p = folder.path / name
        if not (p.exists() or p.is_symlink()):
            continue
        if folder.state == "ours" and name in ours:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
        else:
            kept = free_name(folder.path / f"{name}.orig")
            p.rename(kept)
            log(f"--overwrite: kept your {p} as {kept.name}")
