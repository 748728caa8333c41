"""Which detection format a folder or file holds, and reading it into a `DetectionSet` by the
format's own reader (coco.py, yolo.py, voc.py); apart from formats.py, which the readers build on."""

from __future__ import annotations

from pathlib import Path

from ..data.splits import DataError
from . import coco, voc, yolo
from .formats import FORMATS, DetectionSet


def looks_like(path: str | Path) -> str | None:
    """Which detection format a path holds: 'coco' (a .json file, or DATA/annotations.json),
    'yolo' (DATA/data.yaml or DATA/labels/), 'voc' (DATA/Annotations/), or None."""
    p = Path(path)
    if p.is_file():
        return "coco" if p.suffix.lower() == ".json" else None
    if not p.is_dir():
        return None
    if (p / "annotations.json").is_file():
        return "coco"
    if (p / "data.yaml").is_file() or ((p / "labels").is_dir() and (p / "images").is_dir()):
        return "yolo"
    if (p / "Annotations").is_dir():
        return "voc"
    return None


def read_detection(path: str | Path, annotations: str | Path | None = None,
                   format: str | None = None) -> DetectionSet:
    """Read a detection data set in any of the three formats (found by `looks_like` unless `format`
    is given). `annotations` names a COCO JSON file explicitly (images then sit in `path`, or in
    `path/images/`)."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"data not found: {p}")
    if annotations is not None:
        format = format or "coco"
    fmt = format or looks_like(p)
    if fmt is None:
        raise DataError(f"{p}: not a detection data set I can read; expected COCO "
                        "(DATA/annotations.json beside DATA/images/), YOLO (DATA/data.yaml, DATA/images/, "
                        "DATA/labels/*.txt) or Pascal VOC (DATA/Annotations/*.xml, DATA/JPEGImages/)")
    if fmt not in FORMATS:
        raise DataError(f"unknown detection format '{fmt}'; use one of {', '.join(FORMATS)}")
    if fmt == "coco":
        ds = coco.read_coco(p, annotations)
    elif fmt == "yolo":
        ds = yolo.read_yolo(p)
    else:
        ds = voc.read_voc(p)
    if not ds.items:
        raise DataError(f"{p}: no usable images" + (f" ({len(ds.notes)} skipped: {ds.notes[0]} ...)"
                                                      if ds.notes else ""))
    if ds.num_boxes == 0:
        raise DataError(f"{p}: {len(ds.items)} images but not one box: nothing to learn to detect; "
                        "check that the annotations belong to these images")
    return ds
