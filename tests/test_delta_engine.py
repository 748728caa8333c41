"""DELTA as in Li et al. (ICLR 2019) inside the engine (issue 9, defect 7): channel weights from the
source classifier, block/stage outputs, one target forward per step, the source copy in eval mode
with BatchNorm as the --bn policy says; DELTA and BSS end to end through `transferkit train`."""

import copy
import csv
import math

import pytest
import torch
from conftest import write_image_folder
from safetensors.torch import load_file
from torch import nn

from transferkit.cli import main
from transferkit.config import make_config
from transferkit.engine.build import build_model, build_regularizers_for
from transferkit.regularizers import DELTA, capture_feature_maps, delta_channel_weights

TINY = "timm:test_resnet@random"


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("delta") / "images")


def _train(images, out, reg, *extra):
    return main(["train", str(images), "--backbone", TINY, "--image-size", "32", "--batch-size", "8",
                 "--steps", "3", "--strategy", "full", "--reg", reg, "--out", str(out), "--quiet", *extra])


def _finite_train_losses(run):
    with open(run / "history.csv", newline="") as f:
        losses = [float(r["train_loss"]) for r in csv.DictReader(f) if r["train_loss"]]
    assert losses and all(math.isfinite(v) for v in losses)
    return losses


@pytest.fixture(scope="module")
def delta_run(images, tmp_path_factory):
    """One `transferkit train --reg delta:0.01 --bn frozen` run of 3 steps, recording the DELTA
    instance, whether each call got the maps of its own step's forward, and the target backbone's
    forwards with autograd on (the training forwards)."""
    seen = {"delta": None, "maps": [], "grad_forwards": 0}
    original = DELTA.__call__

    def recording_call(self, model, features, feature_maps=None, inputs=None):
        seen["delta"] = self
        seen["maps"].append(feature_maps is not None and set(self.layer_names) <= set(feature_maps))
        return original(self, model, features, feature_maps, inputs)

    def count(module, _inp, _out):
        if type(module).__name__ == "ResNet" and torch.is_grad_enabled():
            seen["grad_forwards"] += 1

    run = tmp_path_factory.mktemp("delta_run") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(DELTA, "__call__", recording_call)
        handle = nn.modules.module.register_module_forward_hook(count)
        try:
            assert _train(images, run, "delta:0.01", "--bn", "frozen") == 0
        finally:
            handle.remove()
    return run, seen


def test_delta_compares_stage_outputs(delta_run):
    """Failed before the fix: the layers were the last BatchNorm inside a block
    (`layer2.0.downsample.2`, ...), not the blocks' outputs."""
    _, seen = delta_run
    assert seen["delta"].layer_names == ["layer2", "layer3", "layer4"]  # stages 2-4 of 5, whole blocks


def test_delta_channel_weights_come_from_the_source_classifier(delta_run):
    """Failed before the fix: the CLI path weighed every channel 1/C."""
    _, seen = delta_run
    delta = seen["delta"]
    assert delta.channel_weights is not None
    with torch.no_grad(), capture_feature_maps(delta.source_model, delta.layer_names) as maps:
        delta.source_model(torch.randn(2, 3, 32, 32))
    for name, w in delta.channel_weights.items():
        channels = maps[name].shape[1]
        assert w.shape == (channels,)
        assert w.sum().item() == pytest.approx(1.0, abs=1e-5)
        assert (w.max() - w.min()).item() > 1e-3 / channels, name  # not uniform


def test_delta_runs_the_target_backbone_once_per_step(delta_run):
    """Failed before the fix: the target backbone ran twice per step (the training forward, then
    again for DELTA's maps), so its BatchNorm statistics moved twice per step."""
    run, seen = delta_run
    assert seen["maps"] == [True] * 3  # each step handed DELTA the maps of its own forward
    assert seen["grad_forwards"] == 3
    weights = load_file(str(run / "last" / "model.safetensors"))
    tracked = [v.item() for k, v in weights.items() if k.endswith("num_batches_tracked")]
    assert tracked and all(t == 3 for t in tracked)  # trainable BatchNorm (--bn frozen): 1 per step
    _finite_train_losses(run)


def _per_channel_reference(backbone, head, x, y, name, channels):
    """Loss increase per zeroed channel, one plain forward per channel."""
    loss = nn.CrossEntropyLoss()
    mod = dict(backbone.named_modules())[name]
    base = loss(head(backbone(x)), y).item()
    out = []
    for c in range(channels):
        def zero(_m, _i, o, c=c):
            o = o.clone()
            o[:, c] = 0
            return o
        h = mod.register_forward_hook(zero)
        out.append(loss(head(backbone(x)), y).item() - base)
        h.remove()
    return torch.softmax(torch.tensor(out, dtype=torch.float64), 0).float()


