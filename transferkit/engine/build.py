"""From a TrainConfig to a model ready to train: backbone, head, LoRA adapters, anchor, regularizers."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from ..config import TrainConfig
from ..models import attach_head, load_backbone
from ..models.backbone import tensors_hash as anchor_hash
from ..models.heads import TransferModel
from ..strategies import plan_strategy


def build_model(cfg: TrainConfig, classes: list[str]) -> tuple[TransferModel, dict | None]:
    """The TransferModel for `cfg`, and the L2-SP anchor (source weights as loaded) if a regularizer
    needs one. The anchor is taken before adapters are added and its names follow the adapters' renames.

    Inputs other than RGB pictures read as `cfg` says (its channels and statistics, settled from the
    data when the run's config was made: engine/input_kind.py); the config is not changed. A text
    model reads at most its own positions: `recorded_config` gives the `max_length` it used."""
    backbone = load_backbone(cfg.backbone, arch=cfg.arch, pooling=cfg.pooling, max_length=cfg.max_length)
    if backbone.modality == "image":
        from .input_kind import adapt_backbone
        backbone = adapt_backbone(backbone, cfg)
    plan = plan_strategy(cfg.strategy, backbone.num_stages)
    if plan.contrastive is not None:
        from ..strategies.contrastive import check_usable
        check_usable(cfg, backbone.modality)
    if plan.multi_stage:
        from ..models.multi_probe import multi_stage_backbone
        backbone = multi_stage_backbone(backbone)
    prototypes = cfg.strategy.strip() == "prototypes"
    feature_norm = cfg.feature_norm == "on"  # unset (a run recorded before the option): off
    if feature_norm and (plan.multi_stage or prototypes or cfg.class_text or cfg.head_hidden):
        from ..errors import ConfigError
        raise ConfigError("--feature-norm on rescales the features a linear head reads; the multi-stage "
                          "probe, prototypes, a class-name prior and an MLP head (--head-hidden) scale "
                          "their own: leave --feature-norm unset or off")
    torch.manual_seed(cfg.seed)  # the head's initialisation is part of the run's seed
    model = attach_head(backbone, classes, hidden=cfg.head_hidden, dropout=cfg.head_dropout,
                        prototypes=prototypes, feature_norm=feature_norm)
    if cfg.class_text:
        from ..zeroshot.prior import attach_name_prior
        attach_name_prior(model, cfg)
    anchor = None
    if cfg.reg and "l2sp" in cfg.reg:
        from ..regularizers import anchor_from
        from .input_kind import source_only_anchor
        anchor = source_only_anchor(anchor_from(model), backbone)
    if plan.lora:
        from ..models.lora import add_lora
        rename = add_lora(model, **plan.lora)
        if anchor is not None:  # the wrapped weights moved to `...base_layer.*`; same tensors
            anchor = {rename.get(k, k): v for k, v in anchor.items()}
    return model, anchor


def recorded_config(cfg: TrainConfig, model: TransferModel) -> TrainConfig:
    """`cfg` as the run records it: a text model's `max_length` clamped to what its tokenizer reads
    (models/text.py), so config.yaml says what the run used."""
    if model.spec.modality == "text" and cfg.max_length and cfg.max_length > model.spec.preprocess.max_length:
        return dataclasses.replace(cfg, max_length=model.spec.preprocess.max_length)
    return cfg


# what a model does not depend on: two configs that differ only here build the same model
NOT_BUILT_FROM = ("out", "wise", "val", "test", "stop_after", "overwrite", "unlabelled", "steps", "epochs",
                  "backbone_lr_mult")  # optimiser settings: the same model


def _build_key(cfg: TrainConfig, classes: list[str]) -> tuple:
    return tuple(classes), {k: v for k, v in cfg.to_dict().items() if k not in NOT_BUILT_FROM}


class SpareModel:
    """A model built ahead of the run that trains it. `auto` builds one before it writes anything (a
    source that does not load, class texts that do not map or inputs the backbone cannot read stop the
    run there) and hands it to the first `fit` that would build the same model, with the random state
    that building left, so that fit builds nothing and trains exactly as if it had built it."""

    def __init__(self):
        self._held = None

    def build(self, cfg: TrainConfig, classes: list[str]) -> None:
        torch.manual_seed(cfg.seed)  # as fit seeds before it builds
        model, anchor = build_model(cfg, classes)
        self._held = (_build_key(cfg, classes), model, anchor, torch.get_rng_state())

    def take(self, cfg: TrainConfig, classes: list[str]) -> tuple[TransferModel, dict | None] | None:
        """(model, anchor) when the model held is the one `cfg` builds (once), else None."""
        if self._held is None or self._held[0] != _build_key(cfg, classes):
            return None
        _, model, anchor, rng = self._held
        self._held = None
        torch.set_rng_state(rng)
        return model, anchor


class AnchorError(ValueError):
    """The L2-SP anchor of a resumed run is not the source weights the run started from."""


def verify_anchor(run: Path, cfg: TrainConfig, model: TransferModel, anchor: dict) -> dict:
    """On resume, the anchor must be the source weights the run started from.

    Either it was stored in the run (`--store-anchor`: `anchor.safetensors`, whose tensors must still
    hash to the value written beside them, so an edited file is caught), or it is re-derived from
    the source id, whose freshly loaded weights must hash to the value recorded in `source.json`
    when the run started (so a changed weights file or hub revision is caught).
    """
    import json

    from safetensors import safe_open

    from ..store import checkpoint as ck
    stored = run / "anchor.safetensors"
    if stored.exists():
        with safe_open(str(stored), framework="pt") as f:
            claimed = (f.metadata() or {}).get("anchor_hash")
        tensors = ck.load_tensors(stored, verify=False)  # its own anchor_hash check says more
        if claimed is None or anchor_hash(tensors) != claimed:
            raise AnchorError(f"{stored} was modified since the run started (its tensors no longer hash "
                              f"to {claimed}); refusing to resume with a wrong L2-SP anchor")
        return tensors
    source = run / "source.json"
    recorded = json.loads(source.read_text())["weights_hash"] if source.exists() else None
    if recorded != model.spec.source.weights_hash:
        raise AnchorError(f"the source '{cfg.backbone}' now loads weights {model.spec.source.weights_hash}, "
                          f"but the run started from {recorded}: the L2-SP anchor cannot be re-derived. "
                          "Restore the original weights, or start the run with --store-anchor")
    return anchor


def build_regularizers_for(cfg: TrainConfig, model: TransferModel, anchor: dict | None, device,
                           train_items: list | None = None, log=print) -> list:
    """The run's regularizers. DELTA gets its channel weights from `train_items` (uniform without)."""
    if not cfg.reg:
        return []
    from ..regularizers import build_regularizers, needs_source_model, parse_regularizer
    specs = parse_regularizer(cfg.reg)
    if any(s.is_auto for s in specs):
        raise ValueError("l2sp:auto is resolved by `transferkit train` before training (it sweeps "
                         "alpha on the validation split); pass a number to the engine")
    source, layers, weights = None, None, None
    if needs_source_model(specs):
        from .delta_setup import delta_setup
        source, layers, weights = delta_setup(cfg, model, train_items, device, log)
    if anchor is not None:
        anchor = {k: v.to(device) for k, v in anchor.items()}
    return build_regularizers(specs, model, anchor, source_model=source, layer_names=layers,
                              channel_weights=weights, optimizer=cfg.optimizer,
                              source_bn="batch" if cfg.bn == "adapt" else "running")


def _data_kind(path: str) -> tuple[str, str]:
    """(modality, words) of DATA from its name and header only."""
    from ..data import detect_modality
    modality = detect_modality(path)
    if Path(path).is_dir():
        return modality, "an image folder"
    if modality == "image":
        return modality, "a CSV of file paths (images, arrays or signals)"
    return modality, "a text table"


def check_data_fits_backbone(cfg: TrainConfig) -> None:
    """DATA (and --val/--test) and the backbone must be of one modality: a text model given an image
    folder would learn from the file paths (the class name is in them), an image model given text
    would try to open each sentence as a file. Decided from the source id and the data's name and
    header, before any weights load or any file is written."""
    from ..config import auto_backbone_sources
    if not cfg.data or not cfg.backbone:
        return
    listed = auto_backbone_sources(cfg.backbone)  # auto alone takes the bundled sources of the data's kind
    for source in [cfg.backbone] if listed is None else listed:
        _check_modality(cfg, source)


def _check_modality(cfg: TrainConfig, source: str) -> None:
    from ..data import DataError
    from ..models.sources import EXAMPLE_SOURCE, source_modality
    wants = source_modality(source)
    if wants is None:
        return
    for flag, path in (("DATA", cfg.data), ("--val", cfg.val), ("--test", cfg.test)):
        if not path:
            continue
        modality, words = _data_kind(path)
        if modality != wants:
            an = {"image": "an image", "text": "a text"}
            shape = {"image": "a folder of class folders, or a CSV with a 'path' column",
                     "text": "a CSV/TSV/JSONL with a text column"}
            raise DataError(f"{flag} {path} is {words} but {source} is {an[wants]} model; choose "
                            f"{an[modality]} backbone such as {EXAMPLE_SOURCE[modality]}, or give {wants} "
                            f"data ({shape[wants]})")


def load_task_for(cfg: TrainConfig):
    """The task (splits) a configuration trains on: `cfg.data` with its --val/--test, shots and seed."""
    from ..data import load_task
    check_data_fits_backbone(cfg)
    return load_task(cfg.data, val=cfg.val, test=cfg.test, shots=cfg.shots, seed=cfg.seed,
                     val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction,
                     text_col=cfg.text_col, label_col=cfg.label_col)
