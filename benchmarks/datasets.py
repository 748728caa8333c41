"""Data sets the few-shot benchmarks build offline from what pip and Debian packages ship.

- `clipart`: the demo set (Debian openclipart-png, 10 topics, 613 images; transferkit/demo_data).
- `digits`: scikit-learn's bundled handwritten digits (`load_digits`: 1,797 images of 8x8 pixels,
  10 classes), written as 32x32 grayscale-as-RGB PNGs — pictures of a very different look from the
  ImageNet photos the backbone learned from.
- `text`: the demo text set (Debian package descriptions -> section, 10 sections x 200).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CLIPART = ROOT / "transferkit" / "demo_data" / "clipart"
TEXT = ROOT / "transferkit" / "demo_data" / "debian_descriptions.csv"


def digits_folder(root: str | Path, size: int = 32) -> Path:
    """Write load_digits as DATA/<digit>/<index>.png (idempotent) and return the folder."""
    from PIL import Image
    from sklearn.datasets import load_digits

    root = Path(root)
    done = root / ".complete"
    if done.exists():
        return root
    d = load_digits()
    for i, (img, label) in enumerate(zip(d.images, d.target)):
        px = (np.asarray(img) * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
        out = root / str(label)
        out.mkdir(parents=True, exist_ok=True)
        Image.fromarray(px, "L").resize((size, size), Image.BILINEAR).convert("RGB").save(out / f"{i:04d}.png")
    done.write_text("ok\n")
    return root


def image_datasets(tmp: str | Path) -> dict[str, Path]:
    return {"clipart": CLIPART, "digits": digits_folder(Path(tmp) / "digits")}
