"""The pool of unlabelled target inputs behind `train --unlabelled` (images only for now).

`--unlabelled` names a folder of images (loose, or in class folders whose names are ignored), a CSV
with a `path` column (read by `data.inputs.read_inputs`), or the word `test`: the inputs of the run's
own test split, without their labels (transductive; recorded as such). Items that are also training
items are dropped from the pool, so no labelled image is counted twice; how many is said and
recorded. The labels of pool items are never read: every item gets the label "".
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .pictures import IMAGE_EXTS
from .splits import DataError, Example

TEST = "test"


def _config_error(msg: str):
    from ..errors import ConfigError
    return ConfigError(f"'unlabelled' (--unlabelled): {msg}")


def check_pool_path(value: str) -> None:
    """The checks that need no data read: the path exists and holds images (not text). Raises
    ConfigError naming the flag."""
    if value == TEST:
        return
    p = Path(value)
    if not p.exists():
        raise _config_error(f"{p} not found; give a folder of images, a CSV with a 'path' column, "
                            "or 'test' (the test split's inputs, transductive)")
    if p.is_dir():
        return
    if p.suffix.lower() != ".csv":
        raise _config_error(f"{p} is neither a folder of images nor a CSV with a 'path' column "
                            "(unlabelled text is not supported yet: images only)")
    with open(p, encoding="utf-8", errors="replace") as f:
        header = [h.strip().strip('"').lower() for h in f.readline().strip().split(",")]
    if "path" not in header:
        raise _config_error(f"{p} has no 'path' column (header: {','.join(header) or 'empty'}); unlabelled "
                            "text is not supported yet (images only): give a folder of images or a CSV with a 'path' column")


@dataclass
class Pool:
    """Unlabelled items and what to record about them (metrics.json `unlabelled`)."""

    items: list[Example]
    record: dict = field(default_factory=dict)


def _key(path: str) -> str:
    return os.path.realpath(path)


def read_pool(value: str, task, log=print) -> Pool:
    """The unlabelled pool for `task` (a data.Task): from a folder/CSV, or the test split's inputs
    (`value == 'test'`); training items removed, labels dropped, sorted by path (so a resumed run
    sees the same pool in the same order)."""
    if task.modality != "image":
        raise _config_error("unlabelled text is not supported yet (images only): --unlabelled works with image data")
    if value == TEST:
        items, skipped = list(task.test), []
        if not items:
            raise _config_error("'test' means the test split's inputs, but this run has no test split "
                                "(give --test, or a test fraction above 0)")
    else:
        check_pool_path(value)
        from .inputs import read_inputs
        _, items, skipped = read_inputs(value)
    not_images = [e for e in items if Path(e.x).suffix.lower() not in IMAGE_EXTS]
    items = [e for e in items if Path(e.x).suffix.lower() in IMAGE_EXTS]
    train = {_key(e.x) for e in task.train}
    seen, kept, dropped = set(), [], 0
    for e in items:
        k = _key(e.x)
        if k in train:
            dropped += 1
        elif k not in seen:
            seen.add(k)
            kept.append(Example(e.x, "", e.ref))
    kept.sort(key=lambda e: e.x)
    if not kept:
        raise DataError(f"--unlabelled {value}: no images left in the pool"
                        + (f" ({dropped} were training items, which are never used unlabelled)" if dropped else "")
                        + (f" ({len(not_images)} are not RGB image files)" if not_images else ""))
    if dropped:
        log(f"unlabelled pool: {dropped} training item(s) dropped from it (they are labelled)")
    record = {"source": value, "transductive": value == TEST, "count": len(kept),
              "dropped_training_items": dropped, "skipped": len(skipped) + len(not_images)}
    return Pool(kept, record)
