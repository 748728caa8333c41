"""The folder an export is written to (`export --out`), shared by every task's exporter.

The files are written into a staging folder inside OUT, checked, and only then moved into place
(the rule for OUT itself is store/outfolder.py's). `OUT/export.json` names the entries the export
`written` into OUT: what a later `--overwrite` may replace.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from ..store.checkpoint import follow_umask
from ..store.outfolder import STAGING, OutFolder, check_out_folder, make_room

FORMATS = ("timm", "hf", "onnx", "torchscript")
MANIFEST = "export.json"


def is_export(out: Path) -> bool:
    """OUT holds an export.json that `export` wrote (any version: same keys)."""
    try:
        m = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(m, dict) and m.get("format") in FORMATS and isinstance(m.get("files"), list) and "parity" in m


def written_before(out: Path) -> set[str]:
    """The entries of OUT that the previous export wrote (older manifests: the plain names of `files`)."""
    m = json.loads((out / MANIFEST).read_text())
    if isinstance(m.get("written"), list):
        return {str(n) for n in m["written"]}
    names = {str(n).rstrip("/") for n in m["files"]}
    return {n for n in names if n and "/" not in n and " " not in n}


def check_export_out(out: str | Path, overwrite: bool = False) -> OutFolder:
    """Refuse, before any work, an OUT that export may not write (store/outfolder.py)."""
    return check_out_folder(out, is_ours=is_export, what="an export", sub="export", overwrite=overwrite)


def write_export(folder: OutFolder, write: Callable[[Path], tuple[dict, object]], log=print) -> dict:
    """`write(stage)` writes the export into a staging folder and checks it, returning (manifest,
    parity report: `.ok`, `.line()`, `.to_dict()`); its files are then moved into OUT, export.json is
    written with the parity numbers and the entries `written`, and a failed check is raised as a
    ParityError (the manifest records `ok: false`, the command exits non-zero)."""
    from .parity import ParityError
    out = folder.path
    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=STAGING, dir=out))
    try:
        manifest, report = write(stage)
        written = sorted(p.name for p in stage.iterdir())
        before = written_before(out) | {MANIFEST} if folder.state == "ours" else set()
        make_room(folder, sorted(set(written) | before | {MANIFEST}), before, log)
        for name in written:
            follow_umask(stage / name)  # save_file / save_pretrained / mkdtemp make them private
            (stage / name).rename(out / name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    manifest = {**manifest, "parity": report.to_dict(), "written": written}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    log(f"wrote {manifest['format']} export to {out}: {', '.join(manifest['files'])}")
    log(report.line())
    if not report.ok:
        raise ParityError(f"{report.line()}; the export in {out} does not compute what the run does")
    return manifest
