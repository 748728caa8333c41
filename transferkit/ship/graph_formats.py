"""`--format onnx` and `--format torchscript`: the whole run (backbone + head) as one graph.

Images take `pixel_values [B, C, H, W]` (C = 3, or the run's `--in-chans`; normalised as in
`export.json`); text takes the tokenizer's `input_ids`, `attention_mask` (and `token_type_ids` where the tokenizer makes them) `[B, T]`. The
batch axis (and, for text, the sequence axis) is dynamic. Output: `logits [B, K]`.
"""

from __future__ import annotations

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


def write_onnx(model, out: Path, sample) -> list[str]:
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
    export_onnx(module, args, out / "model.onnx", names, ["logits"], shapes)
    return ["model.onnx"]


def export_onnx(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str],
                shapes) -> None:
    """torch.onnx's dynamo exporter, one file (no external data), checked by onnx's checker."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs,
                          dynamic_shapes=shapes, dynamo=True, external_data=False, verbose=False)
    import onnx
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
