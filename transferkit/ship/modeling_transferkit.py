"""The model class of `--format hf` exports, self-contained: it imports only torch and transformers.

`transferkit export --format hf` copies this file into the export folder and names its classes in
`config.json`'s `auto_map`, the transformers convention for model code that ships with the weights.
A user without transferkit loads the folder with plain transformers:

    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    model = AutoModelForSequenceClassification.from_pretrained("exported/", trust_remote_code=True)

(`transferkit.ship.hf_model` registers the same classes with the Auto classes, so with transferkit
installed no `trust_remote_code` is needed.)

Why a class of its own and not `BertForSequenceClassification`: that one classifies
`tanh(W_p h_[CLS] + b_p)` (the pretraining pooler), while a transferkit text run classifies the mean
of the token states over the attention mask (sentence-transformers models such as all-MiniLM-L6-v2)
or the raw `[CLS]` state. No setting of the standard classes computes either exactly. The module
and parameter names here are those of transferkit's own encoder and head (`encoder.model.*`,
`classifier.*`), so a run's weights load one to one.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

MODEL_TYPE = "transferkit_pooled_encoder"


class PooledEncoderConfig(PretrainedConfig):
    """`encoder`: the wrapped encoder's own config (a dict with its `model_type`); `pooling`: mean |
    cls; `head_hidden`/`head_dropout`: the head as transferkit built it."""

    model_type = MODEL_TYPE

    def __init__(self, encoder: dict | None = None, pooling: str = "mean", head_hidden: int | None = None,
                 head_dropout: float = 0.0, **kwargs):
        self.encoder = dict(encoder or {})
        self.pooling = pooling
        self.head_hidden = head_hidden
        self.head_dropout = head_dropout
        super().__init__(**kwargs)


class PooledEncoder(nn.Module):
    """A transformers encoder mapping a tokenised batch to one vector per text: the mean of the token
    states over the attention mask, or the first (`[CLS]`) state."""

    def __init__(self, model: nn.Module, pooling: str):
        super().__init__()
        if pooling not in ("mean", "cls"):
            raise ValueError(f"unknown pooling '{pooling}'; use 'mean' or 'cls'")
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


def classifier_head(feature_dim: int, num_classes: int, hidden: int | None, dropout: float) -> nn.Module:
    """Linear, or Linear-GELU-(Dropout)-Linear with `hidden`; a leading Dropout for a linear head
    with `dropout` (the layouts, and so the parameter names, of transferkit's heads)."""
    if hidden:
        layers: list[nn.Module] = [nn.Linear(feature_dim, hidden), nn.GELU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        return nn.Sequential(*layers, nn.Linear(hidden, num_classes))
    if dropout:
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, num_classes))
    return nn.Linear(feature_dim, num_classes)


class PooledEncoderForSequenceClassification(PreTrainedModel):
    config_class = PooledEncoderConfig
    base_model_prefix = "encoder"

    def __init__(self, config: PooledEncoderConfig):
        super().__init__(config)
        enc_cfg = dict(config.encoder)
        inner = AutoModel.from_config(AutoConfig.for_model(enc_cfg.pop("model_type"), **enc_cfg))
        if getattr(inner, "pooler", None) is not None:
            inner.pooler = None  # as in the run: the pretraining pooler is not used
        self.encoder = PooledEncoder(inner, config.pooling)
        self.classifier = classifier_head(int(inner.config.hidden_size), config.num_labels,
                                          config.head_hidden, config.head_dropout)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **_):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            batch["token_type_ids"] = token_type_ids
        logits = self.classifier(self.encoder(batch))
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)
