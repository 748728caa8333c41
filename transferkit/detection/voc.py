"""Pascal VOC: `DATA/Annotations/*.xml` with `DATA/JPEGImages/<filename>`.

VOC pixel coordinates are 1-based and inclusive, so `<xmin>1</xmin><xmax>10</xmax>` covers 10
pixels: the box in transferkit's 0-based, end-exclusive form is `[xmin - 1, ymin - 1, xmax, ymax]`
(the reading of the VOC devkit and of mmdetection). Classes are the object names found, sorted,
unless `DATA/labels.txt` lists them (one a line) to fix their order. `difficult` objects are kept.

An annotation file with a DTD or entities (`<!DOCTYPE`, `<!ENTITY`) is refused: XML entities can
expand to gigabytes ("billion laughs") or read local files; VOC files never need them.
`defusedxml` parses when it is installed; otherwise the standard parser, after that check.
"""

from __future__ import annotations

from pathlib import Path
from xml.etree import ElementTree

from ..data.splits import DataError
from .formats import DetectionItem, DetectionSet, check_box, image_size

try:  # pragma: no cover - depends on what is installed
    from defusedxml import ElementTree as _SafeET
except ImportError:  # pragma: no cover
    _SafeET = None


def parse_xml(file: Path) -> ElementTree.Element:
    data = file.read_bytes()
    if not data.strip():
        raise DataError(f"{file} is empty; a VOC annotation holds <annotation> with <filename>, "
                        "<size> and <object>s; delete the file or export it again")
    head = data.upper()
    if b"<!DOCTYPE" in head or b"<!ENTITY" in head:
        raise DataError(f"{file} declares a DTD or entities (<!DOCTYPE/<!ENTITY), which are refused "
                        "(they can expand without bound or read local files); remove the declaration")
    try:
        return (_SafeET.fromstring(data) if _SafeET is not None else ElementTree.fromstring(data))
    except Exception as e:  # noqa: BLE001 - ParseError, or defusedxml's refusals
        raise DataError(f"{file} is not valid XML ({type(e).__name__}: {str(e)[:120]}); fix or "
                        "export it again") from e


def read_voc(root: Path) -> DetectionSet:
    root = Path(root)
    ann_dir, img_dir = root / "Annotations", root / "JPEGImages"
    files = sorted(ann_dir.glob("*.xml"))
    if not files:
        raise DataError(f"{ann_dir} holds no .xml annotation files")
    parsed, notes = [], []
    for f in files:
        doc = parse_xml(f)
        name = (doc.findtext("filename") or "").strip() or f.with_suffix(".jpg").name
        image = img_dir / name
        size = image_size(image, str(f))
        if isinstance(size, str):
            notes.append(f"{image}: {size}; skipped with {f.name}")
            continue
        w, h = size
        _check_declared_size(doc, w, h, f)
        objs = []
        for n, obj in enumerate(doc.findall("object"), start=1):
            cls = (obj.findtext("name") or "").strip()
            where = f"{f}: object {n} ({cls or 'no name'})"
            if not cls:
                raise DataError(f"{where} has no <name>; name its class or delete the object")
            bb = obj.find("bndbox")
            try:
                x1, y1, x2, y2 = (float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
            except (AttributeError, TypeError, ValueError) as e:
                raise DataError(f"{where}: <bndbox> needs numeric xmin, ymin, xmax, ymax") from e
            box = check_box([x1 - 1, y1 - 1, x2, y2], w, h, where, f"fix or delete the object in {f}")
            objs.append((box, cls))
        parsed.append((str(image), w, h, objs))
    classes = _classes(root, parsed)
    index = {c: i for i, c in enumerate(classes)}
    items = []
    for image, w, h, objs in parsed:
        unknown = [c for _, c in objs if c not in index]
        if unknown:
            raise DataError(f"{image}: object class '{unknown[0]}' is not in {root / 'labels.txt'}; add it there")
        items.append(DetectionItem(image, w, h, [b for b, _ in objs], [index[c] for _, c in objs],
                                   image_id=len(items) + 1))
    return DetectionSet(items, classes, "voc", notes=notes)


def _check_declared_size(doc, w: int, h: int, f: Path) -> None:
    size = doc.find("size")
    if size is None:
        return
    try:
        dw, dh = int(float(size.findtext("width"))), int(float(size.findtext("height")))
    except (TypeError, ValueError):
        return
    if (dw, dh) != (w, h) and (dw, dh) != (0, 0):
        raise DataError(f"{f}: <size> says {dw}x{dh} but the image is {w}x{h}; the boxes were drawn on "
                        "another size of it: fix <size> and the boxes, or use the image they were drawn on")


def _classes(root: Path, parsed) -> list[str]:
    listed = root / "labels.txt"
    if listed.is_file():
        names = [ln.strip() for ln in listed.read_text(encoding="utf-8").splitlines() if ln.strip()]
        if names:
            return names
    return sorted({c for *_, objs in parsed for _, c in objs})


def write_voc(ds: DetectionSet, root: Path) -> None:
    """Write `root/Annotations/<stem>.xml` for images already under `root/JPEGImages/`, and
    `root/labels.txt` so that the classes keep their order."""
    ann_dir = Path(root) / "Annotations"
    ann_dir.mkdir(parents=True, exist_ok=True)
    (Path(root) / "labels.txt").write_text("".join(c + "\n" for c in ds.classes), encoding="utf-8")
    for it in ds.items:
        doc = ElementTree.Element("annotation")
        ElementTree.SubElement(doc, "filename").text = Path(it.image).name
        size = ElementTree.SubElement(doc, "size")
        for k, v in (("width", it.width), ("height", it.height), ("depth", 3)):
            ElementTree.SubElement(size, k).text = str(v)
        for (x1, y1, x2, y2), c in zip(it.boxes, it.labels):
            obj = ElementTree.SubElement(doc, "object")
            ElementTree.SubElement(obj, "name").text = ds.classes[c]
            ElementTree.SubElement(obj, "difficult").text = "0"
            bb = ElementTree.SubElement(obj, "bndbox")
            for k, v in (("xmin", x1 + 1), ("ymin", y1 + 1), ("xmax", x2), ("ymax", y2)):
                ElementTree.SubElement(bb, k).text = format(v, ".10g")
        ElementTree.ElementTree(doc).write(ann_dir / (Path(it.image).stem + ".xml"), encoding="utf-8")
