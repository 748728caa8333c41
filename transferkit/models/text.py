"""`hf:` sources: Hugging Face text encoders as Backbones (pooled sentence features)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from . import hub
from .backbone import (Backbone, SourceInfo, Stage, TextPreprocess, check_stages_cover,
                       stages_from_param_groups, weights_hash)
from .hub import SourceError


class TextEncoder(nn.Module):
    """A transformers encoder that maps a tokenised batch to pooled sentence features."""

    def __init__(self, model: nn.Module, pooling: str):
        super().__init__()
        if pooling not in ("mean", "cls"):
            raise SourceError(f"unknown pooling '{pooling}'; use 'mean' or 'cls'")
        self.model = model
        self.pooling = pooling

    def forward(self, batch) -> torch.Tensor:
        mask = batch["attention_mask"]
        kwargs = {"input_ids": batch["input_ids"], "attention_mask": mask}
        if "token_type_ids" in batch:
            kwargs["token_type_ids"] = batch["token_type_ids"]
        hidden = self.model(**kwargs).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)


def _transformer_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    best = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > 0 and name.split(".")[-1] in ("layer", "layers", "block", "blocks", "h"):
            if best is None or len(mod) > len(best[1]):
                best = (name, mod)
    if best is None:
        raise SourceError(f"cannot find the transformer layers of {type(model).__name__}")
    return best


def _hf_stages(encoder: TextEncoder) -> list[Stage]:
    layers_name, layers = _transformer_layers(encoder.model)
    prefix = f"model.{layers_name}."
    groups: list[tuple[str, list[str]]] = [("embeddings", [])]
    groups += [(f"layer{i}", []) for i in range(len(layers))]
    after: list[str] = []
    for pname, _ in encoder.named_parameters():
        if pname.startswith(prefix):
            idx = int(pname[len(prefix):].split(".")[0])
            groups[1 + idx][1].append(pname)
        elif not any(g[1] for g in groups[1:]):
            groups[0][1].append(pname)
        else:
            after.append(pname)  # a final LayerNorm after the layers goes with the last layer
    groups[-1][1].extend(after)
    return stages_from_param_groups(encoder, groups)


def _default_pooling(path: Path | None) -> str:
    # sentence-transformers checkpoints say how they were trained to pool; plain encoders use [CLS].
    if path is not None:
        cfg = path / "1_Pooling" / "config.json"
        if cfg.is_file():
            modes = json.loads(cfg.read_text())
            if modes.get("pooling_mode_mean_tokens"):
                return "mean"
            if modes.get("pooling_mode_cls_token"):
                return "cls"
    return "cls"


def load_hf(source: str, name: str, pretrained: bool, *, pooling: str | None,
             max_length: int | None, local_only: bool = False) -> Backbone:
    from transformers import AutoConfig, AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    local = Path(name).expanduser()
    is_dir = local.is_dir()
    if not is_dir and name.startswith((".", "/", "~")):
        raise SourceError(f"'{source}': the directory {local} does not exist")
    target = str(local) if is_dir else name
    kwargs = {"local_files_only": True}
    try:
        tok = AutoTokenizer.from_pretrained(target, **kwargs)
        if pretrained:
            model = AutoModel.from_pretrained(target, **kwargs)
        else:
            model = AutoModel.from_config(AutoConfig.from_pretrained(target, **kwargs))
    except (OSError, ValueError, RuntimeError) as cached_error:
        if is_dir or local_only:  # damaged or incomplete files: one line, not transformers' traceback
            first = str(cached_error).strip().split("\n")[0][:300]
            raise SourceError(f"cannot load '{source}' from {target}: {type(cached_error).__name__}: {first}. "
                              "Its files are damaged or incomplete: save the model again with "
                              "save_pretrained") from cached_error
        if not isinstance(cached_error, OSError):
            raise
        if hub.offline_mode() or not hub.hub_reachable(target):
            raise hub.offline_error(source, "not in the Hugging Face cache") from cached_error
        tok = AutoTokenizer.from_pretrained(target)
        model = AutoModel.from_pretrained(target) if pretrained else \
            AutoModel.from_config(AutoConfig.from_pretrained(target))
    if getattr(model, "pooler", None) is not None:
        model.pooler = None  # unused by mean/cls pooling; its params would never get a gradient
    pool = pooling or _default_pooling(local if is_dir else None)
    enc = TextEncoder(model, pool)
    stages = _hf_stages(enc)
    check_stages_cover(enc, stages)
    limit = _clamped_length(source, max_length, tok, model)
    return Backbone(module=enc, feature_dim=int(model.config.hidden_size), stages=stages,
                    preprocess=TextPreprocess(tokenizer=tok, max_length=limit, pooling=pool),
                    source=SourceInfo(id=source, arch=f"hf:{model.config.model_type}",
                                      pretrained=pretrained, weights_hash=weights_hash(enc)),
                    modality="text")


def _positions(model) -> int | None:
    """Tokens the model's position table holds (less RoBERTa's padding offset); None without one
    (relative positions)."""
    n = getattr(model.config, "max_position_embeddings", None)
    if not n:
        return None
    pad = getattr(getattr(model, "embeddings", None), "padding_idx", None)
    return int(n) - (int(pad) + 1 if pad is not None else 0)  # RoBERTa: positions start after padding


def _clamped_length(source: str, max_length: int | None, tok, model) -> int:
    """--max-length; unset, the tokenizer's own limit (an unset one is a huge sentinel) within the
    position table, 512 for either that is unknown. A value past the table would index past it (an error deep in the forward), so
    it is clamped with a warning."""
    positions = _positions(model)
    if max_length is None:
        own = getattr(tok, "model_max_length", None)
        own = int(own) if own and own < 1_000_000 else None
        return min(own or 512, positions or 512)
    if positions is not None and max_length > positions:
        import sys
        print(f"transferkit: warning: --max-length {max_length} clamped to {positions} "
              f"(the model's max positions, {source})", file=sys.stderr)
        return positions
    return int(max_length)
