"""`clip:` sources: joint image-text models (transformers' CLIPModel) as image Backbones.

`clip:NAME_OR_DIR` (e.g. `clip:openai/clip-vit-base-patch32`, or a local `save_pretrained` directory)
gives the vision tower as a Backbone (pooled features = CLIP's post-LayerNorm [CLS] token) and keeps
the text side in `Backbone.joint`: CLIP's visual projection is then the bridge into the text
embedding space, so zero-shot prediction and class-name priors need no bridge training.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from . import hub
from .backbone import (Backbone, ImagePreprocess, SourceInfo, check_stages_cover, stages_from_param_groups,
                       weights_hash)
from .hub import SourceError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipImage(nn.Module):
    """CLIP's vision tower: pixels [B, 3, H, W] -> pooled features [B, hidden]."""

    def __init__(self, vision_model: nn.Module):
        super().__init__()
        self.vision_model = vision_model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vision_model(pixel_values=x).pooler_output


class ClipJoint:
    """The text side of a CLIP model and its projections (not a submodule of the backbone)."""

    def __init__(self, model: nn.Module, tokenizer, max_length: int):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_length = max_length

    def image_map(self):
        from .linear_bridge import LinearBridge
        proj = self.model.visual_projection
        m = LinearBridge(proj.in_features, proj.out_features)
        with torch.no_grad():
            m.proj.weight.copy_(proj.weight)
        return m.eval()

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt")
        pooled = self.model.text_model(input_ids=batch["input_ids"],
                                       attention_mask=batch["attention_mask"]).pooler_output
        return nn.functional.normalize(self.model.text_projection(pooled).float(), dim=-1)


def _stages(module: ClipImage):
    vm = module.vision_model
    n_layers = len(vm.encoder.layers)
    groups: list[tuple[str, list[str]]] = [("stem", [])] + [(f"layer{i}", []) for i in range(n_layers)]
    for pname, _ in module.named_parameters():
        rest = pname[len("vision_model."):]
        if rest.startswith("encoder.layers."):
            groups[1 + int(rest.split(".")[2])][1].append(pname)
        elif rest.startswith(("embeddings.", "pre_layrnorm.")):
            groups[0][1].append(pname)
        else:  # post_layernorm goes with the last layer
            groups[-1][1].append(pname)
    return stages_from_param_groups(module, groups)


def load_clip(source: str, name: str, pretrained: bool) -> Backbone:
    from transformers import AutoTokenizer, CLIPConfig, CLIPModel

    local = Path(name).expanduser()
    is_dir = local.is_dir()
    if not is_dir and name.startswith((".", "/", "~")):
        raise SourceError(f"'{source}': the directory {local} does not exist")
    target = str(local) if is_dir else name
    try:
        tok = AutoTokenizer.from_pretrained(target, local_files_only=True)
        cfg = CLIPConfig.from_pretrained(target, local_files_only=True)
        model = CLIPModel.from_pretrained(target, local_files_only=True) if pretrained else CLIPModel(cfg)
    except OSError as cached_error:
        if is_dir:
            raise SourceError(f"cannot load '{source}' from {target}: {cached_error}") from cached_error
        if hub.offline_mode() or not hub.hub_reachable(target):
            raise hub.offline_error(source, "this CLIP model is not in the Hugging Face cache") from cached_error
        tok = AutoTokenizer.from_pretrained(target)
        cfg = CLIPConfig.from_pretrained(target)
        model = CLIPModel.from_pretrained(target) if pretrained else CLIPModel(cfg)
    image = ClipImage(model.vision_model)
    stages = _stages(image)
    check_stages_cover(image, stages)
    size = int(model.config.vision_config.image_size)
    max_len = int(model.config.text_config.max_position_embeddings)
    return Backbone(module=image, feature_dim=int(model.config.vision_config.hidden_size), stages=stages,
                    preprocess=ImagePreprocess(mean=CLIP_MEAN, std=CLIP_STD, size=size, crop_pct=1.0),
                    source=SourceInfo(id=source, arch="clip:" + type(model).__name__, pretrained=pretrained,
                                      weights_hash=weights_hash(model)),
                    modality="image", joint=ClipJoint(model, tok, max_len))
