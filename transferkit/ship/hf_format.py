"""`--format hf`: a text run as a `save_pretrained` folder with its tokenizer.

The model class is `PooledEncoderForSequenceClassification` (see `hf_model.py` for why not
`BertForSequenceClassification`). A LoRA run is merged into the encoder weights by default
(`W0 + (alpha / r) B A`, by PEFT's own `merge`); with `merge=False` the folder holds the source
encoder weights and the trained head, and `adapter/` the LoRA adapter in PEFT's format, loadable
with `PeftModel.from_pretrained(model, "OUT/adapter")`.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import torch
from torch import nn

from ..models import load_state_dict_checked
from ..models.lora import attention_projections, lora_parameters


REMOTE_MODULE = "modeling_transferkit"  # copied into every export (see modeling_transferkit.py)


def merged_copy(model):
    """A copy of `model` with every LoRA layer merged into its base weight and unwrapped."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    merged = copy.deepcopy(model)
    wrapped = [(n, m) for n, m in merged.named_modules() if isinstance(m, BaseTunerLayer)]
    for name, mod in wrapped:
        mod.merge(safe_merge=True)
        parent_name, _, leaf = name.rpartition(".")
        setattr(merged.get_submodule(parent_name), leaf, mod.get_base_layer())
    return merged.eval()


def _base_state(model) -> dict[str, torch.Tensor]:
    """The run's weights without the LoRA tensors, wrapped names restored (`.base_layer.` dropped)."""
    return {k.replace(".base_layer.", "."): v for k, v in model.state_dict().items() if "lora_" not in k}


def _hf_key(k: str) -> str:
    if k.startswith("backbone."):
        return "encoder." + k[len("backbone."):]
    return "classifier." + k[len("head."):]


def build_hf_model(model, cfg, state: dict[str, torch.Tensor]) -> nn.Module:
    from .hf_model import PooledEncoderConfig, PooledEncoderForSequenceClassification
    enc = model.backbone
    classes = list(model.class_names)
    config = PooledEncoderConfig(
        encoder=enc.model.config.to_dict(), pooling=enc.pooling, head_hidden=cfg.head_hidden,
        head_dropout=cfg.head_dropout, num_labels=len(classes),
        id2label={i: c for i, c in enumerate(classes)}, label2id={c: i for i, c in enumerate(classes)},
        architectures=["PooledEncoderForSequenceClassification"],
        # the model code travels with the weights: plain transformers loads it with trust_remote_code
        auto_map={"AutoConfig": f"{REMOTE_MODULE}.PooledEncoderConfig",
                  "AutoModelForSequenceClassification": f"{REMOTE_MODULE}.PooledEncoderForSequenceClassification"})
    hf = PooledEncoderForSequenceClassification(config)
    load_state_dict_checked(hf, {_hf_key(k): v for k, v in state.items()}, "the run mapped onto the HF class")
    return hf.eval()


def write_hf(model, cfg, out: Path, *, merge: bool = True) -> list[str]:
    if model.spec.modality != "text":
        raise ValueError("--format hf exports text runs; for an image run use --format timm, onnx or "
                         "torchscript")
    lora = bool(lora_parameters(model))
    state = (merged_copy(model).state_dict() if lora and merge else _base_state(model))
    hf = build_hf_model(model, cfg, state)
    hf.save_pretrained(str(out))
    shutil.copyfile(Path(__file__).with_name(f"{REMOTE_MODULE}.py"), out / f"{REMOTE_MODULE}.py")
    model.spec.preprocess.tokenizer.save_pretrained(str(out))
    files = ["config.json", "model.safetensors", f"{REMOTE_MODULE}.py", "tokenizer files"]
    if lora and not merge:
        _write_adapter(model, cfg, hf, out / "adapter")
        files.append("adapter/")
    return files


def _write_adapter(model, cfg, hf, where: Path) -> None:
    from peft import LoraConfig, get_peft_model

    from ..strategies import plan_strategy
    spec = plan_strategy(cfg.strategy, model.spec.num_stages).lora
    targets = attention_projections(hf.encoder.model)
    pm = get_peft_model(copy.deepcopy(hf), LoraConfig(r=spec["r"], lora_alpha=spec["alpha"],
                                                      lora_dropout=spec.get("dropout", 0.0),
                                                      target_modules=targets, bias="none"))
    run_state = model.state_dict()
    prefix = "base_model.model.encoder."
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_" in name:
                p.copy_(run_state["backbone." + name[len(prefix):]])
    pm.save_pretrained(str(where))


def load_hf_export(out: Path):
    """Reload with the transformers Auto API (and PEFT for an unmerged adapter); a logits function."""
    from transformers import AutoModelForSequenceClassification

    from . import hf_model  # noqa: F401 - registers the model type with the Auto classes
    hf, info = AutoModelForSequenceClassification.from_pretrained(str(out), output_loading_info=True)
    bad = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if bad:
        raise ValueError(f"{out}: the exported weights do not load cleanly: {bad}")
    if (out / "adapter").is_dir():
        from peft import PeftModel
        hf = PeftModel.from_pretrained(hf, str(out / "adapter"))
    hf.eval()

    def run(x):
        with torch.no_grad():
            return hf(**x).logits.numpy()
    return run


def check_tokenizer(model, out: Path, texts: list[str]) -> None:
    """The exported tokenizer must give the run's token ids on the test texts."""
    from transformers import AutoTokenizer
    mine = model.spec.preprocess.tokenizer
    theirs = AutoTokenizer.from_pretrained(str(out))
    n = model.spec.preprocess.max_length
    a = mine(texts, padding=True, truncation=True, max_length=n)["input_ids"]
    b = theirs(texts, padding=True, truncation=True, max_length=n)["input_ids"]
    if a != b:
        raise ValueError(f"{out}: the exported tokenizer gives different token ids than the run's")
