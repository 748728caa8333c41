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
its first element.

Channel weights ``W_j`` (the paper's "attention"): for each channel ``c`` of layer ``j``, the increase
of the source model's classification loss when that channel's output is set to zero, softmax-normalised
over the channels of the layer (:func:`delta_channel_weights`). Without them every channel gets
``1/C_j`` (the paper's feature-map variant without attention).

The paper also adds a plain L2 penalty on the new head; here that is the optimizer's ordinary weight
decay, which stays on, so :meth:`DELTA.no_weight_decay` returns nothing.
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn


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


def _find_modules(module: nn.Module, layer_names: Iterable[str]) -> dict[str, nn.Module]:
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
        for name, mod in _find_modules(module, layer_names).items():
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


def _call_backbone(backbone: nn.Module, inputs):
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

    ``__call__`` needs this step's ``inputs`` (run through the source copy, under ``no_grad``) and the
    target's ``feature_maps`` captured during the normal forward with :func:`capture_feature_maps`.
    If ``feature_maps`` is ``None`` the target backbone is run again on ``inputs`` to get them, which
    doubles the backbone cost of the step. ``inputs`` go to the backbone as its one argument.

    The source copy always runs in eval mode (BatchNorm with its running statistics, no dropout).
    If the target's BatchNorm layers use batch statistics while training, the term is not zero at
    step 0 even though the weights are equal.
    """

    def __init__(
        self,
        source_model: nn.Module,
        layer_names: list[str],
        alpha: float,
        channel_weights: dict[str, torch.Tensor] | None = None,
    ):
        if alpha < 0:
            raise ValueError(f"DELTA needs alpha >= 0, got {alpha}")
        if not layer_names:
            raise ValueError("DELTA needs at least one layer name")
        _find_modules(source_model, layer_names)  # fail early on a bad name
        self.source_model = source_model.eval().requires_grad_(False)
        self.layer_names = list(layer_names)
        self.alpha = float(alpha)
        if channel_weights is not None:
            missing = [n for n in self.layer_names if n not in channel_weights]
            if missing:
                raise ValueError(f"DELTA channel_weights lack layers {missing}")
            channel_weights = {n: channel_weights[n].detach().flatten() for n in self.layer_names}
        self.channel_weights = channel_weights
        self._device: torch.device | None = None

    def _source_maps(self, inputs, device: torch.device) -> dict[str, torch.Tensor]:
        if self._device != device:
            self.source_model.to(device)
            self._device = device
        if self.source_model.training:  # a parent's .train() may have reached it
            self.source_model.eval()
        with torch.no_grad(), capture_feature_maps(self.source_model, self.layer_names) as maps:
            _call_backbone(self.source_model, inputs)
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
            with capture_feature_maps(model.backbone, self.layer_names) as feature_maps:
                _call_backbone(model.backbone, inputs)
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
        return f"DELTA(alpha={self.alpha}, layers={self.layer_names}, weights={kind})"


@contextlib.contextmanager
def _zero_channel(module: nn.Module, channel: int) -> Iterator[None]:
    def hook(_mod, _inp, out):
        first = out[0] if isinstance(out, (tuple, list)) else out
        zeroed = first.clone()
        zeroed.select(channel_axis(first.ndim), channel).zero_()
        if isinstance(out, (tuple, list)):
            return type(out)([zeroed, *out[1:]])
        return zeroed

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def delta_channel_weights(
    source_backbone: nn.Module,
    head: nn.Module,
    batches: Iterable,
    layer_names: list[str],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> dict[str, torch.Tensor]:
    """DELTA's channel attention: ``W_j = softmax_c( L(w0 with channel c of layer j zeroed) - L(w0) )``.

    ``L`` is the mean of ``loss_fn(head(source_backbone(x)), y)`` over ``batches`` (an iterable of
    ``(inputs, labels)``, already on the backbone's device; it is read ``1 + sum_j C_j`` times, so it
    is materialised as a list first: pass a few batches, not a whole dataset). ``head`` is a
    classifier for the target labels on the source features (the paper fits it with the backbone
    frozen before computing the weights). Returns ``{layer: float32 tensor [C_j]}`` on the CPU,
    each summing to 1.
    """
    batches = list(batches)
    if not batches:
        raise ValueError("delta_channel_weights needs at least one (inputs, labels) batch")
    was_training = (source_backbone.training, head.training)
    source_backbone.eval()
    head.eval()

    def mean_loss() -> float:
        losses = [float(loss_fn(head(_call_backbone(source_backbone, x)), y)) for x, y in batches]
        return sum(losses) / len(losses)

    try:
        base = mean_loss()
        modules = _find_modules(source_backbone, layer_names)
        weights = {}
        for name, mod in modules.items():
            with capture_feature_maps(source_backbone, [name]) as maps:
                _call_backbone(source_backbone, batches[0][0])
            fm = maps[name]
            channels = fm.shape[channel_axis(fm.ndim)]
            increase = []
            for c in range(channels):
                with _zero_channel(mod, c):
                    increase.append(mean_loss() - base)
            weights[name] = torch.softmax(torch.tensor(increase, dtype=torch.float64), 0).float()
        return weights
    finally:
        source_backbone.train(was_training[0])
        head.train(was_training[1])
