"""Paired data for a bridge (images with the words that describe them) and their frozen features."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ..data import DataError, Example, ImageDataset, build_transforms
from ..data.images import check_image
from .bridge import BridgeConfig, LinearBridge, fit_bridge, save_bridge


def read_pairs(path: str | Path) -> list[Example]:
    """A CSV with `path,text` columns (paths relative to the CSV; an optional `label` column is kept
    as `ref` for held-out splits), or an ImageFolder tree whose folder names are the texts."""
    p = Path(path)
    if p.is_dir():
        from ..data.images import read_image_items
        items, _ = read_image_items(p)
        return [Example(e.x, e.label.replace("_", " ").replace("-", " "), e.label) for e in items]
    if not p.is_file():
        raise DataError(f"paired data not found: {p}")
    with open(p, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        cols = reader.fieldnames or []
        if "path" not in cols or "text" not in cols:
            raise DataError(f"{p}: a pairs CSV needs 'path' and 'text' columns (has: {', '.join(cols) or 'none'})")
        out = []
        for n, row in enumerate(reader, start=2):
            if not (row["path"] or "").strip() or not (row["text"] or "").strip():
                raise DataError(f"{p}:{n}: empty path or text")
            img = Path(row["path"])
            img = img if img.is_absolute() else p.parent / img
            out.append(Example(str(img), row["text"].strip(), (row.get("label") or "").strip()))
    bad = [f"{e.x}: {r}" for e in out if (r := check_image(Path(e.x)))]
    if bad:
        raise DataError(f"{p}: unreadable image(s): {'; '.join(bad[:3])}")
    if not out:
        raise DataError(f"{p} has a header but no rows")
    return out


@torch.no_grad()
def image_features(backbone, paths: list[str], *, image_size: int | None = None, batch_size: int = 64,
                   flip: bool = True, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor | None]:
    """Pooled features of the frozen image backbone for `paths`, and of their mirror images."""
    _, tf = build_transforms(backbone.preprocess, image_size, augment=False)
    ds = ImageDataset([Example(p, "") for p in paths], {}, tf, cache=False)
    module = backbone.module.to(device).eval()
    feats, flipped = [], []
    for x, _ in DataLoader(ds, batch_size=batch_size, shuffle=False):
        x = x.to(device)
        feats.append(module(x).float().cpu())
        if flip:
            flipped.append(module(torch.flip(x, dims=[3])).float().cpu())
    return torch.cat(feats), (torch.cat(flipped) if flip else None)


def train_bridge(pairs: list[Example], cfg: BridgeConfig, out: str | Path | None = None,
                 log=print) -> tuple[LinearBridge, dict]:
    """Extract features once, embed each distinct text once, fit the bridge, save it to `out`."""
    from ..models import load_backbone
    from .space import text_embedder
    t0 = time.time()
    bb = load_backbone(cfg.backbone)
    if bb.modality != "image":
        raise DataError(f"--backbone {cfg.backbone} is a text model; a bridge maps an image backbone")
    feats, flipped = image_features(bb, [e.x for e in pairs], image_size=cfg.image_size)
    texts = sorted({e.label for e in pairs})
    index = {t: i for i, t in enumerate(texts)}
    targets = torch.tensor([index[e.label] for e in pairs])
    text_emb = text_embedder(cfg.text_encoder)(texts)
    t1 = time.time()
    bridge, curve = fit_bridge(torch.cat([feats, flipped]), torch.cat([targets, targets]), text_emb, cfg)
    with torch.no_grad():
        train_acc = float(((bridge(feats) @ text_emb.T).argmax(1) == targets).float().mean())
    info = {"pairs": len(pairs), "texts": len(texts), "loss_curve": curve,
            "train_text_accuracy": round(train_acc, 4), "feature_seconds": round(t1 - t0, 2),
            "fit_seconds": round(time.time() - t1, 2), "weights_hash": bb.source.weights_hash}
    fit = (f"{cfg.loss} loss {curve[0]:.4f} -> {curve[-1]:.4f}" if curve
           else f"{cfg.loss} closed form (alpha {cfg.alpha:g}, beta {cfg.beta:g})")
    log(f"bridge: {len(pairs)} images, {len(texts)} texts, {fit}, "
        f"nearest-text accuracy on its own pairs {train_acc:.3f}")
    if out is not None:
        save_bridge(out, bridge, cfg, info)
    return bridge, info
