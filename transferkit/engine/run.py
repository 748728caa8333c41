"""Using a finished run: reload it, evaluate it on labelled data, predict on new inputs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from ..config import DENSE_TASKS, ConfigError, read_config
from ..data import DataError, Example, read_items
from ..models import SourceError, load_state_dict_checked, parse_source
from ..store import checkpoint as ck
from ..store.runfolder import run_task
from .build import build_model
from ..infer.loaders import eval_loader, make_dataset
from ..infer.predict import predict_probs
from ..infer.predictions import default_device, error_row, expand_inputs, topk_rows
from ..infer.tta import views_of


def load_run(run_dir: str | Path):
    """(model, cfg) for a run directory, with its best weights loaded; no hub download needed."""
    run = Path(run_dir)
    weights = run / "model.safetensors"
    if run_task(run) in DENSE_TASKS:  # a segment/anomaly run has no classifier to load
        raise ConfigError(f"{run} is a {run_task(run)} run; this command reads classification runs only "
                          f"(for a {run_task(run)} run use: transferkit evaluate RUN DATA, transferkit predict "
                          "RUN INPUTS --out DIR)")
    if not (run / "config.yaml").is_file() or not weights.is_file():
        raise FileNotFoundError(f"{run} is not a finished transferkit run (needs config.yaml and "
                                "model.safetensors; train one with 'transferkit train ... --out DIR')")
    from ..store.runfolder import read_run_meta
    read_run_meta(run)
    cfg = read_config(run / "config.yaml")
    try:
        classes = json.loads(ck.read_safetensors_metadata(weights)["classes"])
    except (KeyError, json.JSONDecodeError) as e:
        raise ck.CheckpointError(f"{weights} has no class list in its metadata: it was not written by "
                                 "transferkit train (or was edited); train the run again") from e
    kind, _, pretrained = parse_source(cfg.backbone)
    # the architecture is all we need: the run's own weights replace the source's (timm, torchvision);
    # the class-name prior shaped training only, and the run's own weights replace the head
    cfg = dataclasses.replace(cfg, class_text=None,
                              backbone=cfg.backbone + "@random" if kind in ("timm", "torchvision") and pretrained
                              else cfg.backbone)
    model, _ = build_model(cfg, classes)
    try:
        load_state_dict_checked(model, ck.load_tensors(weights), str(weights))
    except SourceError as e:
        raise SourceError(f"{e}\n  (the run's config.yaml and model.safetensors disagree)") from e
    model.eval()
    return model.to(default_device()), cfg


def evaluate_run(run_dir: str | Path, data: str | Path, *, batch_size: int = 64, tta: bool | None = None) -> dict:
    """Metrics of a run on any labelled data; classes are matched by name."""
    model, cfg = load_run(run_dir)
    return evaluate_loaded(model, cfg, data, batch_size=batch_size, tta=tta, run_dir=run_dir)[0]


def evaluate_loaded(model, cfg, data: str | Path, *, batch_size: int = 64, tta: bool | None = None,
                    run_dir: str | Path | None = None):
    """(metrics, items, probabilities) of a loaded run on labelled `data`. With `run_dir`, items that
    are also in the run's training split (splits.csv) are named in `warnings`."""
    from ..data.checks import numeric_twins, training_overlap
    from ..report.metrics import classification_metrics
    warnings: list[str] = []
    items, skipped = read_items(data, model.spec.modality, text_col=cfg.text_col, label_col=cfg.label_col,
                                warnings_out=warnings)
    unknown = sorted({e.label for e in items} - set(model.class_names))
    if unknown:
        twins = numeric_twins([*unknown, *model.class_names])
        raise DataError(f"{data}: label(s) {', '.join(repr(u) for u in unknown[:5])} were never seen by "
                        f"this model (it knows: {', '.join(model.class_names)}); remove those items or "
                        "train with them" + (f" ({twins[0]})" if twins else ""))
    if run_dir is not None:
        warnings += training_overlap(run_dir, cfg, items, model.spec.modality, data)
    ds = make_dataset(model, items, train=False, augment=False, image_size=cfg.image_size, seed=0)
    probs, y = predict_probs(model, eval_loader(model, ds, batch_size), default_device(),
                             tta=cfg.tta if tta is None else tta, progress="evaluate", views=views_of(cfg, tta))
    m = classification_metrics(y, probs, model.class_names)
    m["skipped"] = skipped
    m["warnings"] = list(dict.fromkeys(warnings))
    m["data"] = str(data)
    non_finite = ck.json_safe(m)[1]
    if non_finite:  # a model that outputs NaN: JSON gets null, and says where
        m["non_finite"] = non_finite
    return m, items, probs


def predict_run(run_dir: str | Path, inputs: list[str], *, top_k: int = 1, batch_size: int = 64,
                tta: bool | None = None, probabilities: bool = False) -> list[dict]:
    """Top-k labels with probabilities for files, folders or (text models) strings; with
    `probabilities`, every class's too (infer.predictions.topk_rows)."""
    model, cfg = load_run(run_dir)
    items = expand_inputs(inputs, model.spec.modality, cfg.text_col)
    return predict_items(model, cfg, items, top_k=top_k, batch_size=batch_size, tta=tta,
                         probabilities=probabilities)


def predict_items(model, cfg, items: list[Example], *, top_k: int = 1, batch_size: int = 64,
                  tta: bool | None = None, probabilities: bool = False) -> list[dict]:
    """Top-k rows for examples (image paths or texts) with a loaded run; an unreadable image gets a
    row with `error` (and no label), the others are predicted. `tta`: None = as the run was trained."""
    errors: dict[int, str] = {}
    if model.spec.modality == "image":
        from ..data.images import check_image
        errors = {i: r for i, e in enumerate(items) if (r := check_image(Path(e.x)))}
    good = [e for i, e in enumerate(items) if i not in errors]
    rows = []
    if good:
        ds = make_dataset(model, good, train=False, augment=False, image_size=cfg.image_size, seed=0)
        probs, _ = predict_probs(model, eval_loader(model, ds, batch_size), default_device(),
                                 tta=cfg.tta if tta is None else tta, progress="predict", views=views_of(cfg, tta))
        rows = topk_rows(good, torch.from_numpy(probs), model.class_names, top_k, probabilities=probabilities)
    done = iter(rows)
    return [error_row(e, errors[i]) if i in errors else next(done) for i, e in enumerate(items)]


@torch.no_grad()
def predict_source(source: str, inputs: list[str], *, top_k: int = 5, probabilities: bool = False) -> list[dict]:
    """The source model used as it is, with its own classes (e.g. ImageNet)."""
    from ..data import build_transforms, open_rgb
    from ..models import load_backbone
    bb = load_backbone(source)
    if bb.source_head is None or not bb.source_classes:
        raise SourceError(f"'{source}' has no source classifier to predict with; train a head on it "
                          "with 'transferkit train'")
    items = expand_inputs(inputs, "image")
    _, tf = build_transforms(bb.preprocess, augment=False)
    bb.module.eval()
    bb.source_head.eval()
    x = torch.stack([tf(open_rgb(e.x)) for e in items])
    probs = bb.source_head(bb.module(x)).softmax(-1)
    return topk_rows(items, probs, bb.source_classes, top_k, probabilities=probabilities)
