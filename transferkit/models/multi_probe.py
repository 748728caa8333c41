"""Frozen features from several stages, not only the last (the `multi_probe` strategy).

Head2Toe (Evci et al., ICML 2022) shows that a linear probe on pooled features of intermediate
layers, with a regulariser that selects among them, can beat the final-layer probe when the target
looks unlike the source (drawings, digits, spectrograms). Plain concatenation of everything can also
do worse; so here the selection is explicit and made by cross-validation: the candidates are the
final features plus the outputs of the last `max_extra` stages before them, and the fitted head uses
a prefix of that list (from the top) chosen with its C on held-out folds (`transferkit.engine.fit`).

`MultiStageFeatures` wraps the backbone module: it hooks the candidate stage outputs, global-average
pools each (over H, W for conv maps, over tokens for `[B, T, C]`), concatenates them after the final
features, centres every dimension and scales every block with `shift`/`scale` buffers computed on
the training items. A block's scale is one number, 1 / (its RMS standard deviation x sqrt(its
width)), so every selected block has the same total variance and a wide block does not dominate the
L2 penalty, while the directions inside a block keep their relative sizes. Scaling every dimension
by its own standard deviation instead was worse at few labels: estimated on ten to a hundred items,
the smallest standard deviations are mostly noise and their dimensions got the largest weights
(`benchmarks/fewshot.py`, 64 px, 3 seeds, multi_probe test accuracy, per dimension -> per block:
digits 0.316 -> 0.540 at 1 label per class, 0.820 -> 0.852 at 5, 0.936 -> 0.942 at 20; clip art
0.177 -> 0.232, 0.380 -> 0.379, 0.507 -> 0.509). A block that is not selected gets scale 0: it is
still computed (cheap next to the backbone) but contributes nothing, and the saved model carries its
own choice.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from .backbone import Backbone, Stage


def stage_output(module: nn.Module, stage: Stage) -> str:
    """The name of the submodule whose output is the stage's output: the common parent of the
    stage's modules when that is a module (a block container), else its last module."""
    names = [m for m in stage.modules if m]
    if not names:
        raise ValueError(f"stage {stage.name} has no modules")
    common: list[str] = []
    for level in zip(*(n.split(".") for n in names)):
        if len(set(level)) > 1:
            break
        common.append(level[0])
    parent = ".".join(common)
    if len(names) > 1 and parent and parent in dict(module.named_modules()):
        return parent
    return names[-1]


def _pool(t) -> torch.Tensor:
    if isinstance(t, (tuple, list)):
        t = t[0]
    if t.ndim == 4:
        return t.mean(dim=(2, 3))
    if t.ndim == 3:
        return t.mean(dim=1)
    return t.flatten(1)


class MultiStageFeatures(nn.Module):
    """`inner(x)`'s pooled features, preceded by pooled outputs of `layers`, standardised."""

    def __init__(self, inner: nn.Module, layers: list[str], dims: list[int]):
        super().__init__()
        self.inner = inner
        self.layers = list(layers)
        self.dims = list(dims)  # per block: one per layer, then the final features
        total = sum(dims)
        self.register_buffer("shift", torch.zeros(total))
        self.register_buffer("scale", torch.ones(total))
        self._maps: dict[str, torch.Tensor] = {}
        known = dict(inner.named_modules())
        for name in self.layers:
            known[name].register_forward_hook(self._hook(name))

    def _hook(self, name: str):
        def hook(_mod, _inp, out):
            self._maps[name] = _pool(out)
        return hook

    def forward(self, x):
        self._maps.clear()
        final = self.inner(x)
        z = torch.cat([self._maps[n] for n in self.layers] + [final], dim=1)
        self._maps.clear()
        return (z - self.shift) * self.scale

    def blocks(self) -> list[slice]:
        out, start = [], 0
        for d in self.dims:
            out.append(slice(start, start + d))
            start += d
        return out

    @torch.no_grad()
    def standardise(self, raw: torch.Tensor, keep: list[bool]) -> None:
        """Set shift/scale from raw (unstandardised) training features `[N, D]`: every dimension
        centred, every block scaled by one number to unit total variance (see the module's
        docstring); blocks with `keep` False get scale 0."""
        mean, var = raw.mean(0), raw.var(0)
        for sl, k, d in zip(self.blocks(), keep, self.dims):
            self.shift[sl] = mean[sl]
            rms_std = var[sl].mean().sqrt().clamp_min(1e-6)
            self.scale[sl] = (1.0 / rms_std / d ** 0.5) if k else 0.0


def candidate_layers(backbone: Backbone, max_extra: int = 3) -> list[str]:
    """Outputs of the last `max_extra` stages before the final one, ordered from the top down."""
    stages = backbone.stages[:-1][-max_extra:] if max_extra else []
    return [stage_output(backbone.module, s) for s in reversed(stages)]


def multi_stage_backbone(backbone: Backbone, max_extra: int = 3) -> Backbone:
    """`backbone` with its module wrapped in MultiStageFeatures over the candidate layers (all of
    them; the choice among them is made later, in the scale buffers). Stage parameter names gain the
    `inner.` prefix so freezing and summaries keep working."""
    if backbone.modality != "image":
        raise ValueError("multi_probe works with image backbones; for text use linear_probe or auto")
    layers = candidate_layers(backbone, max_extra)
    probe = {}
    handles = [dict(backbone.module.named_modules())[n].register_forward_hook(
        lambda _m, _i, o, n=n: probe.__setitem__(n, _pool(o))) for n in layers]
    was = backbone.module.training
    backbone.module.eval()
    with torch.no_grad():
        final = backbone.module(torch.zeros(1, 3, 64, 64))
    backbone.module.train(was)
    for h in handles:
        h.remove()
    dims = [probe[n].shape[1] for n in layers] + [final.shape[1]]
    wrapped = MultiStageFeatures(backbone.module, layers, dims)
    stages = [Stage(s.name, [f"inner.{p}" for p in s.params], [f"inner.{m}" for m in s.modules])
              for s in backbone.stages]
    return dataclasses.replace(backbone, module=wrapped, feature_dim=sum(dims), stages=stages)
