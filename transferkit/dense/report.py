"""RUN/report.html of a dense run: the metrics, then the test images worst first, each with the model's
output over the image beside the ground truth (segment: mask overlays, ranked by the image's mIoU;
anomaly: heat maps, ranked by how far on the wrong side of the threshold the image score fell;
detect: boxes with class and score, ranked by the image's box F1, detection/report.py).
One self-contained file (images inlined as PNG data URLs)."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np
from PIL import Image

from ..store import checkpoint as ck

MAX_SHOWN = 24
THUMB = 192


def _png(a: np.ndarray | Image.Image) -> str:
    im = a if isinstance(a, Image.Image) else Image.fromarray(a.astype(np.uint8))
    im = im.convert("RGB")
    im.thumbnail((THUMB, THUMB))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def overlay(image: np.ndarray, idx: np.ndarray, palette: list[int]) -> np.ndarray:
    """Classes > 0 blended over the image in their palette colours."""
    colours = np.array(palette[:768], dtype=np.float32).reshape(256, 3)[idx]
    return np.where(idx[..., None] > 0, 0.5 * image + 0.5 * colours, image)


def write_report(run: Path, title: str, metrics: dict, cards: list[dict]) -> Path:
    """cards: {"name", "badness" (higher = worse), "caption", "images": [(label, array)]}."""
    head = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str)) or v is None}
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in head.items())
    shown = sorted(cards, key=lambda c: -c["badness"])[:MAX_SHOWN]
    figs = "".join(
        "<div class=card><div class=cap>" + html.escape(c["name"]) + " &middot; " + html.escape(c["caption"])
        + "</div>" + "".join(f"<figure><img src='{_png(a)}'><figcaption>{html.escape(lbl)}</figcaption></figure>"
                             for lbl, a in c["images"]) + "</div>" for c in shown)
    page = (f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title><style>"
            "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}th,td{padding:2px 10px;"
            "text-align:left;border-bottom:1px solid #ddd}.card{border:1px solid #ccc;margin:10px 0;padding:6px}"
            "figure{display:inline-block;margin:4px}.cap{font-size:90%;color:#333}</style>"
            f"<h1>{html.escape(title)}</h1><table>{rows}</table>"
            f"<h2>Test images, worst first ({len(shown)} of {len(cards)})</h2>{figs}")
    ck.atomic_write_text(run / "report.html", page)
    return run / "report.html"


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)
