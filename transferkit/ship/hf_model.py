"""Registers the `--format hf` model class with transformers' Auto classes.

The class itself lives in `modeling_transferkit.py`, which imports nothing from transferkit, because
every export folder carries a copy of it (named in `config.json`'s `auto_map`) for users without
transferkit (`from_pretrained(..., trust_remote_code=True)`). With transferkit installed, importing
this module is enough, and no remote code runs:

    import transferkit.ship.hf_model  # noqa: F401  (registers the model type)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    model = AutoModelForSequenceClassification.from_pretrained("exported/")
    tok = AutoTokenizer.from_pretrained("exported/")
"""

from __future__ import annotations

from transformers import AutoConfig, AutoModelForSequenceClassification

from .modeling_transferkit import MODEL_TYPE, PooledEncoderConfig, PooledEncoderForSequenceClassification

__all__ = ["MODEL_TYPE", "PooledEncoderConfig", "PooledEncoderForSequenceClassification"]

AutoConfig.register(MODEL_TYPE, PooledEncoderConfig, exist_ok=True)
AutoModelForSequenceClassification.register(PooledEncoderConfig, PooledEncoderForSequenceClassification,
                                            exist_ok=True)
