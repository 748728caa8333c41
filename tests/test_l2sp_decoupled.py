"""L2-SP decoupled from the optimiser (issue 9, defect 4): with AdamW the pull towards the source
weights is ``lr * alpha * (w - w0)`` per step whatever the gradients, applied beside the optimizer's
update; the coupled loss-term form stays for SGD and on request."""

import copy

import pytest
import torch
from conftest import write_image_folder
from safetensors.torch import load_file
from torch import nn

from transferkit.cli import main
from transferkit.regularizers import L2SP, build_regularizers


class _Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 3))
        self.head = nn.Linear(3, 2)


def _setup(seed=0):
    torch.manual_seed(seed)
    model = _Model()
    anchor = {f"backbone.{n}": p.detach() + 0.5 * torch.randn_like(p)
              for n, p in model.backbone.named_parameters()}
    return model, anchor


def _adamw(model, lrs=(0.01, 0.003, 0.02)):
    # one group per part, each with its own LR, no weight decay (L2-SP replaces it)
    parts = [model.backbone[0], model.backbone[1], model.head]
    return torch.optim.AdamW([{"params": [p for p in m.parameters() if p.requires_grad], "lr": lr,
                               "weight_decay": 0.0} for m, lr in zip(parts, lrs)])


def _engine_step(model, opt, regs, grads):
    """One optimisation step as the engine takes it: task gradients `grads`, plus each regularizer's
    loss term through backward, then its `before_step` hook (if any), then the optimizer step."""
    opt.zero_grad(set_to_none=True)
    loss = sum((r(model, None) for r in regs), torch.zeros(()))
    if loss.requires_grad:
        loss.backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            p.grad = grads[name].clone() + (p.grad if p.grad is not None else 0)
    for r in regs:
        getattr(r, "before_step", lambda *_: None)(model, opt)
    opt.step()


def _grads(model, scale, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {n: scale * torch.randn(p.shape, generator=g) for n, p in model.named_parameters()}


def _extra_move(scale, spec="l2sp:5,0.5", steps=3):
    """Where the regularized run ends minus where the plain run ends, after `steps` AdamW steps on
    the same gradients, and the expected pull of the last step from the values before it."""
    model, anchor = _setup()
    plain = copy.deepcopy(model)
    regs = build_regularizers(spec, model, anchor)  # the engine's default: optimizer adamw
    opt, opt_plain = _adamw(model), _adamw(plain)
    for step in range(steps):
        grads = _grads(model, scale, seed=step)
        if step == steps - 1:  # realign both copies on the regularized weights: isolate one step
            plain.load_state_dict(model.state_dict())
            opt_plain.load_state_dict(copy.deepcopy(opt.state_dict()))
            before = {n: p.detach().clone() for n, p in model.named_parameters()}
        _engine_step(model, opt, regs, grads)
        _engine_step(plain, opt_plain, [], grads)
    lr = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    got, want = {}, {}
    for (n, p), q in zip(model.named_parameters(), plain.parameters()):
        got[n] = p.detach() - q.detach()
        target = anchor[n] if n in anchor else torch.zeros_like(p)
        strength = 5.0 if n in anchor else 0.5
        want[n] = -lr[id(p)] * strength * (before[n] - target)
    return got, want


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_adamw_step_moves_by_exactly_lr_alpha_towards_the_source(scale):
    """Failed before the fix: L2-SP was a loss term whose gradient AdamW normalised with the task
    gradient, so the extra move was neither lr*alpha*(w - w0) nor independent of the gradient scale."""
    got, want = _extra_move(scale)
    for name in got:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-7, msg=name)


def test_decoupled_term_adds_nothing_to_the_loss_and_the_coupled_form_stays():
    model, anchor = _setup()
    (dec,) = build_regularizers("l2sp:5,0.5", model, anchor)
    (sgd,) = build_regularizers("l2sp:5,0.5", model, anchor, optimizer="sgd")
    (asked,) = build_regularizers("l2sp:5,0.5,coupled", model, anchor)
    assert (dec.form, sgd.form, asked.form) == ("decoupled", "coupled", "coupled")
    assert dec(model, None).item() == 0.0  # no double counting
    want = 0.5 * 5 * sum(((p - anchor[f"backbone.{n}"]) ** 2).sum() for n, p in model.backbone.named_parameters())
    want += 0.5 * 0.5 * sum((p ** 2).sum() for p in model.head.parameters())
    assert sgd(model, None).item() == pytest.approx(want.item(), rel=1e-6)
    assert dec.penalty(model).item() == pytest.approx(want.item(), rel=1e-6)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    sgd.before_step(model, _adamw(model))  # the coupled form leaves the step to the loss
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_decoupled_pull_leaves_frozen_parameters_alone():
    model, anchor = _setup()
    model.backbone[0].requires_grad_(False)
    frozen = {n: p.detach().clone() for n, p in model.backbone[0].named_parameters()}
    reg = L2SP(anchor, 5.0, 0.5, form="decoupled")
    opt = _adamw(model)
    # a parameter outside the optimizer is never pulled, even if it requires grad
    reg.before_step(model, torch.optim.AdamW([model.backbone[1].weight], lr=0.1))
    assert torch.equal(model.head.weight, _setup()[0].head.weight)
    reg.before_step(model, opt)
    for n, p in model.backbone[0].named_parameters():
        assert torch.equal(p, frozen[n])
    assert not torch.equal(model.backbone[1].weight, _setup()[0].backbone[1].weight)


def test_l2sp_through_the_engine_keeps_the_backbone_closer_to_the_source(tmp_path):
    """`--reg l2sp:10` with AdamW (decoupled): after the same steps the backbone is nearer its
    source weights than without L2-SP."""
    data = write_image_folder(tmp_path / "images")

    def train(out, *extra):
        assert main(["train", str(data), "--backbone", "timm:test_resnet@random", "--image-size", "32",
                     "--batch-size", "8", "--steps", "6", "--strategy", "full", "--lr", "1e-2",
                     "--no-augment", "--bn", "eval", "--out", str(out), "--quiet", *extra]) == 0
        return load_file(str(out / "last" / "model.safetensors"))

    reg = train(tmp_path / "l2sp", "--reg", "l2sp:10", "--store-anchor")
    plain = train(tmp_path / "plain")
    source = load_file(str(tmp_path / "l2sp" / "anchor.safetensors"))  # same seed: same init for both

    def distance(weights):
        return sum(((weights[k] - v) ** 2).sum() for k, v in source.items()).sqrt().item()

    d_reg, d_plain = distance(reg), distance(plain)
    assert d_plain > 0
    # per-step pull lr*alpha = 0.1 at the peak LR, ~0.3 summed over the warm-up + cosine schedule;
    # the drift builds up over the same steps, so it ends ~13% shorter (5.50 vs 6.31 when written)
    assert d_reg < 0.95 * d_plain, (d_reg, d_plain)
