"""Model layer: backbone sources, the Backbone contract and head surgery."""

from .backbone import Backbone, ImagePreprocess, SourceInfo, Stage, TextPreprocess, weights_hash
from .heads import TransferModel, attach_head, make_head
from .sources import (BUNDLED, KINDS, SourceError, load_backbone, load_state_dict_checked,
                      parse_source)

__all__ = [
    "Backbone", "ImagePreprocess", "SourceInfo", "Stage", "TextPreprocess", "weights_hash",
    "TransferModel", "attach_head", "make_head", "BUNDLED", "KINDS", "SourceError",
    "load_backbone", "load_state_dict_checked", "parse_source", "list_sources",
]


def list_sources() -> list[dict]:
    """The bundled backbones (loaded, to report real feature dims and stage counts) and the kinds."""
    rows = []
    for name, (_, desc) in BUNDLED.items():
        row = {"id": f"bundled:{name}", "description": desc}
        try:
            bb = load_backbone(f"bundled:{name}")
            row.update({"modality": bb.modality, "feature_dim": bb.feature_dim,
                        "num_stages": bb.num_stages,
                        "params": sum(p.numel() for p in bb.module.parameters()),
                        "available": True})
        except SourceError as e:
            row.update({"available": False, "error": str(e)})
        rows.append(row)
    return rows
