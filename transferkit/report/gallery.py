"""The worst errors of a model: the wrong predictions it was most sure of, with what they look like
(a thumbnail for an image, a snippet for a text). Mislabelled items, look-alike classes and data
problems show up here first."""

from __future__ import annotations

import base64
import html
import io

import numpy as np

THUMB = 112
SNIPPET = 220


def worst_errors(items, probs: np.ndarray, y: np.ndarray, classes: list[str], k: int = 16) -> list[dict]:
    """The `k` wrong predictions with the highest confidence, most confident first."""
    probs = np.asarray(probs)
    y = np.asarray(y)
    if not len(y):
        return []
    pred = probs.argmax(1)
    wrong = np.flatnonzero((pred != y) & (y >= 0) & np.isfinite(probs).all(1))
    order = wrong[np.argsort(-probs[wrong, pred[wrong]], kind="stable")][:k]
    return [{"item": items[i].x, "true": classes[int(y[i])], "predicted": classes[int(pred[i])],
             "confidence": float(probs[i, pred[i]]), "p_true": float(probs[i, y[i]])} for i in order]


def _thumbnail(path: str) -> str | None:
    try:
        from ..data import open_rgb
        im = open_rgb(path)
        im.thumbnail((THUMB, THUMB))
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=85)
        return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
    except Exception:  # noqa: BLE001 - a thumbnail that cannot be made is left out, not fatal
        return None


def gallery_html(errors: list[dict], modality: str) -> str:
    """An HTML section (empty string when there is nothing to show)."""
    if not errors:
        return ""
    e = html.escape
    cells = []
    for r in errors:
        caption = (f"<div><b>{e(r['predicted'])}</b> {r['confidence']:.2f}</div>"
                   f"<div class='sub'>true: {e(r['true'])} ({r['p_true']:.2f})</div>")
        if modality == "image":
            uri = _thumbnail(r["item"])
            look = f"<img src='{uri}' alt='{e(r['item'])}'>" if uri else "<div class='sub'>(unreadable)</div>"
            title = e(r["item"])
        else:
            text = r["item"] if len(r["item"]) <= SNIPPET else r["item"][:SNIPPET] + "…"
            look = f"<div class='snippet'>{e(text)}</div>"
            title = ""
        cells.append(f"<figure class='err' title='{title}'>{look}<figcaption>{caption}</figcaption></figure>")
    return ("<h2>Most confident mistakes</h2><p class='sub'>wrong predictions, most confident first: "
            "predicted label and its probability, then the true label and its probability</p>"
            "<div class='gallery'>" + "".join(cells) + "</div>")


GALLERY_CSS = """
.gallery{display:flex;flex-wrap:wrap;gap:.8em}.err{margin:0;width:150px;background:#f7f7fa;
border-radius:6px;padding:.5em;font-size:.85em}.err img{display:block;margin:0 auto .3em;max-height:112px}
.snippet{font-size:.85em;max-height:9em;overflow:hidden;margin-bottom:.3em}
"""
