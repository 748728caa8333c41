"""L2-SP under LoRA (issue 9, defect 6): the distance to the source is the adapters' weight delta
``s B A`` (the base weights never move), and that is what L2-SP penalises and pulls back."""

import pytest
import torch

from transferkit.config import make_config
from transferkit.engine.build import build_model, build_regularizers_for

CLASSES = ["animals", "colours", "weather"]


def _lora_model(tiny_bert_dir, reg, optimizer="adamw"):
    cfg = make_config(backbone=f"hf:{tiny_bert_dir}", strategy="lora:r=2,alpha=4", reg=reg, optimizer=optimizer)
    model, anchor = build_model(cfg, CLASSES)
    (l2sp,) = build_regularizers_for(cfg, model, anchor, "cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # B starts at zero (the adapted model is the source); give it a value
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    layers = [m for _, m in model.named_modules() if hasattr(m, "lora_A") and len(getattr(m, "lora_A", {}))]
    assert len(layers) == 6  # 2 layers x (query, key, value)
    return model, l2sp, layers


def _ab_s(layer):
    return layer.lora_A["default"].weight, layer.lora_B["default"].weight, layer.scaling["default"]


def test_l2sp_with_lora_is_the_adapters_weight_delta(tiny_bert_dir):
    """Failed before the fix: the term only saw the frozen base weights, so it stayed 0 (beta = 0)
    however far the adapters moved the layer."""
    model, reg, layers = _lora_model(tiny_bert_dir, "l2sp:0.3", optimizer="sgd")  # SGD: the loss-term form
    a, b, s = _ab_s(layers[0])
    assert s == 2.0  # alpha / r
    # s B A is exactly how far the layer's weight is from the source weight: read the adapted
    # layer's effective weight off its outputs on the unit vectors
    eye = torch.eye(a.shape[1])
    with torch.no_grad():
        effective = (layers[0](eye) - layers[0].base_layer.bias).T
    torch.testing.assert_close(effective - layers[0].base_layer.weight, s * b @ a, rtol=0, atol=1e-6)
    want = 0.5 * 0.3 * sum(((s * b @ a) ** 2).sum() for a, b, s in map(_ab_s, layers))
    term = reg(model, None)
    assert want.item() > 1e-3
    assert term.item() == pytest.approx(want.item(), rel=1e-5)
    term.backward()
    for layer in layers:  # d/dB = alpha s D A^T, d/dA = alpha s B^T D with D = s B A
        a, b, s = _ab_s(layer)
        d = s * b @ a
        torch.testing.assert_close(b.grad, 0.3 * s * d.detach() @ a.detach().T, rtol=1e-4, atol=1e-8)
        torch.testing.assert_close(a.grad, 0.3 * s * b.detach().T @ d.detach(), rtol=1e-4, atol=1e-8)
    assert all(p.grad is None for n, p in model.named_parameters() if "base_layer" in n)
    assert reg.form == "coupled"


def test_decoupled_l2sp_with_lora_steps_the_adapters_towards_the_source(tiny_bert_dir):
    model, reg, layers = _lora_model(tiny_bert_dir, "l2sp:0.3")
    assert reg.form == "decoupled" and reg(model, None).item() == 0.0
    before = [tuple(t.detach().clone() for t in _ab_s(layer)[:2]) for layer in layers]
    norm_before = reg.penalty(model).item()
    lr = 0.5
    opt = torch.optim.AdamW([p for n, p in model.named_parameters() if p.requires_grad], lr=lr)
    reg.before_step(model, opt)
    for layer, (a0, b0) in zip(layers, before):
        a, b, s = _ab_s(layer)
        d = s * b0 @ a0  # the step is taken from the values before it
        torch.testing.assert_close(b.detach(), b0 - lr * 0.3 * s * d @ a0.T, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(a.detach(), a0 - lr * 0.3 * s * b0.T @ d, rtol=1e-5, atol=1e-7)
    assert reg.penalty(model).item() < norm_before
