"""COCO JSON: `DATA/annotations.json` beside `DATA/images/` (or an explicit annotations file).

`file_name` is read relative to `DATA/images/` first, then to the folder of the JSON file. Boxes
are COCO's `[x, y, width, height]` in pixels. Category ids may be any integers: classes are the
categories in id order, and the ids are kept (`DetectionSet.category_ids`) so that predictions
written back as COCO results use the file's own ids. `iscrowd` annotations are left out of
training and evaluation (noted), as COCO's own evaluation ignores them.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..data.splits import DataError
from .formats import DetectionItem, DetectionSet, check_box, image_size


def read_coco(path: Path, annotations: str | Path | None = None) -> DetectionSet:
    path = Path(path)
    ann_file = Path(annotations) if annotations is not None else (
        path if path.is_file() else path / "annotations.json")
    root = path.parent if path.is_file() else path
    if not ann_file.is_file():
        raise DataError(f"COCO annotations {ann_file} not found; pass the file explicitly or put it "
                        f"at {root / 'annotations.json'}")
    doc = _load_json(ann_file)
    fix = f"fix or remove it in {ann_file}"
    cats = doc.get("categories")
    if not isinstance(cats, list) or not cats:
        raise DataError(f"{ann_file}: no 'categories' list; COCO needs "
                        "\"categories\": [{\"id\": 1, \"name\": \"...\"}, ...]")
    cats = sorted(cats, key=lambda c: _int(c, "id", ann_file, "category"))
    cat_ids = [int(c["id"]) for c in cats]
    if len(set(cat_ids)) != len(cat_ids):
        raise DataError(f"{ann_file}: category ids repeat ({cat_ids}); give each category its own id")
    classes = [str(c.get("name", c["id"])) for c in cats]
    index = {cid: i for i, cid in enumerate(cat_ids)}

    images = doc.get("images")
    if not isinstance(images, list) or not images:
        raise DataError(f"{ann_file}: no 'images' list (or it is empty); nothing to train on")
    by_id: dict[int, DetectionItem] = {}
    notes: list[str] = []
    for n, im in enumerate(images):
        iid = _int(im, "id", ann_file, f"images[{n}]")
        if iid in by_id:
            raise DataError(f"{ann_file}: images[{n}] repeats image id {iid}; give each image its own id")
        name = im.get("file_name")
        if not isinstance(name, str) or not name:
            raise DataError(f"{ann_file}: images[{n}] (id {iid}) has no file_name; {fix}")
        where = f"{ann_file}: images[{n}] (id {iid}, {name})"
        file = _find_image(name, root, ann_file)
        size = image_size(file, where)
        if isinstance(size, str):
            notes.append(f"{file}: {size}; skipped with its boxes")
            by_id[iid] = None  # type: ignore[assignment]
            continue
        w, h = size
        if ("width" in im and int(im["width"]) != w) or ("height" in im and int(im["height"]) != h):
            raise DataError(f"{where}: the JSON says {im.get('width')}x{im.get('height')} but the image is "
                            f"{w}x{h}; the boxes were drawn on another size of it: fix width/height "
                            "and the boxes, or use the image they were drawn on")
        by_id[iid] = DetectionItem(str(file), w, h, [], [], image_id=iid)

    for n, a in enumerate(doc.get("annotations") or []):
        iid = a.get("image_id")
        if iid not in by_id:
            raise DataError(f"{ann_file}: annotations[{n}] (id {a.get('id')}) refers to image_id {iid}, "
                            "which no entry of 'images' has; add the image or remove the annotation")
        cid = a.get("category_id")
        if cid not in index:
            raise DataError(f"{ann_file}: annotations[{n}] (id {a.get('id')}) has category_id {cid}, "
                            f"not one of the categories ({', '.join(map(str, cat_ids))}); add the "
                            "category or fix the id")
        item = by_id[iid]
        if item is None:
            continue
        if a.get("iscrowd"):
            notes.append(f"{ann_file}: annotations[{n}] is a crowd region (iscrowd); not used")
            continue
        bbox = a.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4):
            raise DataError(f"{ann_file}: annotations[{n}] (id {a.get('id')}) bbox {bbox!r} is not "
                            "[x, y, width, height]; " + fix)
        x, y, bw, bh = (float(v) for v in bbox)
        item.boxes.append(check_box([x, y, x + bw, y + bh], item.width, item.height,
                                    f"{ann_file}: annotations[{n}] (id {a.get('id')}, image {Path(item.image).name})",
                                    fix))
        item.labels.append(index[cid])
    items = [it for it in by_id.values() if it is not None]
    return DetectionSet(items, classes, "coco", category_ids=cat_ids, notes=notes)


def _load_json(file: Path) -> dict:
    text = file.read_bytes()
    if not text.strip():
        raise DataError(f"{file} is empty; it should hold COCO JSON with images, annotations and categories")
    try:
        doc = json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{file} is not valid JSON ({str(e)[:120]}); fix or re-export it") from e
    if not isinstance(doc, dict):
        raise DataError(f"{file}: top level is a {type(doc).__name__}, COCO needs an object "
                        "with images, annotations and categories")
    return doc


def _int(obj, key: str, file: Path, what: str) -> int:
    v = obj.get(key) if isinstance(obj, dict) else None
    if isinstance(v, bool) or not isinstance(v, int):
        raise DataError(f"{file}: {what} has {key} {v!r}; it must be an integer")
    return v


def _find_image(name: str, root: Path, ann_file: Path) -> Path:
    rel = Path(name)
    if rel.is_absolute():
        return rel
    for base in (root / "images", ann_file.parent, root):
        if (base / rel).exists():
            return base / rel
    return root / "images" / rel


# ------------------------------------------------------------------------------------- writing

def coco_document(ds: DetectionSet, root: Path | None = None) -> dict:
    """The set as a COCO ground-truth document (file names relative to `root` when given), the
    form `faster_coco_eval`/`pycocotools` `COCO()` reads and `loadRes` pairs results with."""
    images, anns = [], []
    for it in ds.items:
        name = str(Path(it.image).relative_to(root)) if root is not None else it.image
        images.append({"id": it.image_id, "file_name": name, "width": it.width, "height": it.height})
        for (x1, y1, x2, y2), label in zip(it.boxes, it.labels):
            anns.append({"id": len(anns) + 1, "image_id": it.image_id, "category_id": ds.category_ids[label],
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    cats = [{"id": cid, "name": name} for cid, name in zip(ds.category_ids, ds.classes)]
    return {"images": images, "annotations": anns, "categories": cats}


def write_coco(ds: DetectionSet, root: Path) -> Path:
    """Write `root/annotations.json` for a set whose images already sit under `root/images/`."""
    out = Path(root) / "annotations.json"
    out.write_text(json.dumps(coco_document(ds, Path(root) / "images"), indent=1), encoding="utf-8")
    return out
