"""DELTA: keep the target's feature maps close to the source's, weighted by channel attention.

Li et al., "DELTA: Deep Learning Transfer using Feature Map with
Attention for Convolutional Networks", ICLR 2019:

    Omega(w, w0, x) = alpha * sum_j sum_c W_{j,c} * || FM_{j,c}(w, x) - FM_{j,c}(w0, x) ||_2^2

``FM_{j,c}(w, x)`` is channel ``c`` of the output of layer ``j`` for input ``x`` under weights ``w``
(the model being trained) or ``w0`` (a frozen copy of the source backbone). ``|| . ||_2^2`` is the
sum of squares over every spatial position / token of that channel, for one sample. The term is the
mean of that per-sample quantity over the batch.

Which axis is the channel axis:

* 3-D maps ``[B, T, C]`` (transformer tokens): the **last** axis; the norm sums over the ``T`` tokens.
* every other rank (``[B, C]``, ``[B, C, H, W]``, ``[B, C, D, H, W]``): axis **1**; the norm sums
  over all axes after it.

A layer whose forward returns a tuple/list (as Hugging Face transformer blocks do) is represented by
its first element. The layers compared are block/stage outputs (the engine hooks
``models.backbone.stage_output`` of the top half of the stages), as in the paper, not layers inside
a block.

The target's maps are the ones of this step's ordinary training forward (captured with
:func:`capture_feature_maps`): the target backbone runs once per step, so its BatchNorm statistics
are updated once. The source network runs once per step, in eval mode and under ``no_grad``. Its
BatchNorm layers use their running statistics (``--bn frozen`` / ``eval``), or, with
``source_bn="batch"`` (``--bn adapt``), the statistics of the current batch, without updating their
stored ones.

Channel weights ``W_j`` (the paper's "attention"): for each channel ``c`` of layer ``j``, the increase
of the source model's classification loss when that channel's output is set to zero, softmax-normalised
over the channels of the layer (:func:`delta_channel_weights`; the classifier is one fitted on the
frozen source features of target data). Without them every channel gets ``1/C_j`` (the paper's
feature-map variant without attention).

The paper also adds a plain L2 penalty on the new head; here that is the optimizer's ordinary weight
decay, which stays on, so :meth:`DELTA.no_weight_decay` returns nothing.
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Iterable, Iterator

import torch
from torch import nn

from .parsing import BadPart, number


def channel_axis(ndim: int) -> int:
    """The channel axis of a feature map of rank ``ndim`` (see the module docstring)."""
    if ndim < 2:
        raise ValueError(f"a feature map needs a batch and a channel axis, got rank {ndim}")
    return -1 if ndim == 3 else 1


def _first_tensor(output, layer: str) -> torch.Tensor:
    if isinstance(output, (tuple, list)):
        output = output[0]
    if not isinstance(output, torch.Tensor):
        raise TypeError(f"layer '{layer}' returned {type(output).__name__}, not a tensor or tuple")
    return output


def find_modules(module: nn.Module, layer_names: Iterable[str]) -> dict[str, nn.Module]:
    layer_names = list(layer_names)
    if not layer_names:
        return {}
    known = dict(module.named_modules())
    found = {}
    for name in layer_names:
        if name not in known:
            names = [k for k in known if k]
            near = difflib.get_close_matches(name, names, n=3)
            hint = f"nearest: {near}" if near else f"some names: {names[:8]}"
            raise ValueError(f"no submodule named '{name}' in {type(module).__name__}; {hint}")
        found[name] = known[name]
    return found


@contextlib.contextmanager
def capture_feature_maps(module: nn.Module, layer_names: Iterable[str]) -> Iterator[dict]:
    """Record the outputs of named submodules during the forwards run inside the ``with`` block.

    ``layer_names`` are names from ``module.named_modules()`` (e.g. ``"blocks.5"``). The yielded dict
    maps each name to that layer's latest output (first element if it returns a tuple), not detached,
    so gradients flow through it. Hooks are removed on exit::

        with capture_feature_maps(model.backbone, delta.layer_names) as maps:
            logits = model(x)
        loss = ce(logits, y) + delta(model, features, maps, inputs=x)
    """
    maps: dict[str, torch.Tensor] = {}
    handles = []

    def hook_for(name):
        def hook(_mod, _inp, out):
            maps[name] = _first_tensor(out, name)

        return hook

    try:
        for name, mod in find_modules(module, layer_names).items():
            handles.append(mod.register_forward_hook(hook_for(name)))
        yield maps
    finally:
        for h in handles:
            h.remove()


def _per_channel_sq_norm(diff: torch.Tensor) -> torch.Tensor:
    """``[B, C]``: for each sample and channel, the sum of squares over the non-channel axes."""
    if diff.dtype in (torch.float16, torch.bfloat16):
        diff = diff.float()
    axis = channel_axis(diff.ndim)
    sq = diff * diff
    if axis == -1:
        sq = sq.movedim(-1, 1)
    return sq.flatten(2).sum(2) if sq.ndim > 2 else sq


SOURCE_BN = ("running", "batch")
_BN = nn.modules.batchnorm._BatchNorm


@contextlib.contextmanager
def _batch_statistics(module: nn.Module) -> Iterator[None]:
    """BatchNorm layers of an eval-mode `module` normalise with the current batch's statistics and
    leave their stored running statistics as they were (PyTorch uses batch statistics when the
    running buffers are None, and then has nothing to update)."""
    saved = [(m, m.running_mean, m.running_var) for m in module.modules() if isinstance(m, _BN)]
    try:
        for m, _, _ in saved:
            m.running_mean, m.running_var = None, None
        yield
    finally:
        for m, mean, var in saved:
            m.running_mean, m.running_var = mean, var


def call_backbone(backbone: nn.Module, inputs):
    # every transferkit backbone (TextEncoder included) takes the batch as one positional argument
    return backbone(inputs)


class DELTA:
    """``alpha * sum_j sum_c W_jc * mean_b ||FM_jc(w, x_b) - FM_jc(w0, x_b)||^2`` (Li et al., ICLR 2019).

    Args:
        source_model: a frozen copy of the source backbone (e.g. ``copy.deepcopy(model.backbone)``
            taken before training). It is put in eval mode, its parameters stop requiring grad, and it
            is moved to the device of the features on first use.
        layer_names: names inside the backbone (``model.backbone.named_modules()``) whose outputs
            are compared, e.g. ``["blocks.3", "blocks.5"]``.
        alpha: strength of the term.
        channel_weights: ``{layer: tensor [C]}`` from :func:`delta_channel_weights`; ``None`` gives
            every channel ``1/C``.
        source_bn: ``"running"`` (BatchNorm of the source copy uses its running statistics) or
            ``"batch"`` (the current batch's statistics; the stored ones are never updated).

    ``__call__`` needs this step's ``inputs`` (run through the source copy, under ``no_grad``) and the
    target's ``feature_maps`` captured during the normal forward with :func:`capture_feature_maps`
    (one target forward per step; running the target again would update its BatchNorm statistics
    twice). ``inputs`` go to the backbone as its one argument.

    The source copy always runs in eval mode (no dropout). If the target's BatchNorm layers use batch
    statistics while training and the source's use running ones, the term is not zero at step 0 even
    though the weights are equal.
    """

    needs_feature_maps = True

    def __init__(
        self,
        source_model: nn.Module,
        layer_names: list[str],
        alpha: float,
        channel_weights: dict[str, torch.Tensor] | None = None,
        source_bn: str = "running",
    ):
        if source_bn not in SOURCE_BN:
            raise ValueError(f"DELTA source_bn must be one of {SOURCE_BN}, got '{source_bn}'")
        if alpha < 0:
            raise ValueError(f"DELTA needs alpha >= 0, got {alpha}")
        if not layer_names:
            raise ValueError("DELTA needs at least one layer name")
        find_modules(source_model, layer_names)  # fail early on a bad name
        self.source_model = source_model.eval().requires_grad_(False)
        self.layer_names = list(layer_names)
        self.alpha = float(alpha)
        if channel_weights is not None:
            missing = [n for n in self.layer_names if n not in channel_weights]
            if missing:
                raise ValueError(f"DELTA channel_weights lack layers {missing}")
            channel_weights = {n: channel_weights[n].detach().flatten() for n in self.layer_names}
        self.channel_weights = channel_weights
        self.source_bn = source_bn
        self._device: torch.device | None = None

    def _source_maps(self, inputs, device: torch.device) -> dict[str, torch.Tensor]:
        if self._device != device:
            self.source_model.to(device)
            self._device = device
        if self.source_model.training:  # a parent's .train() may have reached it
            self.source_model.eval()
        stats = _batch_statistics(self.source_model) if self.source_bn == "batch" else contextlib.nullcontext()
        with torch.no_grad(), stats, capture_feature_maps(self.source_model, self.layer_names) as maps:
            call_backbone(self.source_model, inputs)
        return maps

    def _weights(self, name: str, channels: int, like: torch.Tensor) -> torch.Tensor:
        if self.channel_weights is None:
            return torch.full((channels,), 1.0 / channels, device=like.device, dtype=like.dtype)
        w = self.channel_weights[name]
        if w.numel() != channels:
            raise ValueError(
                f"DELTA channel_weights['{name}'] has {w.numel()} entries, the layer has {channels} channels"
            )
        return w.to(device=like.device, dtype=like.dtype)

    def __call__(self, model, features, feature_maps=None, inputs=None) -> torch.Tensor:
        if inputs is None:
            raise ValueError("DELTA needs this step's inputs to run the source model on them")
        if feature_maps is None:
            raise ValueError("DELTA needs the target's feature_maps from this step's forward: run it "
                             "inside capture_feature_maps(model.backbone, delta.layer_names)")
        missing = [n for n in self.layer_names if n not in feature_maps]
        if missing:
            raise ValueError(f"DELTA: feature_maps lack layers {missing}; capture them with capture_feature_maps")
        device = features.device if features is not None else next(model.parameters()).device
        source = self._source_maps(inputs, device)
        total = torch.zeros((), device=device)
        for name in self.layer_names:
            target_map, source_map = feature_maps[name], source[name]
            if target_map.shape != source_map.shape:
                raise ValueError(
                    f"DELTA: layer '{name}' map shape {tuple(target_map.shape)} differs from the "
                    f"source's {tuple(source_map.shape)}"
                )
            sq = _per_channel_sq_norm(target_map - source_map)  # [B, C]
            w = self._weights(name, sq.shape[1], sq)
            total = total + (sq * w).sum(1).mean(0)
        return self.alpha * total

    def no_weight_decay(self, model: nn.Module) -> set[str]:
        return set()

    def __repr__(self) -> str:
        kind = "uniform" if self.channel_weights is None else "attention"
        return (f"DELTA(alpha={self.alpha}, layers={self.layer_names}, weights={kind}, "
                f"source_bn={self.source_bn})")


# --reg delta:... (regularizers/spec.py)
SPEC_FORMS = ("delta:ALPHA",)
NEEDS_SOURCE_MODEL = True  # the engine sets up a frozen source copy and the layers to compare


def parse(args: list[str]) -> dict:
    if len(args) != 1:
        raise BadPart("delta takes a single ALPHA")
    return {"alpha": number("ALPHA", args[0])}


def spell(p: dict) -> str:
    return f"delta:{p['alpha']}"


def build(p: dict, ctx) -> DELTA:
    if ctx.source_model is None:
        raise ValueError(
            "delta needs source_model: a frozen copy of the source backbone "
            "(e.g. copy.deepcopy(model.backbone) before training)"
        )
    if not ctx.layer_names:
        raise ValueError("delta needs layer_names: names inside the backbone whose outputs are compared")
    return DELTA(ctx.source_model, ctx.layer_names, p["alpha"], ctx.channel_weights, source_bn=ctx.source_bn)
