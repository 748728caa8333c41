"""A joint image-text space: image features and texts mapped to comparable vectors.

Two kinds: a learned bridge (a directory written by `transferkit bridge`: the image backbone's
features go through a LinearBridge into a frozen text encoder's space), or a joint model trained on
image-text pairs (CLIP, `clip:NAME_OR_DIR`), whose own projections are the bridge.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .bridge import LinearBridge, load_bridge


@dataclass
class JointSpace:
    backbone: str                                   # image source whose features `image_map` takes
    image_map: LinearBridge                         # pooled image features -> joint space
    embed_texts: Callable[[list[str]], torch.Tensor]  # texts -> unit-norm rows in the joint space
    origin: str                                     # the bridge directory or the joint model id
    image_size: int | None = None                   # image size the bridge's features were taken at
    weights_hash: str | None = None                 # of the image backbone the bridge was trained on

    def scores(self, feats: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """[N, K] cosine of each image's embedding with each text's: the zero-shot logits' order."""
        with torch.no_grad():
            img = nn.functional.normalize(self.image_map(feats.float()), dim=-1)
            return img @ self.embed_texts(texts).T


def text_embedder(source: str, *, batch_size: int = 64) -> Callable[[list[str]], torch.Tensor]:
    """Texts -> unit-norm pooled embeddings of a frozen text encoder (e.g. bundled:minilm-l6)."""
    from ..models import SourceError, load_backbone
    bb = load_backbone(source)
    if bb.modality != "text":
        raise SourceError(f"'{source}' is an image model; a bridge needs a text encoder "
                          "(e.g. bundled:minilm-l6 or hf:DIR)")
    enc, tok, max_len = bb.module.eval(), bb.preprocess.tokenizer, bb.preprocess.max_length

    @torch.no_grad()
    def embed(texts: list[str]) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), batch_size):
            batch = tok(list(texts[i:i + batch_size]), padding=True, truncation=True,
                        max_length=max_len, return_tensors="pt")
            out.append(enc(dict(batch)).float())
        return nn.functional.normalize(torch.cat(out), dim=-1)

    return embed


def load_space(spec: str, backbone=None) -> JointSpace:
    """`spec` is a bridge directory, or a `clip:` id (then the image backbone is CLIP's own).
    `backbone`, if given, is the already loaded image Backbone (for a CLIP backbone: its text side)."""
    from ..models import SourceError
    if spec.startswith("clip:") or (backbone is not None and getattr(backbone, "joint", None) is not None
                                    and spec in ("", backbone.source.id)):
        if backbone is None or getattr(backbone, "joint", None) is None:
            from ..models import load_backbone
            backbone = load_backbone(spec)
        joint = backbone.joint
        return JointSpace(backbone.source.id, joint.image_map(), joint.embed_texts, backbone.source.id)
    if not Path(spec).is_dir():
        raise SourceError(f"'{spec}' is neither a bridge directory (from 'transferkit bridge') nor a joint "
                          "image-text model id (clip:NAME_OR_DIR)")
    import json
    bridge, cfg = load_bridge(spec)
    meta = json.loads((Path(spec) / "bridge.json").read_text())
    return JointSpace(cfg.backbone, bridge, text_embedder(cfg.text_encoder), str(spec), cfg.image_size,
                      meta.get("weights_hash"))
