"""What a run was trained on, item by item, so that `--resume` can tell whether it still is.

At start the run writes `fingerprint.json`: every item of every split with its label and, for a file,
its size, modification time and (up to HASH_LIMIT bytes) the sha256 of its contents; for a text, the
sha256 of the text. A resume reads DATA again and compares: items added, removed or edited, and
classes added or removed, are named (a few of each, with counts) and the resume stops, because the
run would no longer be what `splits.csv` says. `--resume-inexact` continues on the data as it is now
and records that in run.json; a changed class list cannot continue (the head has one output per
class). A run from before fingerprints is compared on its splits.csv (items and labels only).
"""

from __future__ import annotations

import csv
import datetime as _dt
import hashlib
from pathlib import Path

from ..errors import DataError
from . import checkpoint as ck

FINGERPRINT = "fingerprint.json"
HASH_LIMIT = 8 << 20   # files up to this size are compared by content; larger ones by size and time
SHOWN = 3              # file names shown per kind of change


def _item(ex, modality: str) -> dict:
    rec = {"label": ex.label}
    if modality == "text":
        rec["sha256"] = hashlib.sha256(ex.x.encode("utf-8", "surrogatepass")).hexdigest()
        return rec
    try:
        st = Path(ex.x).stat()
    except OSError:
        return rec
    rec.update(size=st.st_size, mtime_ns=st.st_mtime_ns)
    if st.st_size <= HASH_LIMIT:
        rec["sha256"] = ck.data_file_digest(ex.x)
    return rec


def _key(ex) -> str:
    return ex.ref or ex.x


def fingerprint(task) -> dict:
    """{"classes", "splits": {split: {item: record}}} of a task (see the module docstring)."""
    return {"classes": list(task.classes),
            "splits": {name: {_key(ex): _item(ex, task.modality) for ex in part}
                       for name, part in (("train", task.train), ("val", task.val), ("test", task.test))}}


def write_fingerprint(run: Path, task) -> None:
    ck.atomic_write_json(Path(run) / FINGERPRINT, fingerprint(task))


def _recorded(run: Path) -> dict | None:
    p = Path(run) / FINGERPRINT
    if p.is_file():
        return ck.read_json(p)
    splits = Path(run) / "splits.csv"
    if not splits.is_file():
        return None
    rec: dict = {"splits": {"train": {}, "val": {}, "test": {}}}
    with open(splits, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            rec["splits"].setdefault(row["split"], {})[row["item"]] = {"label": row["label"]}
    rec["classes"] = sorted({r["label"] for part in rec["splits"].values() for r in part.values()})
    return rec


def _edited(old: dict, new: dict) -> bool:
    if old.get("label") != new.get("label"):
        return True
    if old.get("sha256") and new.get("sha256"):
        return old["sha256"] != new["sha256"]  # content decides: a copy with new times is the same file
    return any(k in old and k in new and old[k] != new[k] for k in ("size", "mtime_ns"))


def changes(recorded: dict, now: dict) -> dict[str, list[str]]:
    """What differs between two fingerprints: added / removed / edited items, moved (between splits),
    classes added / removed."""
    def flat(fp):
        return {k: (split, r) for split, part in fp["splits"].items() for k, r in part.items()}
    old, new = flat(recorded), flat(now)
    return {"added": sorted(set(new) - set(old)), "removed": sorted(set(old) - set(new)),
            "edited": sorted(k for k in set(old) & set(new) if _edited(old[k][1], new[k][1])),
            "moved": sorted(k for k in set(old) & set(new) if old[k][0] != new[k][0]),
            "classes added": sorted(set(now["classes"]) - set(recorded["classes"])),
            "classes removed": sorted(set(recorded["classes"]) - set(now["classes"]))}


def _say(kind: str, names: list[str]) -> str:
    shown = ", ".join(names[:SHOWN]) + (f", ... ({len(names) - SHOWN} more)" if len(names) > SHOWN else "")
    if kind.startswith("classes"):
        return f"{kind}: {shown}"
    return f"{len(names)} item(s) {kind} ({shown})"


def check_data_unchanged(run: Path, cfg, task, log=print) -> bool:
    """Stop a resume whose data changed since the run started (see the module docstring). True when
    it changed and `--resume-inexact` continues anyway (the fingerprint is then rewritten)."""
    recorded = _recorded(run)
    if recorded is None:
        return False
    found = changes(recorded, fingerprint(task))
    kinds = [k for k in ("classes added", "classes removed", "added", "removed", "edited") if found[k]]
    if not kinds:
        return False
    what = "; ".join(_say(k, found[k]) for k in kinds)
    if found["moved"] and (found["added"] or found["removed"]):
        what += f"; so {len(found['moved'])} item(s) moved between train/val/test"
    where = cfg.data + "".join(f", {f} {v}" for f, v in (("--val", cfg.val), ("--test", cfg.test)) if v)
    head = f"cannot resume {run}: its data changed since the run started ({where}): {what}"
    if found["classes added"] or found["classes removed"]:
        raise DataError(f"{head}. The model has one output per class of the start, so the run cannot "
                        f"continue; restore the data, or start a new run (another --out, or --overwrite)")
    if not cfg.resume_inexact:
        raise DataError(f"{head}. The run would no longer be what its splits.csv says. Restore the data, "
                        "pass --resume-inexact to continue on the data as it is now (recorded in run.json), "
                        "or start a new run (another --out, or --overwrite)")
    log(f"warning: {head} (--resume-inexact: continuing on the data as it is now)")
    from .runfolder import note_in_run_meta
    note_in_run_meta(run, "inexact_resumes", {
        "reason": "data changed", **{k: len(found[k]) for k in ("added", "removed", "edited", "moved")},
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})
    write_fingerprint(run, task)  # the next resume compares with the data it now trains on
    return True
