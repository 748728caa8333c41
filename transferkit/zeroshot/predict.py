"""Zero-shot prediction: images of classes that never had a labelled image, by their words."""

from __future__ import annotations

from pathlib import Path

import torch

from ..data import DataError
from .prior import zero_shot_probs
from .space import load_space


def class_words(classes: str | None, class_text: str | None) -> tuple[list[str], list[str]]:
    """(class names, their texts) from `--classes "a,b,c"` and/or `--class-text FILE`."""
    from .classtext import read_class_text
    names = [c.strip() for c in classes.split(",") if c.strip()] if classes else None
    if class_text:
        table = read_class_text(class_text, names)
        names = names or list(table)
        texts = [table[c] for c in names]
    elif names:
        texts = [c.replace("_", " ").replace("-", " ") for c in names]
    else:
        raise DataError("zero-shot prediction needs the candidate classes: --classes \"a,b,c\" or --class-text FILE")
    if len(names) < 2:
        raise DataError(f"zero-shot prediction needs at least 2 classes, got {len(names)}: {', '.join(names)}")
    return names, texts


def predict_zero_shot(spec: str, inputs: list[str], *, classes: str | None = None,
                      class_text: str | None = None, top_k: int = 1, probabilities: bool = False) -> list[dict]:
    """Top-k classes per image by the nearest class text in the joint space `spec` (a bridge directory
    from `transferkit bridge`, or clip:NAME_OR_DIR)."""
    from ..data.images import check_image
    from ..infer.predictions import expand_inputs, topk_rows
    from ..models import load_backbone
    from .pairs import image_features
    names, texts = class_words(classes, class_text)
    backbone = load_backbone(spec) if spec.startswith("clip:") else None
    space = load_space(spec, backbone)
    backbone = backbone or load_backbone(space.backbone)
    if space.weights_hash and space.weights_hash != backbone.source.weights_hash:
        raise DataError(f"{spec}: the bridge was trained on other weights of '{space.backbone}'; retrain it")
    items = expand_inputs(inputs, "image")
    bad = [f"{e.x}: {r}" for e in items if (r := check_image(Path(e.x)))]
    if bad:
        raise DataError("cannot read input image(s): " + "; ".join(bad[:5]))
    feats, _ = image_features(backbone, [e.x for e in items], image_size=space.image_size, flip=False)
    probs = zero_shot_probs(space, feats, texts)
    return topk_rows(items, torch.as_tensor(probs), names, top_k, probabilities=probabilities)
