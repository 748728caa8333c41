"""Frozen-stage cache: `partial:K` (and `stages:0-B`) without augmentation run the frozen stages once.

When the first stages of the backbone are frozen and compute the same thing every epoch (no
augmentation, BatchNorm on running statistics there, no dropout there), their output for each
training item is a constant. The cache computes it once per phase, keeps it on the device, and
every training step then runs only the trainable tail: the frozen modules are not called (they
hand back zeros of their usual shape, which nothing downstream reads; the last of them hands back
the stored output of the batch's items). The loss, gradients and optimizer steps are those of the
uncached run; only batch-size-dependent rounding of the frozen convolutions can differ.

Nothing here names an architecture: the frozen part is found from `model.spec.stages` (the Backbone
contract), the module that ends it by running one batch and watching which frozen module finishes
last, and before the cache is used a batch is run both ways and the logits compared; any mismatch
(a skip connection across the boundary, a random op in the frozen part) falls back to the plain loop.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch
from torch import nn

from ..strategies.freeze import BN_TYPES

CACHE_BYTES = int(float(os.environ.get("TRANSFERKIT_STAGE_CACHE_MB", "1024")) * 2**20)


class _Stop(Exception):
    pass


def _outer_modules(backbone: nn.Module, frozen_params: set[str], stage_modules: list[str]) -> list[str]:
    """The outermost submodules that hold only frozen parameters (a stage's blocks, not their layers)."""
    mods = dict(backbone.named_modules())
    outer: list[str] = []
    for name in stage_modules:
        if not name:  # parameters of the root module itself: used by the root's own forward
            continue
        best, parts = name, name.split(".")
        for i in range(len(parts) - 1, 0, -1):
            ancestor = ".".join(parts[:i])
            held = {f"{ancestor}.{n}" for n, _ in mods[ancestor].named_parameters()}
            if not held <= frozen_params:
                break
            best = ancestor
        if best not in outer and not any(best.startswith(o + ".") for o in outer):
            outer = [o for o in outer if not o.startswith(best + ".")] + [best]
    return outer


class StageCache:
    """Outputs of the frozen stages for every training item, and the patching that replays them."""

    def __init__(self, model, modules: dict[str, nn.Module], boundary: str, shapes: dict, outputs: torch.Tensor,
                 labels: torch.Tensor, input_shape: tuple, device):
        self.model, self.modules, self.boundary = model, modules, boundary
        self.shapes, self.outputs, self.labels = shapes, outputs, labels
        self.input_shape, self.device = input_shape, device
        self._idx: torch.Tensor | None = None

    def inputs(self, idx: list) -> tuple[torch.Tensor, torch.Tensor]:
        """A stand-in input batch for `idx` (indices, or `(index, epoch)` pairs) and its labels; the
        next forward of the model replays the stored frozen outputs of these items."""
        rows = torch.tensor([i[0] if isinstance(i, tuple) else i for i in idx], device=self.outputs.device)
        self._idx = rows
        for name, mod in self.modules.items():
            mod.forward = self._replay(name)  # an instance attribute: shadows the class's forward
        x = torch.zeros((), device=self.device).expand(len(rows), *self.input_shape)
        return x, self.labels[rows.cpu()]

    def _replay(self, name: str):
        def forward(*args, **kwargs):
            n = len(self._idx)
            if name != self.boundary:
                shape, dtype = self.shapes[name]
                return torch.zeros((n, *shape), dtype=dtype, device=self.outputs.device)
            out = self.outputs[self._idx]
            self._restore()
            return out
        return forward

    def _restore(self) -> None:
        for mod in self.modules.values():
            mod.__dict__.pop("forward", None)
        self._idx = None

    @property
    def nbytes(self) -> int:
        return self.outputs.numel() * self.outputs.element_size()


def frozen_prefix(model, frozen: set[int] | list[int]) -> int:
    """How many stages from the input are frozen (0: nothing to cache)."""
    k = 0
    while k in set(frozen):
        k += 1
    return k


def _items(ds, rows: range):
    batch = [ds[(i, 0)] for i in rows]
    return torch.stack([x for x, _ in batch])


def stage_cache_for(model, cfg, frozen, train_ds, regularizer_maps, accel, log) -> StageCache | None:
    """A `StageCache` for this phase, or None when the frozen part is not deterministic or not a
    prefix of the backbone (then training runs as usual). Call after `set_train_mode`."""
    k = frozen_prefix(model, frozen)
    if not cfg.stage_cache or cfg.augment or k == 0 or k >= model.spec.num_stages:
        return None  # augmentation changes the pixels every epoch: nothing to keep
    device, autocast, batch_size = accel.device, accel.autocast, cfg.batch_size * 2
    why = None
    if model.spec.modality != "image" or not len(train_ds):
        why = "only image inputs are cached"
    elif regularizer_maps:
        why = "a regularizer reads the frozen stages' feature maps"
    elif accel.num_processes > 1:
        why = "not under several processes"
    if why:
        log(f"frozen-stage cache off: {why}")
        return None
    backbone = model.backbone
    stages = model.spec.stages[:k]
    frozen_params = {p for s in stages for p in s.params}
    names = _outer_modules(backbone, frozen_params, [m for s in stages for m in s.modules])
    all_mods = dict(backbone.named_modules())
    modules = {n: all_mods[n] for n in names}
    if any(isinstance(m, BN_TYPES) and m.training for mod in modules.values() for m in mod.modules()):
        log("frozen-stage cache off: BatchNorm in the frozen stages updates its statistics (--bn adapt)")
        return None
    probe = _probe(model, modules, _items(train_ds, range(min(2, len(train_ds)))).to(device), autocast)
    if probe is None:
        log("frozen-stage cache off: the frozen modules do not run once each, in order, before the rest")
        return None
    boundary, shapes, input_shape = probe
    n = len(train_ds)
    per_item = torch.Size(shapes[boundary][0]).numel() * torch.empty((), dtype=shapes[boundary][1]).element_size()
    if n * per_item > CACHE_BYTES:
        log(f"frozen-stage cache off: {n * per_item / 2**20:.0f} MB > TRANSFERKIT_STAGE_CACHE_MB")
        return None
    outputs = _compute(model, modules[boundary], train_ds, device, autocast, batch_size)
    labels = torch.tensor([train_ds.class_to_idx.get(e.label, -1) for e in train_ds.items])
    cache = StageCache(model, modules, boundary, shapes, outputs, labels, input_shape, device)
    if not _agrees(model, cache, train_ds, device, autocast):
        log("frozen-stage cache off: the model's output differs when the frozen stages are replayed")
        return None
    log(f"frozen-stage cache: stages 0-{k - 1} computed once ({n} items, {cache.nbytes / 2**20:.1f} MB "
        f"at '{boundary}'); each step runs the trainable tail only")
    return cache


@contextmanager
def _eval_mode(model):
    flags = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, t in flags.items():
            m.training = t


def _probe(model, modules: dict[str, nn.Module], x: torch.Tensor, autocast):
    """(boundary, {name: (per-item shape, dtype)}, per-item input shape), or None when the frozen
    modules are not each called once before any trainable parameter is used."""
    calls: list[str] = []
    shapes: dict = {}
    trainable = [m for m in model.modules() if any(p.requires_grad for p in m.parameters(recurse=False))]
    hooks = []
    for name, mod in modules.items():
        def hook(_m, _a, out, name=name):
            calls.append(name)
            if isinstance(out, torch.Tensor):
                shapes[name] = (tuple(out.shape[1:]), out.dtype)
        hooks.append(mod.register_forward_hook(hook))
    for m in trainable:
        hooks.append(m.register_forward_pre_hook(lambda *_: calls.append(None)))
    try:
        with torch.no_grad(), _eval_mode(model), autocast():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    first_trainable = calls.index(None) if None in calls else len(calls)
    done, rest = calls[:first_trainable], calls[first_trainable:]
    if sorted(done) != sorted(modules) or any(c is not None for c in rest) or len(shapes) != len(modules):
        return None
    return done[-1], shapes, tuple(x.shape[1:])


def _compute(model, boundary: nn.Module, ds, device, autocast, batch_size: int) -> torch.Tensor:
    """The boundary module's output for every item, in the training modes of the phase."""
    out: list[torch.Tensor] = []

    def hook(_m, _a, y):
        out.append(y.detach())
        raise _Stop

    h = boundary.register_forward_hook(hook)
    try:
        for i in range(0, len(ds), batch_size):
            x = _items(ds, range(i, min(len(ds), i + batch_size))).to(device)
            with torch.no_grad(), autocast():
                try:
                    model(x)
                except _Stop:
                    pass
    finally:
        h.remove()
    return torch.cat(out)


def _agrees(model, cache: StageCache, ds, device, autocast) -> bool:
    """Logits of one batch through the full model and through the cache, the same RNG for both
    (dropout in the tail), the model's buffers (BatchNorm statistics of the tail) put back after."""
    rows = list(range(min(4, len(ds))))  # a few items: what is checked is the wiring, not rounding
    x = _items(ds, rows).to(device)
    buffers = [(b, b.clone()) for b in model.buffers()]
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]), autocast():
            low = torch.is_autocast_enabled(torch.device(device).type)
            torch.manual_seed(0)
            plain = model(x).float()
            torch.manual_seed(0)
            stand_in, _ = cache.inputs(rows)
            replayed = model(stand_in).float()
    except RuntimeError:  # e.g. an in-place op on the stand-in input
        return False
    finally:
        cache._restore()
        for b, saved in buffers:
            b.copy_(saved)
    tol = 3e-2 if low else 1e-3
    return bool(torch.allclose(plain, replayed, rtol=tol, atol=tol * (1 + plain.abs().max().item())))
