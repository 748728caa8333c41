"""A sequence classifier that pools the way the run pooled, for `--format hf` exports.

Why not `BertForSequenceClassification`: it classifies `tanh(W_p h_[CLS] + b_p)` (the pretraining
pooler), while a transferkit text run classifies the mean of the token states over the attention
mask (sentence-transformers models such as all-MiniLM-L6-v2) or the raw `[CLS]` state. No setting of
the standard classes reproduces either exactly, so an export into one of them would not compute what
the run computed. This class is the run's own encoder + pooling + head under the standard
transformers API: `save_pretrained`/`from_pretrained`, `AutoModelForSequenceClassification`,
`id2label`/`label2id`, PEFT adapters. Importing this module registers it with the Auto classes, so no
`trust_remote_code` is needed:

    import transferkit.ship.hf_model  # noqa: F401  (registers the model type)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    model = AutoModelForSequenceClassification.from_pretrained("exported/")
    tok = AutoTokenizer.from_pretrained("exported/")
"""

from __future__ import annotations

from transformers import (AutoConfig, AutoModel, AutoModelForSequenceClassification, PretrainedConfig,
                          PreTrainedModel)
from transformers.modeling_outputs import SequenceClassifierOutput

from ..models.heads import make_head
from ..models.text import TextEncoder

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


class PooledEncoderForSequenceClassification(PreTrainedModel):
    config_class = PooledEncoderConfig
    base_model_prefix = "encoder"

    def __init__(self, config: PooledEncoderConfig):
        super().__init__(config)
        enc_cfg = dict(config.encoder)
        inner = AutoModel.from_config(AutoConfig.for_model(enc_cfg.pop("model_type"), **enc_cfg))
        if getattr(inner, "pooler", None) is not None:
            inner.pooler = None  # as in the run: the pretraining pooler is not used
        self.encoder = TextEncoder(inner, config.pooling)
        self.classifier = make_head(int(inner.config.hidden_size), config.num_labels,
                                    hidden=config.head_hidden, dropout=config.head_dropout)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **_):
        import torch
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            batch["token_type_ids"] = token_type_ids
        logits = self.classifier(self.encoder(batch))
        loss = None
        if labels is not None:
            loss = torch.nn.functional.cross_entropy(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)


AutoConfig.register(MODEL_TYPE, PooledEncoderConfig, exist_ok=True)
AutoModelForSequenceClassification.register(PooledEncoderConfig, PooledEncoderForSequenceClassification,
                                            exist_ok=True)
