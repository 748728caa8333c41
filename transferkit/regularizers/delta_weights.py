"""DELTA's channel weights: how much the source classifier needs each channel of a layer.

Li et al., "DELTA: Deep Learning Transfer using Feature Map with Attention for Convolutional
Networks", ICLR 2019, eq. 5:

    W_j = softmax_c( L(z(x, w0 with channel c of layer j set to zero), y) - L(z(x, w0), y) )

``z`` is the source network followed by a classifier fitted on its frozen features for the target
labels, ``L`` its loss on target data. One ablation per channel is one forward pass per channel, a
few thousand passes for the top stages of an ImageNet CNN. The ablations are therefore batched: the
network runs once up to layer ``j``, and the layer's output is repeated once per ablated channel
(``[K * n, ...]``, channel ``c_k`` zeroed in copy ``k``), so only the part after layer ``j`` runs
``K`` times. That is exact for networks whose layers after ``j`` treat samples independently and
take nothing from before ``j`` (stage outputs of a CNN in eval mode); every layer is checked with an
un-ablated copy against the plain loss. Where the batched pass fails or disagrees because a tensor
with the original batch size meets the repeated one (a transformer's attention mask), it is run item
by item (a batch of one repeats cleanly); failing that, one full pass per channel.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn

from .delta import call_backbone, capture_feature_maps, channel_axis, find_modules

_MAX_BATCH = 256  # samples per batched-ablation forward (K copies x n items)


@contextlib.contextmanager
def _zeroed(module: nn.Module, channels: list[int]) -> Iterator[None]:
    """Replace `module`'s output ``[n, ...]`` by ``len(channels)`` copies stacked on the batch axis,
    copy ``k`` with channel ``channels[k]`` set to zero (``-1``: nothing zeroed)."""

    def hook(_mod, _inp, out):
        first = out[0] if isinstance(out, (tuple, list)) else out
        axis = channel_axis(first.ndim) % first.ndim
        mask = torch.ones(len(channels), first.shape[axis], device=first.device, dtype=first.dtype)
        for k, c in enumerate(channels):
            if c >= 0:
                mask[k, c] = 0
        shape = [len(channels)] + [1] * first.ndim
        shape[axis + 1] = first.shape[axis]
        rep = (first.unsqueeze(0) * mask.view(shape)).flatten(0, 1)
        return type(out)([rep, *out[1:]]) if isinstance(out, (tuple, list)) else rep

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _ablated_losses(source, head, module, channels, x, y, loss_fn) -> list[float] | None:
    """Loss of each ablation in `channels` on one batch by one batched pass; None if the network
    does not accept a repeated batch at this layer."""
    try:
        with _zeroed(module, channels):
            logits = head(call_backbone(source, x))
    except (RuntimeError, ValueError, IndexError):
        return None
    if logits.shape[0] != len(channels) * len(y):
        return None
    logits = logits.view(len(channels), len(y), *logits.shape[1:])
    return [float(loss_fn(logits[k], y)) for k in range(len(channels))]


def _batched(source, head, module, n_channels, x, y, base, loss_fn) -> list[float] | None:
    """Loss with each channel of `module` zeroed, on one batch, by batched passes; None if the
    network does not accept them (or the un-ablated check copy disagrees with `base`)."""
    per_pass = max(1, _MAX_BATCH // max(1, len(y)))
    todo = [-1] + list(range(n_channels))  # -1: the un-ablated check copy
    out: list[float] = []
    while todo:
        chunk, todo = todo[:per_pass], todo[per_pass:]
        got = _ablated_losses(source, head, module, chunk, x, y, loss_fn)
        if got is None or (chunk[0] == -1 and abs(got[0] - base) > 1e-4 * max(1.0, abs(base))):
            return None
        out += [v for c, v in zip(chunk, got) if c >= 0]
    return out


def _item(x, i: int):
    return {k: v[i:i + 1] for k, v in x.items()} if isinstance(x, dict) else x[i:i + 1]


def _layer_increases(source, head, module, n_channels, batches, base, loss_fn) -> list[float]:
    """Mean loss increase over `batches` for zeroing each channel of `module`.

    Batched passes on the whole batch first; if the network refuses them (a tensor with the
    original batch size meets the repeated one, e.g. a transformer's attention mask), batched
    passes item by item (the loss is a batch mean, so the batch's loss is the mean of its items');
    failing that, one full pass per channel."""
    total = [0.0] * n_channels
    for (x, y), b in zip(batches, base):
        out = _batched(source, head, module, n_channels, x, y, b, loss_fn)
        if out is None and len(y) > 1:
            items = []
            for i in range(len(y)):
                xi, yi = _item(x, i), y[i:i + 1]
                items.append(_batched(source, head, module, n_channels, xi, yi,
                                      float(loss_fn(head(call_backbone(source, xi)), yi)), loss_fn))
                if items[-1] is None:
                    break
            if items[-1] is not None:
                out = [sum(v[c] for v in items) / len(items) for c in range(n_channels)]
        if out is None:  # one full pass per channel
            out = []
            for c in range(n_channels):
                with _zeroed(module, [c]):
                    out.append(float(loss_fn(head(call_backbone(source, x)), y)))
        for c in range(n_channels):
            total[c] += (out[c] - b) / len(batches)
    return total


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
    ``(inputs, labels)``, already on the backbone's device; it is materialised as a list: pass a few
    batches, not a whole dataset). ``loss_fn`` must reduce to the batch mean. ``head`` is a classifier
    for the target labels on the source features (the paper fits it with the backbone frozen before
    computing the weights). Both run in eval mode (restored afterwards). Returns
    ``{layer: float32 tensor [C_j]}`` on the CPU, each summing to 1.
    """
    batches = list(batches)
    if not batches:
        raise ValueError("delta_channel_weights needs at least one (inputs, labels) batch")
    was_training = (source_backbone.training, head.training)
    source_backbone.eval()
    head.eval()
    try:
        base = [float(loss_fn(head(call_backbone(source_backbone, x)), y)) for x, y in batches]
        weights = {}
        for name, mod in find_modules(source_backbone, layer_names).items():
            with capture_feature_maps(source_backbone, [name]) as maps:
                call_backbone(source_backbone, batches[0][0])
            fm = maps[name]
            n_channels = fm.shape[channel_axis(fm.ndim)]
            increase = _layer_increases(source_backbone, head, mod, n_channels, batches, base, loss_fn)
            weights[name] = torch.softmax(torch.tensor(increase, dtype=torch.float64), 0).float()
        return weights
    finally:
        source_backbone.train(was_training[0])
        head.train(was_training[1])
