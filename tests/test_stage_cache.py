"""The frozen-stage cache (transferkit/engine/stage_cache.py): partial:K without augmentation trains
on stored outputs of the frozen stages and ends with the weights of the plain loop."""

from contextlib import nullcontext
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from transferkit.cli.main import main
from transferkit.data.splits import Example
from transferkit.engine.stage_cache import stage_cache_for
from transferkit.models.backbone import Backbone, ImagePreprocess, SourceInfo, Stage
from transferkit.models.heads import attach_head

TINY = "timm:test_resnet@random"


def _train(data, out, *extra):
    assert main(["train", str(data), "--backbone", TINY, "--image-size", "32", "--steps", "5", "--batch-size", "8",
                 "--no-augment", "--out", str(out), *extra]) == 0
    return load_file(str(out / "last" / "model.safetensors"))


@pytest.mark.parametrize("strategy", ["partial:1", "partial:2"])
def test_cached_frozen_stages_give_the_weights_of_the_plain_loop(image_folder, tmp_path, capsys, strategy):
    cached = _train(image_folder, tmp_path / "cached", "--strategy", strategy)
    said = capsys.readouterr().out
    plain = _train(image_folder, tmp_path / "plain", "--strategy", strategy, "--no-stage-cache")
    assert "frozen-stage cache: stages 0-" in said  # the cache was used, not silently skipped
    assert "frozen-stage cache" not in capsys.readouterr().out
    moved = 0
    for k in plain:  # every tensor, BatchNorm statistics of the trained tail included
        torch.testing.assert_close(cached[k], plain[k], rtol=0, atol=1e-5)
        moved += k.startswith("head.")
    assert moved


def test_batchnorm_that_adapts_turns_the_cache_off(image_folder, tmp_path, capsys):
    _train(image_folder, tmp_path / "adapt", "--strategy", "partial:1", "--bn", "adapt")
    assert "frozen-stage cache off: BatchNorm" in capsys.readouterr().out


class _Skip(nn.Module):
    """conv a -> conv c (both frozen) -> conv b (trains) + a's output: a skip across the boundary."""

    def __init__(self, skip: bool):
        super().__init__()
        self.a, self.c, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)
        self.skip = skip

    def forward(self, x):
        h = self.a(x)
        out = self.b(self.c(h))
        return (out + h if self.skip else out).mean((2, 3))


class _Items(torch.utils.data.Dataset):
    def __init__(self, n):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, 8, 8, generator=g)
        self.items = [Example(f"{i}.png", "ab"[i % 2]) for i in range(n)]
        self.class_to_idx = {"a": 0, "b": 1}

    def __len__(self):
        return len(self.items)

    def __getitem__(self, key):
        i = key[0] if isinstance(key, tuple) else key
        return self.x[i], i % 2


def _model(skip: bool):
    torch.manual_seed(0)
    module = _Skip(skip)
    stages = [Stage("a", ["a.weight", "a.bias"], ["a"]), Stage("c", ["c.weight", "c.bias"], ["c"]),
              Stage("b", ["b.weight", "b.bias"], ["b"])]
    bb = Backbone(module, 4, stages, ImagePreprocess((0.5,) * 3, (0.5,) * 3, 8), SourceInfo("t", "t", "h"), "image")
    model = attach_head(bb, ["a", "b"])
    for n, p in module.named_parameters():
        p.requires_grad_(n.startswith("b."))
    return model


def _cache(model, logs):
    cfg = SimpleNamespace(stage_cache=True, augment=False, batch_size=4)
    accel = SimpleNamespace(device=torch.device("cpu"), autocast=nullcontext, num_processes=1)
    return stage_cache_for(model, cfg, [0, 1], _Items(10), [], accel, logs.append)


def test_replayed_forward_skips_the_frozen_modules_and_matches():
    model, logs = _model(skip=False), []
    cache = _cache(model, logs)
    assert cache is not None and cache.boundary == "c", logs
    calls, conv = [], model.backbone.a._conv_forward
    model.backbone.a._conv_forward = lambda *a: calls.append("a") or conv(*a)  # the convolution itself
    x, y = cache.inputs([(3, 0), (4, 0)])
    logits = model(x)
    assert calls == [] and y.tolist() == [1, 0]  # the frozen conv did not run
    torch.testing.assert_close(logits, model(_Items(10).x[[3, 4]]), rtol=0, atol=1e-6)
    assert calls == ["a"]  # and the next forward is the plain one again


def test_a_skip_connection_across_the_boundary_falls_back():
    logs = []
    assert _cache(_model(skip=True), logs) is None
    assert any("differs when the frozen stages are replayed" in m for m in logs)

