"""The worst errors of a model: the wrong predictions it was most sure of, with what they look like
(a thumbnail for an image, a snippet for a text). Mislabelled items, look-alike classes and data
problems show up here first.

Arrays (.npy/.tif) are shown as their first three channels (RGB) or, with fewer, the mean of their
channels (gray); signals (.wav, 1-D .npy) as the log-mel spectrogram the model saw (low frequencies
at the bottom, time to the right, in the magma colour map). Each channel is scaled to 0-255 between its 1st and 99th
percentile, so a band with a large offset or a uint16 range is still visible."""

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


def _thumbnail(path: str, pre=None) -> str | None:
    """A data URI of a small picture of the input; `pre`: the model's ImagePreprocess (channels,
    array layout, spectrogram parameters), for arrays and signals."""
    try:
        from ..data.kinds import kind_of
        if not kind_of(path).picture:
            return _png_uri(_array_picture(path, pre))
        from ..data import open_rgb
        im = open_rgb(path)
        im.thumbnail((THUMB, THUMB))
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=85)
        return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
    except Exception:  # noqa: BLE001 - a thumbnail that cannot be made is left out, not fatal
        return None


def _scaled(x: np.ndarray) -> np.ndarray:
    """[C, H, W] floats -> uint8, each channel from its 1st..99th percentile to 0..255."""
    flat = x.reshape(len(x), -1)
    lo, hi = np.percentile(flat, 1, axis=1), np.percentile(flat, 99, axis=1)
    span = np.where(hi - lo > 1e-12, hi - lo, 1.0)
    y = (x - lo[:, None, None]) / span[:, None, None]
    return (np.clip(np.nan_to_num(y), 0.0, 1.0) * 255).round().astype(np.uint8)


def _array_picture(path: str, pre=None):
    """The picture of an array or signal input as a PIL image (RGB or L), at least THUMB pixels."""
    from PIL import Image

    from ..data.kinds import kind_of
    kind = kind_of(path)
    x = np.asarray(kind.preview(path, pre))
    if kind.colormap:  # one channel of values (a spectrogram) in colour
        from matplotlib import colormaps
        db = _scaled(x)[0]
        im = Image.fromarray((colormaps[kind.colormap](db / 255.0)[..., :3] * 255).round().astype(np.uint8), "RGB")
    else:
        x = x[:3] if len(x) >= 3 else x.mean(0, keepdims=True)
        y = _scaled(x)
        im = Image.fromarray(np.moveaxis(y, 0, -1), "RGB") if len(y) == 3 else Image.fromarray(y[0], "L")
    scale = THUMB / max(im.size)
    size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
    return im.resize(size, Image.NEAREST if scale > 1 else Image.BILINEAR)


def _png_uri(im) -> str:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def gallery_html(errors: list[dict], modality: str, preprocess=None) -> str:
    """An HTML section (empty string when there is nothing to show). `preprocess`: the model's
    ImagePreprocess, so arrays and signals are pictured as the model read them."""
    if not errors:
        return ""
    e = html.escape
    cells = []
    for r in errors:
        caption = (f"<div><b>{e(r['predicted'])}</b> {r['confidence']:.2f}</div>"
                   f"<div class='sub'>true: {e(r['true'])} ({r['p_true']:.2f})</div>")
        if modality == "image":
            uri = _thumbnail(r["item"], preprocess)
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
