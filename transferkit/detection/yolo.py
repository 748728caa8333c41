"""YOLO: `DATA/images/**/<name>.<ext>`, `DATA/labels/**/<name>.txt`, `DATA/data.yaml` with `names`.

A label line is `class cx cy w h`, centre and size normalised to 0..1 by the image's width and
height. As in YOLO itself, an image with no label file or an empty one shows no object (a
background image); they are counted in the notes. `names` is a list, or a mapping index -> name
with the indices 0..n-1.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from ..data.pictures import IMAGE_EXTS
from ..data.splits import DataError
from .formats import DetectionItem, DetectionSet, check_box, image_size


def read_names(root: Path) -> list[str]:
    cfg = root / "data.yaml"
    if not cfg.is_file():
        raise DataError(f"{cfg} not found; a YOLO set needs it with the class names, e.g. "
                        "'names: [cat, dog]'")
    try:
        doc = yaml.safe_load(cfg.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise DataError(f"{cfg} is not valid YAML ({str(e).splitlines()[0][:120]}); fix it") from e
    names = doc.get("names") if isinstance(doc, dict) else None
    if isinstance(names, dict):
        keys = sorted(names)
        if keys != list(range(len(keys))):
            raise DataError(f"{cfg}: 'names' keys are {keys}; they must be the class indices 0..{len(keys) - 1}")
        names = [names[k] for k in keys]
    if not isinstance(names, list) or not names:
        raise DataError(f"{cfg}: no 'names' list; write the class names, e.g. 'names: [cat, dog]'")
    names = [str(n) for n in names]
    if len(set(names)) != len(names):
        raise DataError(f"{cfg}: class names repeat ({', '.join(names)}); give each class its own name")
    return names


def read_yolo(root: Path) -> DetectionSet:
    root = Path(root)
    classes = read_names(root)
    img_dir, lab_dir = root / "images", root / "labels"
    if not img_dir.is_dir():
        raise DataError(f"{img_dir} not found; a YOLO set keeps its images in DATA/images/")
    files = sorted(p for p in img_dir.rglob("*") if p.is_file() and not p.name.startswith(".")
                   and p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise DataError(f"{img_dir} holds no images ({', '.join(sorted(IMAGE_EXTS))})")
    items, notes, background = [], [], 0
    for f in files:
        rel = f.relative_to(img_dir)
        size = image_size(f, str(f))
        if isinstance(size, str):
            notes.append(f"{f}: {size}; skipped")
            continue
        w, h = size
        item = DetectionItem(str(f), w, h, [], [], image_id=len(items) + 1)
        label_file = lab_dir / rel.with_suffix(".txt")
        if label_file.is_file():
            _read_label_file(label_file, item, len(classes), root / "data.yaml")
        if not item.boxes:
            background += 1
        items.append(item)
    if background:
        notes.append(f"{background} image(s) with no label file or an empty one: background, no objects")
    orphans = [p for p in lab_dir.rglob("*.txt")
               if not any((img_dir / p.relative_to(lab_dir)).with_suffix(e).exists()
                          for e in IMAGE_EXTS | {e.upper() for e in IMAGE_EXTS})] if lab_dir.is_dir() else []
    if orphans:
        notes.append(f"{len(orphans)} label file(s) with no image, e.g. {orphans[0]}; not used")
    return DetectionSet(items, classes, "yolo", notes=notes)


def _read_label_file(file: Path, item: DetectionItem, n_classes: int, cfg: Path) -> None:
    fix = f"fix or delete line in {file}"
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{file} is not UTF-8 text ({e.reason}); a label file holds lines "
                        "'class cx cy w h'") from e
    for n, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        where = f"{file}:{n}"
        if len(parts) != 5:
            raise DataError(f"{where}: {len(parts)} values ({line.strip()[:60]!r}); a line is "
                            "'class cx cy w h' (polygon segments are not read)")
        try:
            cls = int(parts[0])
            cx, cy, bw, bh = (float(v) for v in parts[1:])
        except ValueError as e:
            raise DataError(f"{where}: {line.strip()[:60]!r} is not 'class cx cy w h' with an integer "
                            "class and four numbers") from e
        if not 0 <= cls < n_classes:
            raise DataError(f"{where}: class index {cls} but {cfg} names {n_classes} classes "
                            f"(0..{n_classes - 1}); add the class to 'names' or fix the index")
        if max(cx, cy, bw, bh) > 1.5:
            raise DataError(f"{where}: values {parts[1:]} look like pixels; YOLO boxes are normalised "
                            "to 0..1 by the image size (divide cx, w by the width and cy, h by the height)")
        x1, x2 = (cx - bw / 2) * item.width, (cx + bw / 2) * item.width
        y1, y2 = (cy - bh / 2) * item.height, (cy + bh / 2) * item.height
        item.boxes.append(check_box([x1, y1, x2, y2], item.width, item.height, where, fix))
        item.labels.append(cls)


def write_yolo(ds: DetectionSet, root: Path) -> None:
    """Write `root/labels/<name>.txt` and `root/data.yaml` for images already under `root/images/`."""
    root = Path(root)
    (root / "data.yaml").write_text(yaml.safe_dump({"names": list(ds.classes)}), encoding="utf-8")
    for it in ds.items:
        rel = Path(it.image).relative_to(root / "images").with_suffix(".txt")
        out = root / "labels" / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        lines = [f"{c} {(x1 + x2) / 2 / it.width:.9f} {(y1 + y2) / 2 / it.height:.9f} "
                 f"{(x2 - x1) / it.width:.9f} {(y2 - y1) / it.height:.9f}"
                 for (x1, y1, x2, y2), c in zip(it.boxes, it.labels)]
        out.write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")
