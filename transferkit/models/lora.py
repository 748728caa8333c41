"""LoRA adapters on a text encoder's attention projections (PEFT).

Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022: a frozen weight
``W0 [out, in]`` gets a trainable low-rank update,

    h = W0 x + (alpha / r) * B A x,      A [r, in] (random),  B [out, r] (zeros at start)

so a targeted Linear adds ``r * in + out * r`` trainable parameters and the model computes exactly
the source function before the first step.

PEFT wraps each targeted ``...query`` Linear into a module whose frozen weight is
``...query.base_layer.weight`` and whose update is ``...query.lora_A.default.weight`` /
``...query.lora_B.default.weight``. `add_lora` renames the wrapped weights in ``model.spec.stages``
(so `freeze_stages` keeps freezing them) and leaves the LoRA tensors out of every stage (so
`param_groups` puts them in the "adapters" group). It returns the rename, which the engine applies to
an L2-SP anchor taken before the adapters were added.
"""

from __future__ import annotations

from torch import nn

from .heads import TransferModel
from .hub import SourceError
from .text import TextEncoder

# Leaf names of the query/key/value projections across transformers encoder families:
# BERT/RoBERTa/MiniLM/ELECTRA (query, key, value), DistilBERT (q_lin, k_lin, v_lin),
# BART/Llama-style (q_proj, k_proj, v_proj), T5 (q, k, v), fused ones (qkv, Wqkv, query_key_value).
ATTENTION_PROJECTIONS = ("query", "key", "value", "q_lin", "k_lin", "v_lin", "q_proj", "k_proj",
                         "v_proj", "q", "k", "v", "qkv", "Wqkv", "query_key_value")


def attention_projections(encoder: nn.Module) -> list[str]:
    """Names (inside `encoder`) of the Linear layers that project attention queries, keys and values."""
    return [name for name, mod in encoder.named_modules()
            if isinstance(mod, nn.Linear) and name.rsplit(".", 1)[-1] in ATTENTION_PROJECTIONS]


def add_lora(model: TransferModel, r: int, alpha: float, dropout: float = 0.0) -> dict[str, str]:
    """Add LoRA adapters (rank `r`, scale `alpha / r`) to the attention projections of a text
    backbone, in place. Afterwards only the LoRA tensors and the head train.

    Returns `{old name: new name}` for the wrapped weights, as full `TransferModel` parameter names
    (`backbone.model.encoder.layer.0.attention.self.query.weight` ->
    `backbone.model.encoder.layer.0.attention.self.query.base_layer.weight`).
    """
    if r < 1:
        raise ValueError(f"LoRA rank must be at least 1, got r={r}")
    if model.spec.modality != "text" or not isinstance(model.backbone, TextEncoder):
        raise SourceError(f"LoRA adapters need a text encoder backbone (hf: or bundled:minilm-l6); "
                          f"'{model.spec.source.id}' is a {model.spec.modality} model. Use "
                          "'partial:K', 'full' or 'two_phase' for it.")
    if any("lora_" in n for n, _ in model.backbone.named_parameters()):
        raise ValueError("this model already has LoRA adapters")
    from peft import LoraConfig, inject_adapter_in_model

    encoder = model.backbone.model
    targets = attention_projections(encoder)
    if not targets:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in encoder.named_modules() if isinstance(m, nn.Linear)})
        raise SourceError(f"cannot find the attention projections of {type(encoder).__name__} "
                          f"(looked for Linear layers named {', '.join(ATTENTION_PROJECTIONS)}; "
                          f"its Linear layers are named {', '.join(linear) or 'nothing'})")
    before = {n for n, _ in encoder.named_parameters()}
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, bias="none",
                        target_modules=targets)
    inject_adapter_in_model(config, encoder)

    # PEFT moves `<target>.<p>` to `<target>.base_layer.<p>`; everything else keeps its name.
    after = {n for n, _ in encoder.named_parameters()}
    rename: dict[str, str] = {}
    for t in targets:
        for leaf in ("weight", "bias"):
            old, new = f"{t}.{leaf}", f"{t}.base_layer.{leaf}"
            if old in before:
                if new not in after:
                    raise AssertionError(f"PEFT did not wrap {old} as expected ({new} is missing)")
                rename[old] = new
    rest = before - set(rename)
    if rest - after:
        raise AssertionError(f"PEFT renamed parameters it should not have: {sorted(rest - after)[:5]}")

    inner = {f"model.{k}": f"model.{v}" for k, v in rename.items()}  # names relative to TextEncoder
    for stage in model.spec.stages:
        stage.params = [inner.get(p, p) for p in stage.params]
    staged = {p for s in model.spec.stages for p in s.params}
    for name, p in model.backbone.named_parameters():
        if "lora_" in name:
            assert name not in staged, name
            p.requires_grad_(True)  # PEFT marks them trainable; be explicit, freezing never touches them
        else:
            assert name in staged, f"{name} is in no stage after adding LoRA"
            p.requires_grad_(False)
    return {f"backbone.{k}": f"backbone.{v}" for k, v in inner.items()}


def lora_parameters(model: TransferModel) -> list[str]:
    """Full names of the LoRA tensors of `model` (empty without adapters)."""
    return [n for n, _ in model.named_parameters() if n.startswith("backbone.") and "lora_" in n]
