import copy

import pytest
import torch
from torch import nn

from transferkit.regularizers import (
    BSS,
    DELTA,
    L2SP,
    L2SP_AUTO_GRID,
    Regularizer,
    RegularizerSpec,
    anchor_from,
    build_regularizers,
    capture_feature_maps,
    delta_channel_weights,
    parse_regularizer,
)


class TinyTransferModel(nn.Module):
    """Stand-in for models.heads.TransferModel: `.backbone` -> [B, D] features, `.head` -> logits."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x):
        return self.head(self.backbone(x))


def _linear_model():
    backbone, head = nn.Linear(2, 2), nn.Linear(2, 1)
    with torch.no_grad():
        backbone.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        backbone.bias.copy_(torch.tensor([0.5, -0.5]))
        head.weight.copy_(torch.tensor([[1.0, -2.0]]))
        head.bias.copy_(torch.tensor([3.0]))
    model = TinyTransferModel(backbone, head)
    anchor = {
        "backbone.weight": torch.tensor([[1.0, 1.0], [1.0, 1.0]]),
        "backbone.bias": torch.tensor([0.0, 0.0]),
    }
    return model, anchor


# ---------------------------------------------------------------- L2-SP


def test_l2sp_equals_hand_computed_value():
    model, anchor = _linear_model()
    # w - w0 = [[0, 1], [2, 3]] -> 0 + 1 + 4 + 9 = 14;  b - b0 = [0.5, -0.5] -> 0.25 + 0.25 = 0.5
    # head: weight [1, -2] -> 1 + 4 = 5;  bias [3] -> 9;  sum 14
    # alpha/2 * 14.5 + beta/2 * 14 = 0.05 * 14.5 + 0.005 * 14 = 0.725 + 0.07 = 0.795
    reg = L2SP(anchor, alpha=0.1, beta=0.01)
    assert reg(model, None).item() == pytest.approx(0.795, abs=1e-6)
    # beta = 0: the head is not touched -> 0.725
    assert L2SP(anchor, alpha=0.1)(model, None).item() == pytest.approx(0.725, abs=1e-6)


def test_l2sp_gradient_pulls_towards_anchor():
    model, anchor = _linear_model()
    L2SP(anchor, alpha=0.1, beta=0.01)(model, None).backward()
    # d/dw alpha/2 ||w - w0||^2 = alpha (w - w0);  d/dh beta/2 ||h||^2 = beta h
    assert torch.allclose(model.backbone.weight.grad, 0.1 * torch.tensor([[0.0, 1.0], [2.0, 3.0]]))
    assert torch.allclose(model.head.weight.grad, 0.01 * torch.tensor([[1.0, -2.0]]))


def test_l2sp_frozen_parameters_add_nothing_and_cost_nothing():
    model, anchor = _linear_model()
    reg = L2SP(anchor, alpha=0.1, beta=0.01)
    model.backbone.weight.requires_grad_(False)  # differs from its anchor by 14 (squared)
    # only the bias (0.5) and the head (14) remain: 0.05 * 0.5 + 0.005 * 14 = 0.025 + 0.07 = 0.095
    assert reg(model, None).item() == pytest.approx(0.095, abs=1e-6)
    # skipped before any work: its anchor was never moved/cached
    assert "backbone.weight" not in reg._cache and "backbone.bias" in reg._cache
    model.backbone.weight.requires_grad_(True)  # unfrozen later (two-phase): it counts again
    assert reg(model, None).item() == pytest.approx(0.795, abs=1e-6)


def test_l2sp_anchor_follows_parameter_dtype():
    model, anchor = _linear_model()
    reg = L2SP(anchor, alpha=0.1, beta=0.01)
    reg(model, None)
    model.double()
    out = reg(model, None)
    assert reg._cache["backbone.weight"].dtype == torch.float64
    assert out.item() == pytest.approx(0.795, abs=1e-12)


def test_l2sp_no_weight_decay_names():
    model, anchor = _linear_model()
    assert L2SP(anchor, alpha=0.1).no_weight_decay(model) == {"backbone.weight", "backbone.bias"}
    assert L2SP(anchor, alpha=0.1, beta=0.01).no_weight_decay(model) == {
        "backbone.weight", "backbone.bias", "head.weight", "head.bias"
    }
    partial = {"backbone.weight": anchor["backbone.weight"]}
    assert L2SP(partial, alpha=0.1).no_weight_decay(model) == {"backbone.weight"}


def test_l2sp_shape_mismatch_is_loud():
    model, anchor = _linear_model()
    anchor["backbone.weight"] = torch.zeros(3, 2)
    with pytest.raises(ValueError, match=r"backbone\.weight.*\(3, 2\).*\(2, 2\)"):
        L2SP(anchor, alpha=0.1)(model, None)


def test_l2sp_unknown_anchor_names_are_loud():
    model, anchor = _linear_model()
    anchor["backbone.missing.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="does not have"):
        L2SP(anchor, alpha=0.1).no_weight_decay(model)
    with pytest.raises(ValueError, match="backbone"):
        L2SP({"head.weight": torch.zeros(1, 2)}, alpha=0.1)


def test_anchor_from_copies_backbone_only():
    model, _ = _linear_model()
    anchor = anchor_from(model)
    assert set(anchor) == {"backbone.weight", "backbone.bias"}
    with torch.no_grad():
        model.backbone.weight.add_(1.0)
    assert torch.equal(anchor["backbone.weight"], torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    assert not anchor["backbone.weight"].requires_grad
    assert L2SP(anchor, alpha=1.0)(model, None).item() == pytest.approx(0.5 * 4, abs=1e-6)


# ---------------------------------------------------------------- BSS


def _matrix_with_singular_values(sigma, b, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(b, len(sigma), generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(d, len(sigma), generator=g, dtype=torch.float64))
    return u @ torch.diag(torch.tensor(sigma, dtype=torch.float64)) @ v.T, u, v


def test_bss_equals_smallest_squared_singular_values():
    f, _, _ = _matrix_with_singular_values([3.0, 2.0, 1.0, 0.5], b=6, d=4)
    # k=1: eta * 0.5^2 = 0.1 * 0.25;  k=2: eta * (0.25 + 1) = 0.1 * 1.25
    assert BSS(eta=0.1)(None, f).item() == pytest.approx(0.025, abs=1e-6)
    assert BSS(eta=0.1, k=2)(None, f).item() == pytest.approx(0.125, abs=1e-6)


def test_bss_gradient_is_2_eta_sigma_u_vT():
    f, u, v = _matrix_with_singular_values([3.0, 2.0, 1.0, 0.5], b=6, d=4)
    f = f.float().requires_grad_(True)
    BSS(eta=0.1)(None, f).backward()
    # d sigma_min^2 / dF = 2 sigma_min u_min v_min^T
    expected = 0.1 * 2 * 0.5 * torch.outer(u[:, 3], v[:, 3]).float()
    assert torch.allclose(f.grad, expected, atol=1e-5)


def test_bss_k_bounded_by_min_b_d():
    f, _, _ = _matrix_with_singular_values([3.0, 2.0], b=2, d=5)
    with pytest.raises(ValueError, match=r"min\(B, D\)=2"):
        BSS(eta=0.1, k=3)(None, f)
    with pytest.raises(ValueError, match="k >= 1"):
        BSS(eta=0.1, k=0)
    assert BSS(eta=0.1).no_weight_decay(None) == set()


# ---------------------------------------------------------------- DELTA


def _conv_backbone(w):
    """1x1 conv (1 -> 2 channels, no bias) whose channel c output is w[c] * x, then pool + flatten."""
    conv = nn.Conv2d(1, 2, kernel_size=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(w).view(2, 1, 1, 1))
    return nn.Sequential(conv, nn.AdaptiveAvgPool2d(1), nn.Flatten())


# x1 = [[1, 2], [0, 1]] (sum of squares 6), x2 = [[1, 1], [1, 1]] (sum of squares 4)
_X = torch.tensor([[[[1.0, 2.0], [0.0, 1.0]]], [[[1.0, 1.0], [1.0, 1.0]]]])


def _delta(reg, model, x):
    """The DELTA term for one forward of `model.backbone` on `x`, as the engine computes it."""
    with capture_feature_maps(model.backbone, reg.layer_names) as maps:
        feats = model.backbone(x)
    return reg(model, feats, maps, inputs=x)


def test_delta_uniform_weights_hand_computed():
    model = TinyTransferModel(_conv_backbone([1.0, 2.0]), nn.Linear(2, 2))
    source = _conv_backbone([0.5, 3.0])
    # FM_c(w) - FM_c(w0) = (w_c - w0_c) x, with w - w0 = [0.5, -1]
    # x1: 0.25 * 6 + 1 * 6 = 7.5 ;  x2: 0.25 * 4 + 1 * 4 = 5
    # uniform W = 1/2: x1 -> 3.75, x2 -> 2.5 ; batch mean 3.125 ; alpha 0.1 -> 0.3125
    reg = DELTA(source, ["0"], alpha=0.1)
    with capture_feature_maps(model.backbone, ["0"]) as maps:
        feats = model.backbone(_X)
    assert reg(model, feats, maps, inputs=_X).item() == pytest.approx(0.3125, abs=1e-6)
    # without the maps of this step's forward it refuses (it would run the target a second time)
    with pytest.raises(ValueError, match="capture_feature_maps"):
        reg(model, feats, None, inputs=_X)


def test_delta_channel_weights_hand_computed_and_gradient():
    model = TinyTransferModel(_conv_backbone([1.0, 2.0]), nn.Linear(2, 2))
    source = _conv_backbone([0.5, 3.0])
    # W = [0.8, 0.2]: x1: 0.8 * 1.5 + 0.2 * 6 = 2.4 ; x2: 0.8 * 1.0 + 0.2 * 4 = 1.6 ; mean 2.0 ; * 0.1
    reg = DELTA(source, ["0"], alpha=0.1, channel_weights={"0": torch.tensor([0.8, 0.2])})
    with capture_feature_maps(model.backbone, ["0"]) as maps:
        feats = model.backbone(_X)
    out = reg(model, feats, maps, inputs=_X)
    assert out.item() == pytest.approx(0.2, abs=1e-6)
    out.backward()
    # d/dw_c = alpha * W_c * mean_b 2 (w_c - w0_c) ||x_b||^2 = 0.1 * W_c * 2 * dw_c * 5
    grad = model.backbone[0].weight.grad.view(2)
    assert torch.allclose(grad, torch.tensor([0.1 * 0.8 * 2 * 0.5 * 5, 0.1 * 0.2 * 2 * -1.0 * 5]))
    assert all(p.grad is None for p in source.parameters())


def test_delta_token_maps_use_last_axis_as_channels():
    # [B, T, C] maps: Linear(1 -> 2) on tokens, channel c = w_c * x_t; same numbers as the conv case
    def backbone(w):
        lin = nn.Linear(1, 2, bias=False)
        with torch.no_grad():
            lin.weight.copy_(torch.tensor(w).view(2, 1))
        return nn.Sequential(lin, nn.Flatten(1))

    tokens = _X.view(2, 4, 1)  # T = 4 tokens per sample, same values as the 2x2 images
    model = TinyTransferModel(backbone([1.0, 2.0]), nn.Linear(8, 2))
    reg = DELTA(backbone([0.5, 3.0]), ["0"], alpha=0.1)
    assert _delta(reg, model, tokens).item() == pytest.approx(0.3125, abs=1e-6)


def test_delta_zero_when_target_is_source():
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 5, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model = TinyTransferModel(backbone, nn.Linear(5, 3))
    reg = DELTA(copy.deepcopy(backbone), ["0", "2"], alpha=1.0)
    x = torch.randn(4, 3, 8, 8)
    with capture_feature_maps(model.backbone, reg.layer_names) as maps:
        feats = model.backbone(x)
    assert reg(model, feats, maps, inputs=x).item() == 0.0
    with torch.no_grad():
        model.backbone[2].weight.add_(0.1)
    assert _delta(reg, model, x).item() > 0.0


def test_capture_feature_maps_removes_hooks_and_names_bad_layers():
    backbone = _conv_backbone([1.0, 2.0])
    with capture_feature_maps(backbone, ["0"]) as maps:
        backbone(_X)
    assert maps["0"].shape == (2, 2, 2, 2)
    assert not backbone[0]._forward_hooks
    with pytest.raises(ValueError, match=r"'00'.*nearest: \['0'\]"):
        with capture_feature_maps(backbone, ["00"]):
            pass
    with pytest.raises(ValueError, match="no submodule named 'head'"):
        DELTA(backbone, ["head"], alpha=0.1)


def test_delta_channel_weights_follow_loss_increase():
    # The head reads only channel 0: zeroing channel 1 changes nothing, zeroing channel 0 raises the loss.
    backbone = _conv_backbone([1.0, 2.0])
    head = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
    y = torch.tensor([0, 0])
    loss = nn.CrossEntropyLoss()
    weights = delta_channel_weights(backbone, head, [(_X, y)], ["0"], loss)
    w = weights["0"]
    assert w.shape == (2,) and w.sum().item() == pytest.approx(1.0, abs=1e-6)
    base = loss(head(backbone(_X)), y)
    zeroed = loss(head(torch.stack([torch.zeros(2), backbone(_X)[:, 1]], 1)), y)
    expected = torch.softmax(torch.tensor([(zeroed - base).item(), 0.0]), 0)
    assert torch.allclose(w, expected, atol=1e-6)
    assert w[0] > w[1]
    assert backbone.training  # mode restored


# ---------------------------------------------------------------- specs and building


def test_parse_regularizer_forms():
    assert parse_regularizer("l2sp:0.01") == [RegularizerSpec("l2sp", {"alpha": 0.01, "beta": 0.0})]
    assert parse_regularizer("l2sp:0.01,0.001") == [RegularizerSpec("l2sp", {"alpha": 0.01, "beta": 0.001})]
    (auto,) = parse_regularizer("l2sp:auto")
    assert auto.is_auto and auto.with_alpha(L2SP_AUTO_GRID[2]).params["alpha"] == L2SP_AUTO_GRID[2]
    assert parse_regularizer("delta:0.1") == [RegularizerSpec("delta", {"alpha": 0.1})]
    assert parse_regularizer("bss:0.001") == [RegularizerSpec("bss", {"eta": 0.001, "k": 1})]
    assert parse_regularizer("bss:1e-3,2") == [RegularizerSpec("bss", {"eta": 0.001, "k": 2})]
    combo = parse_regularizer("l2sp:0.01 + BSS:1e+1")
    assert [s.kind for s in combo] == ["l2sp", "bss"] and combo[1].params["eta"] == 10.0
    assert parse_regularizer("l2sp:10,coupled") == [RegularizerSpec("l2sp", {"alpha": 10.0, "beta": 0.0,
                                                                          "form": "coupled"})]
    assert parse_regularizer("l2sp:auto,0.1,DECOUPLED")[0].params == {"alpha": "auto", "beta": 0.1,
                                                                       "form": "decoupled"}
    for text in ["l2sp:0.01,0.001", "delta:0.1", "bss:0.001,2", "l2sp:auto", "l2sp:10.0,0.0,coupled",
                 "l2sp:auto,0.1,decoupled"]:
        assert [str(s) for s in parse_regularizer(text)] == [text]


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("l2-sp:0.01", "did you mean 'l2sp'"),
        ("l2sp:0.01+bsss:0.1", "did you mean 'bss'"),
        ("detla:0.1", "did you mean 'delta'"),
        ("l2sp", "needs a value"),
        ("l2sp:abc", "ALPHA must be a number, got 'abc'"),
        ("l2sp:-1", ">= 0"),
        ("l2sp:1,coupeld", "form must be one of coupled, decoupled, got 'coupeld'"),
        ("l2sp:1,0,coupled,2", "l2sp takes ALPHA[,BETA][,coupled|decoupled]"),
        ("bss:0.1,0", "K must be a whole number"),
        ("delta:0.1,2", "single ALPHA"),
        ("l2sp:0.1+l2sp:0.2", "given twice"),
        ("l2sp:0.1+", "empty part"),
        ("", "empty"),
    ],
)
def test_parse_regularizer_errors(text, fragment):
    with pytest.raises(ValueError) as err:
        parse_regularizer(text)
    assert fragment in str(err.value)
    assert "l2sp:ALPHA[,BETA]" in str(err.value)  # the accepted forms are shown


def test_build_regularizers():
    model, anchor = _linear_model()
    regs = build_regularizers(parse_regularizer("l2sp:0.1,0.01,coupled+bss:0.5,2"), model, anchor)
    assert [type(r) for r in regs] == [L2SP, BSS]
    assert all(isinstance(r, Regularizer) for r in regs)
    assert regs[0](model, None).item() == pytest.approx(0.795, abs=1e-6)
    with pytest.raises(ValueError, match="source_model"):
        build_regularizers("delta:0.1", model, anchor)
    with pytest.raises(ValueError, match="resolved"):
        build_regularizers("l2sp:auto", model, anchor)
    with pytest.raises(ValueError, match="anchor"):
        build_regularizers("l2sp:0.1", model, None)
    conv = TinyTransferModel(_conv_backbone([1.0, 2.0]), nn.Linear(2, 2))
    (delta,) = build_regularizers("delta:0.1", conv, None, source_model=_conv_backbone([0.5, 3.0]), layer_names=["0"])
    assert _delta(delta, conv, _X).item() == pytest.approx(0.3125, abs=1e-6)
