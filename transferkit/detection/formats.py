"""Detection data: the one in-memory form that COCO JSON, YOLO and Pascal VOC folders are read into.

Every reader (coco.py, yolo.py, voc.py) returns a `DetectionSet`: items (image path, its size as a
person sees it, boxes `[x1, y1, x2, y2]` in pixels as floats, class indices) and class names.

The box policy, the same in all three formats:
- a box that crosses the image border by at most `EDGE_TOLERANCE` (1 pixel: rounding in annotation
  tools) is clipped to the image, silently;
- a box further outside is an error, not clipped: it nearly always means a wrong convention
  (pixels read as normalised, x/y or width/height swapped, the annotation made on another size of
  the image), and clipping would hide it behind a quietly worse model;
- a box of zero or negative width or height (after clipping) is an error.
Errors are `DataError`s that name the file, the item or line, and the fix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from ..data.images import check_image
from ..data.splits import DataError

EDGE_TOLERANCE = 1.0
FORMATS = ("coco", "yolo", "voc")


@dataclass
class DetectionItem:
    image: str                  # path of the image file
    width: int                  # size after EXIF rotation (what open_rgb decodes)
    height: int
    boxes: list[list[float]]    # [x1, y1, x2, y2] in pixels
    labels: list[int]           # class index per box, into DetectionSet.classes
    image_id: int = 0           # COCO image id (the file's own for COCO input; 1, 2, ... otherwise)


@dataclass
class DetectionSet:
    items: list[DetectionItem]
    classes: list[str]
    format: str
    # COCO category id per class index (the file's own for COCO input; 1, 2, ... otherwise)
    category_ids: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)   # skipped images and other things worth a line

    def __post_init__(self):
        if not self.category_ids:
            self.category_ids = list(range(1, len(self.classes) + 1))

    @property
    def num_boxes(self) -> int:
        return sum(len(it.boxes) for it in self.items)


# ------------------------------------------------------------------------------ shared checks

def image_size(path: Path, where: str) -> tuple[int, int] | str:
    """(width, height) of the image as open_rgb decodes it (EXIF rotation applied), or the reason
    it cannot be used (a corrupt file is skipped and reported, as for classification). A file that
    is not there at all is an error: the annotations name it, so the set is incomplete."""
    if not path.exists() and not path.is_symlink():
        raise DataError(f"{where}: image {path} not found; put the image there or remove its "
                        "entry from the annotations")
    reason = check_image(path)
    if reason:
        return reason
    with Image.open(path) as im:
        w, h = im.size
        orientation = im.getexif().get(0x0112, 1)
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def check_box(box, width: int, height: int, where: str, fix: str) -> list[float]:
    """The box `[x1, y1, x2, y2]` checked against a `width` x `height` image and clipped within the
    1-pixel tolerance; a DataError naming `where` otherwise."""
    x1, y1, x2, y2 = (float(v) for v in box)
    shown = f"[{x1:g}, {y1:g}, {x2:g}, {y2:g}] (x1, y1, x2, y2 in pixels)"
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        raise DataError(f"{where}: box {shown} has a value that is not a number; {fix}")
    t = EDGE_TOLERANCE
    if x1 < -t or y1 < -t or x2 > width + t or y2 > height + t:
        raise DataError(f"{where}: box {shown} lies outside the {width}x{height} image by more than "
                        f"{t:g} pixel; {fix}")
    x1, y1 = max(x1, 0.0), max(y1, 0.0)
    x2, y2 = min(x2, float(width)), min(y2, float(height))
    if x2 <= x1 or y2 <= y1:
        raise DataError(f"{where}: box {shown} has zero or negative width or height; "
                        "delete it or give it its real extent")
    return [x1, y1, x2, y2]
