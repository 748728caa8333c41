"""`transferkit embed`: pooled features of every input of DATA, to `.npy` or `.safetensors` + an index."""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.feature_cache import FeatureCache
from ..data.inputs import read_inputs
from ..data.splits import Example

WRITTEN_BY = "transferkit embed"


@dataclass
class Embeddings:
    feats: np.ndarray          # [N, D] float32, in the order of `items`
    items: list[Example]       # label "" where the data has none
    modality: str
    source: dict               # SourceInfo.to_dict(): id, arch, weights_hash
    image_size: int | None
    skipped: list[str]
    seconds: float
    backbone: object = None    # the loaded Backbone (for reuse), not written anywhere

    @property
    def labelled(self) -> bool:
        return all(ex.label for ex in self.items)


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_source(backbone, *, arch: str | None = None, pooling: str | None = None,
                max_length: int | None = None, seed: int = 0):
    """A Backbone from a source id (after `torch.manual_seed(seed)`, so a random-init `@random`
    source is the one `train --seed` builds), or the Backbone given."""
    from ..models import Backbone, load_backbone
    if isinstance(backbone, Backbone):
        return backbone
    torch.manual_seed(seed)
    return load_backbone(backbone, arch=arch, pooling=pooling, max_length=max_length)


def compute_embeddings(data: str | Path, backbone, *, image_size: int | None = None,
                       batch_size: int = 64, cache: FeatureCache | None = None,
                       text_col: str = "text", label_col: str = "label", arch: str | None = None,
                       pooling: str | None = None, max_length: int | None = None,
                       seed: int = 0) -> Embeddings:
    """Frozen pooled features of every readable input of DATA (labelled or not)."""
    from ..infer.features import frozen_features
    t0 = time.time()
    modality, items, skipped = read_inputs(data, text_col=text_col, label_col=label_col)
    bb = load_source(backbone, arch=arch, pooling=pooling, max_length=max_length, seed=seed)
    if bb.modality != modality:
        raise ValueError(f"{bb.source.id} is a {bb.modality} model but {data} holds {modality} data")
    classes = sorted({ex.label for ex in items if ex.label})
    while len(classes) < 2:  # the throwaway head that carries the class order needs two names
        classes.append(f"<unlabelled {len(classes)}>")
    feats, _, _ = frozen_features(bb, items, classes, image_size=image_size, batch_size=batch_size,
                                  device=device(), cache=cache)
    return Embeddings(feats.numpy().astype(np.float32), items, modality, bb.source.to_dict(),
                      image_size, skipped, round(time.time() - t0, 3), bb)


def _companions(out: Path) -> tuple[Path, Path]:
    stem = out.with_suffix("")
    return stem.with_name(stem.name + ".index.csv"), stem.with_name(stem.name + ".meta.json")


def _ours(meta: Path) -> bool:
    try:
        return json.loads(meta.read_text()).get("written_by") == WRITTEN_BY
    except (OSError, ValueError):
        return False


def write_embeddings(emb: Embeddings, out: str | Path, *, data: str = "") -> list[Path]:
    """Write OUT (`.npy` or `.safetensors`: a [N, D] float32 array named `features`), OUT's
    `.index.csv` (row, item, label) and `.meta.json` (source, weights hash, shape). Files there that
    transferkit did not write are never replaced."""
    from ..store.checkpoint import atomic_save_tensors, atomic_write_json, atomic_write_text
    out = Path(out)
    if out.suffix not in (".npy", ".safetensors"):
        raise ValueError(f"--out {out}: give a .npy or .safetensors file name")
    index, meta = _companions(out)
    for p in (out, index, meta):
        if p.exists() and not _ours(meta):
            raise FileExistsError(f"{p} exists and was not written by transferkit embed; choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    info = {"written_by": WRITTEN_BY, "data": str(data), "modality": emb.modality, "source": emb.source,
            "image_size": emb.image_size, "shape": list(emb.feats.shape), "dtype": "float32",
            "labelled": emb.labelled, "features": out.name, "index": index.name,
            "skipped": emb.skipped}
    if out.suffix == ".npy":
        buf = io.BytesIO()
        np.save(buf, emb.feats)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_bytes(buf.getvalue())
        tmp.replace(out)
    else:
        atomic_save_tensors(out, {"features": torch.from_numpy(emb.feats)},
                            {"source": emb.source["id"], "weights_hash": emb.source["weights_hash"]})
    rows = io.StringIO()
    w = csv.writer(rows)
    w.writerow(["row", "item", "label"])
    from ..report.outputs import spreadsheet_row
    w.writerows(spreadsheet_row([i, ex.x, ex.label]) for i, ex in enumerate(emb.items))
    atomic_write_text(index, rows.getvalue())
    atomic_write_json(meta, info)
    return [out, index, meta]
