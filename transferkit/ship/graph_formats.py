"""`--format onnx` and `--format torchscript`: the whole run (backbone + head) as one graph.

Images take `pixel_values [B, C, H, W]` (C = 3, or the run's `--in-chans`; normalised as in
`export.json`); text takes the tokenizer's `input_ids`, `attention_mask` (and `token_type_ids` where the tokenizer makes them) `[B, T]`. The
batch axis (and, for text, the sequence axis) is dynamic. Output: `logits [B, K]`.

`model.onnx` carries what a user needs besides the graph in its `metadata_props` (string values,
JSON where structured; see `onnx_metadata`): the class names, task, input size, mean, std, channels,
source and transferkit version, readable with `onnx.load(...).metadata_props` or onnxruntime's
`session.get_modelmeta().custom_metadata_map`. They are written before the file is reloaded for the
parity check, so the checked file is the shipped one.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn


class _TextLogits(nn.Module):
    """Positional tensor inputs instead of the tokenizer's dict, which graph exporters need."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            batch["token_type_ids"] = token_type_ids
        return self.model(batch)


def input_names(model, sample) -> list[str]:
    if model.spec.modality == "image":
        return ["pixel_values"]
    return [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in sample]


def _as_args(model, names: list[str], x) -> tuple:
    return (x,) if model.spec.modality == "image" else tuple(x[n] for n in names)


def _graph_module(model, names: list[str]) -> nn.Module:
    return model if model.spec.modality == "image" else _TextLogits(model)


def onnx_metadata(*, task: str, classes: list[str], source: dict | None, modality: str = "image",
                  size: int | None = None, mean=None, std=None, max_length: int | None = None) -> dict[str, str]:
    """`metadata_props` of an exported `model.onnx`: every value a string, lists and dicts as JSON."""
    from .. import __version__
    meta: dict = {"task": task, "classes": list(classes), "modality": modality}
    if modality == "image":
        meta.update(input_size=int(size), mean=[float(v) for v in mean], std=[float(v) for v in std],
                    channels=len(mean))
    else:
        meta.update(max_length=int(max_length))
    meta.update(source=dict(source or {}), transferkit_version=__version__)
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}


def classifier_metadata(model, cfg) -> dict[str, str]:
    """`onnx_metadata` of a classification run (image or text)."""
    from ..engine.predictor import preprocess_of
    pre = preprocess_of(model, cfg)
    common = dict(task="classify", classes=list(model.class_names), source=model.spec.source.to_dict(),
                  modality=model.spec.modality)
    if model.spec.modality == "image":
        return onnx_metadata(**common, size=pre["size"], mean=pre["mean"], std=pre["std"])
    return onnx_metadata(**common, max_length=pre["max_length"])


def write_onnx(model, out: Path, sample, metadata: dict[str, str] | None = None) -> list[str]:
    names = input_names(model, sample)
    module = _graph_module(model, names).eval()
    batch = torch.export.Dim("batch", min=1)
    if model.spec.modality == "image":
        shapes = ({0: batch},)
    else:
        seq = torch.export.Dim("sequence", min=1, max=int(model.spec.preprocess.max_length))
        shapes = {n: {0: batch, 1: seq} for n in names}
    args = _as_args(model, names, sample)
    if model.spec.modality == "text" and args[0].shape[0] < 2:
        args = tuple(torch.cat([a, a]) for a in args)  # a batch of 1 would be specialised to 1
    export_onnx(module, args, out / "model.onnx", names, ["logits"], shapes, metadata)
    return ["model.onnx"]


def export_onnx(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str],
                shapes, metadata: dict[str, str] | None = None) -> None:
    """torch.onnx's dynamo exporter, one file (no external data), `metadata` set as the model's
    `metadata_props`, checked by onnx's checker."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs,
                          dynamic_shapes=shapes, dynamo=True, external_data=False, verbose=False)
    import onnx
    if metadata:
        proto = onnx.load(str(path))
        onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props}, **metadata})
        onnx.save(proto, str(path))
    onnx.checker.check_model(str(path))


def load_onnx(model, out: Path, names: list[str]):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(str(out / "model.onnx"), opts, providers=["CPUExecutionProvider"])

    def run(x) -> np.ndarray:
        feed = {n: a.numpy() for n, a in zip(names, _as_args(model, names, x))}
        return session.run(["logits"], feed)[0]
    return run


def write_torchscript(model, out: Path, sample) -> list[str]:
    names = input_names(model, sample)
    module = _graph_module(model, names).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated upstream but is what was asked for
        traced = torch.jit.trace(module, _as_args(model, names, sample), check_trace=False)
        torch.jit.save(traced, str(out / "model.pt"))
    return ["model.pt"]


def load_torchscript(model, out: Path, names: list[str]):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = torch.jit.load(str(out / "model.pt"), map_location="cpu").eval()

    def run(x) -> np.ndarray:
        with torch.no_grad():
            return loaded(*_as_args(model, names, x)).numpy()
    return run