class _SkipAcross(nn.Module):
    """`mid` is hooked, and its input also reaches the output around it: a repeated batch at `mid`
    cannot be added to it, so the batched ablation must fall back to one pass per channel."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.mid = nn.Conv2d(4, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        s = torch.relu(self.stem(x))
        return self.pool(torch.relu(self.mid(s)) + s).flatten(1)


@pytest.mark.parametrize("kind", ["sequential", "skip_across"])
def test_batched_channel_ablation_equals_one_pass_per_channel(kind):
    torch.manual_seed(0)
    if kind == "sequential":
        backbone = nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 5, 3),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten())
        name, channels, feat = "2", 6, 5
        backbone[1].running_mean.normal_()  # eval-mode BatchNorm with non-trivial statistics
    else:
        backbone, name, channels, feat = _SkipAcross(), "mid", 4, 4
    head = nn.Linear(feat, 3)
    x, y = torch.randn(7, 3, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2, 0])
    backbone.eval()
    want = _per_channel_reference(backbone, head, x, y, name, channels)
    got = delta_channel_weights(backbone, head, [(x, y)], [name], nn.CrossEntropyLoss())[name]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_channel_weights_on_a_transformer_go_item_by_item(tiny_bert_dir):
    """A BERT layer's repeated output meets the attention mask of the original batch: the batched
    ablation runs item by item instead, and still equals one full pass per channel."""
    from transferkit.models import load_backbone
    torch.manual_seed(0)
    source = load_backbone(f"hf:{tiny_bert_dir}")
    backbone, tok = source.module.eval(), source.preprocess.tokenizer
    x = dict(tok(["the cat and dog", "red blue sky", "a long slow river in the rain", "sun"],
                 padding=True, return_tensors="pt"))
    y = torch.tensor([0, 1, 2, 0])
    head, name = nn.Linear(32, 3), "model.encoder.layer.1"
    loss = nn.CrossEntropyLoss()
    mod = dict(backbone.named_modules())[name]
    with torch.no_grad():
        base = loss(head(backbone(x)), y).item()
        want = []
        for c in range(32):
            def zero(_m, _i, o, c=c):  # a layer returns its hidden states, alone or first in a tuple
                h = (o[0] if isinstance(o, tuple) else o).clone()
                h[..., c] = 0
                return (h, *o[1:]) if isinstance(o, tuple) else h
            handle = mod.register_forward_hook(zero)
            want.append(loss(head(backbone(x)), y).item() - base)
            handle.remove()
    want = torch.softmax(torch.tensor(want, dtype=torch.float64), 0).float()
    calls = []
    handle = backbone.register_forward_hook(lambda *a: calls.append(1))
    got = delta_channel_weights(backbone, head, [(x, y)], [name], loss)[name]
    handle.remove()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    assert len(calls) < 32  # not one pass per channel


def test_source_copy_in_eval_mode_with_batchnorm_as_the_policy_says(images):
    """`--bn frozen`/`eval`: the source's BatchNorm uses its running statistics; `--bn adapt`: the
    batch's statistics. Either way its stored statistics never change. (Failed before the fix: the
    source ignored the policy.)"""
    for bn, mode in (("frozen", "running"), ("eval", "running"), ("adapt", "batch")):
        cfg = make_config(data=str(images), backbone=TINY, reg="delta:0.01", image_size=32, bn=bn,
                          strategy="full")
        torch.manual_seed(cfg.seed)
        model, _ = build_model(cfg, ["blue", "green", "red"])
        (delta,) = build_regularizers_for(cfg, model, None, "cpu")  # no items: uniform weights
        x = torch.randn(8, 3, 32, 32)
        stored = copy.deepcopy(delta.source_model.state_dict())
        reference = copy.deepcopy(delta.source_model)
        reference.train(mode == "batch")  # train-mode BatchNorm normalises with batch statistics
        with torch.no_grad(), capture_feature_maps(reference, delta.layer_names) as want:
            reference(x)
        with capture_feature_maps(model.backbone, delta.layer_names) as maps:
            feats = model.backbone(x)
        delta(model, feats, maps, inputs=x)
        got = delta._source_maps(x, torch.device("cpu"))
        for name in delta.layer_names:
            torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-5)
        assert not delta.source_model.training
        for k, v in delta.source_model.state_dict().items():
            assert torch.equal(v, stored[k]), (bn, k)


def test_bss_trains_end_to_end(images, tmp_path):
    assert _train(images, tmp_path / "bss", "bss:0.001") == 0
    _finite_train_losses(tmp_path / "bss")
