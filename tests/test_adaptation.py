"""Unsupervised domain adaptation: the gradient reversal layer, the DANN domain loss and MCC on
hand-checked tensors, and `transferkit adapt` end to end through `transferkit.cli.main` on a tiny
timm model (run directory, predict/evaluate on it, exact resume, bad input)."""

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import COLOURS, PER_CLASS, write_image_folder
from PIL import Image
from safetensors.torch import load_file

from transferkit.adaptation import (DANN, DomainDiscriminator, dann_coefficient, domain_loss, mcc_loss,
                                    reverse_gradient)
from transferkit.adaptation.domains import read_unlabelled_images
from transferkit.cli import main
from transferkit.config import read_config

TINY = "timm:test_resnet@random"
LN2 = math.log(2.0)


# ----------------------------------------------------------------------------- gradient reversal

def test_gradient_reversal_is_identity_forward_and_scales_the_gradient_by_minus_lambda():
    x = torch.tensor([1.0, 2.0, -3.0], requires_grad=True)
    w = torch.tensor([1.0, -2.0, 3.0])
    y = reverse_gradient(x, 0.5)
    assert torch.equal(y, x.detach())
    (y * w).sum().backward()
    # d/dx (w . x) = w; reversed and scaled by 0.5: -0.5 * w
    assert torch.allclose(x.grad, torch.tensor([-0.5, 1.0, -1.5]), atol=0, rtol=0)


def test_dann_coefficient_schedule():
    # 2 / (1 + exp(-10 p)) - 1 = tanh(5 p)
    assert dann_coefficient(0.0) == 0.0
    assert dann_coefficient(0.1) == pytest.approx(math.tanh(0.5), abs=1e-12) == pytest.approx(0.4621172, abs=1e-7)
    assert dann_coefficient(1.0) == pytest.approx(0.9999092, abs=1e-7)
    assert dann_coefficient(2.0) == dann_coefficient(1.0)  # progress is clipped to [0, 1]


def test_dann_reverses_the_domain_gradient_into_the_features():
    torch.manual_seed(0)
    fs, ft = torch.randn(6, 8, requires_grad=True), torch.randn(5, 8, requires_grad=True)
    dann = DANN(8, 3, hidden=16)
    loss, info = dann(None, fs, None, ft, progress=0.1)
    loss.backward()
    g_rev = (fs.grad.clone(), ft.grad.clone())
    fs.grad, ft.grad = None, None
    plain, _ = domain_loss(dann.discriminator, fs, ft)
    plain.backward()
    assert loss.item() == pytest.approx(plain.item(), abs=1e-7)  # the reversal changes no value
    coeff = info["grl_coeff"]
    assert coeff == pytest.approx(math.tanh(0.5))
    assert torch.allclose(g_rev[0], -coeff * fs.grad, atol=1e-7)
    assert torch.allclose(g_rev[1], -coeff * ft.grad, atol=1e-7)


# ----------------------------------------------------------------------------- the domain loss

def _train_discriminator(fs: torch.Tensor, ft: torch.Tensor, steps: int = 150) -> tuple[float, float]:
    torch.manual_seed(0)
    disc = DomainDiscriminator(fs.shape[1], hidden=16)
    opt = torch.optim.Adam(disc.parameters(), lr=2e-2)
    for _ in range(steps):
        loss, _ = domain_loss(disc, fs, ft)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        loss, acc = domain_loss(disc, fs, ft)
    return loss.item(), acc


def test_domain_loss_goes_to_zero_on_separable_features():
    g = torch.Generator().manual_seed(0)
    fs = torch.randn(64, 8, generator=g) + 2.0
    ft = torch.randn(64, 8, generator=g) - 2.0
    loss, acc = _train_discriminator(fs, ft)
    assert loss < 0.02 and acc == 1.0


def test_domain_loss_stays_at_ln2_on_identical_features():
    # for one input seen as source and as target, 1/2 (softplus(-z) + softplus(z)) >= ln 2 with
    # equality at z = 0: no discriminator can do better than chance
    fs = torch.randn(64, 8, generator=torch.Generator().manual_seed(1))
    loss, acc = _train_discriminator(fs, fs.clone())
    assert LN2 - 1e-6 <= loss <= LN2 + 0.01
    assert acc == pytest.approx(0.5)


# ----------------------------------------------------------------------------------------- MCC

def test_mcc_on_hand_computed_batch():
    # T = 1, probabilities p1 = (0.8, 0.2), p2 = (0.4, 0.6):
    #   H1 = 0.500402, H2 = 0.673012;  1 + exp(-H) = 1.606287, 1.510178 -> W = 1.030842, 0.969158
    #   C = sum_i W_i p_i p_i^T = [[0.814804, 0.397533], [0.397533, 0.390131]]
    #   rows normalised: off-diagonals 0.397533 / 1.212337 = 0.327905 and 0.397533 / 0.787664 = 0.504699
    #   L = (0.327905 + 0.504699) / 2 = 0.416302
    logits = torch.log(torch.tensor([[0.8, 0.2], [0.4, 0.6]]))
    assert mcc_loss(logits, temperature=1.0).item() == pytest.approx(0.416302, abs=2e-5)


def test_mcc_limits():
    # uniform predictions: every row of C~ is 1/K, so L = (K - 1) / K
    assert mcc_loss(torch.zeros(5, 4)).item() == pytest.approx(0.75, abs=1e-6)
    # confident and different: no confusion between classes
    assert mcc_loss(torch.eye(3) * 100.0, temperature=1.0).item() == pytest.approx(0.0, abs=1e-6)
    # the temperature softens: the same logits at T = 2.5 are more confused than at T = 1
    z = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0]])
    assert mcc_loss(z, 2.5).item() > mcc_loss(z, 1.0).item()


# -------------------------------------------------------------------------------- adapt end to end

def _shifted_target(root: Path, flat: bool = False) -> Path:
    """The source's colour classes, darker and noisier (a domain shift); `flat`: no class folders."""
    rng = np.random.default_rng(7)
    for name, rgb in COLOURS.items():
        d = root if flat else root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(PER_CLASS):
            px = np.clip(np.array(rgb, float) * 0.6 + 30 + rng.normal(0, 40, (32, 32, 3)), 0, 255)
            Image.fromarray(px.astype(np.uint8), "RGB").save(d / f"{name}_t{i:02d}.png")
    return root


def _adapt(src, tgt, out, *extra, method="dann", steps=4):
    return main(["adapt", "--source", str(src), "--target", str(tgt), "--backbone", TINY, "--image-size", "32",
                 "--batch-size", "8", "--steps", str(steps), "--eval-every", "2", "--method", method,
                 "--out", str(out), "--quiet", *extra])


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def domains(tmp_path_factory):
    root = tmp_path_factory.mktemp("da")
    return write_image_folder(root / "source"), _shifted_target(root / "target")


def test_adapt_dann_writes_a_run_that_predict_and_evaluate_use(domains, tmp_path, capsys):
    src, tgt = domains
    run = tmp_path / "run"
    assert _adapt(src, tgt, run, "--target-test", str(tgt)) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for name in ("config.yaml", "adapt.yaml", "model.safetensors", "metrics.json", "history.csv", "report.html",
                 "splits.csv", "source.json", "last/model.safetensors", "last/method.safetensors",
                 "last/optimizer.safetensors", "last/state.json"):
        assert (run / name).is_file(), name
    assert any(k.startswith("discriminator.") for k in load_file(str(run / "last" / "method.safetensors")))  # discriminator

    m = json.loads((run / "metrics.json").read_text())
    n = len(COLOURS) * PER_CLASS
    assert (m["method"], m["n_target"], m["n_test"], m["n_train"] + m["n_val"]) == ("dann", n, n, n)
    cm = np.array(m["confusion_matrix"])
    assert cm.sum() == n and np.trace(cm) / n == pytest.approx(m["accuracy"], abs=1e-12)
    assert printed["target_accuracy"] == m["accuracy"] and printed["n_target"] == n
    assert 0.0 <= m["source_val"]["accuracy"] <= 1.0 and m["steps"] == 4

    hist = _rows(run / "history.csv")
    assert [int(r["step"]) for r in hist] == [2, 4]
    for r in hist:
        for k in ("cls_loss", "domain_loss", "domain_accuracy", "val_accuracy", "target_accuracy"):
            assert r[k] != "", k
        # total = cross-entropy + trade_off (1) * domain loss, averaged over the same steps
        assert float(r["train_loss"]) == pytest.approx(float(r["cls_loss"]) + float(r["domain_loss"]), abs=1e-5)
    assert 0 < float(hist[0]["grl_coeff"]) < float(hist[1]["grl_coeff"]) < 1
    report = (run / "report.html").read_text()
    assert "Domain adaptation" in report and report.count("<img src='data:image/png;base64") >= 2

    splits = _rows(run / "splits.csv")
    assert sum(r["split"] == "target" for r in splits) == n
    assert all(r["label"] == "" for r in splits if r["split"] == "target")  # never read during adaptation
    cfg = read_config(run / "config.yaml")
    assert (cfg.backbone, cfg.data, cfg.image_size) == (TINY, str(src), 32)

    # the saved model is the run's: evaluate reproduces the target metrics exactly
    assert main(["evaluate", str(run), str(tgt), "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["accuracy"] == pytest.approx(m["accuracy"], abs=1e-12) and ev["n"] == n
    assert ev["confusion_matrix"] == m["confusion_matrix"]
    assert main(["predict", str(run), str(tgt / "red"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == PER_CLASS and all(r["label"] in COLOURS for r in rows)


def test_adapt_mcc_reads_an_unlabelled_flat_target(domains, tmp_path, capsys):
    src, _ = domains
    flat = _shifted_target(tmp_path / "flat", flat=True)
    items, skipped = read_unlabelled_images(flat)
    assert len(items) == len(COLOURS) * PER_CLASS and skipped == [] and {e.label for e in items} == {""}
    run = tmp_path / "run"
    assert _adapt(src, flat, run, method="mcc", steps=2) == 0
    m = json.loads((run / "metrics.json").read_text())
    assert m["method"] == "mcc" and "accuracy" not in m  # no --target-test: no target metrics
    hist = _rows(run / "history.csv")
    assert 0.0 <= float(hist[-1]["mcc_loss"]) <= 1.0 and "target_accuracy" not in hist[-1]


def test_adapt_resume_after_stop_matches_an_uninterrupted_run(domains, tmp_path, capsys):
    src, tgt = domains
    full, part = tmp_path / "full", tmp_path / "part"
    assert _adapt(src, tgt, full) == 0
    assert _adapt(src, tgt, part, "--stop-after", "2") == 0
    assert not (part / "model.safetensors").exists()
    assert json.loads((part / "last" / "state.json").read_text())["state"]["step"] == 2
    assert _adapt(src, tgt, part) == 2  # the directory holds a run: refuse, do not overwrite
    assert "--resume" in capsys.readouterr().err
    assert main(["adapt", "--resume", str(part), "--quiet"]) == 0
    a, b = load_file(str(full / "model.safetensors")), load_file(str(part / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    def strip(rows):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    assert strip(_rows(full / "history.csv")) == strip(_rows(part / "history.csv"))


@pytest.mark.parametrize("extra, needle", [
    (["--method", "dan"], "unknown --method 'dan'; did you mean 'dann'?"),
    (["--strategy", "two_phase"], "--strategy two_phase is not one phase"),
    (["--target-test", "WRONG"], "not source classes"),
])
def test_adapt_bad_input_is_one_clear_line(domains, tmp_path, capsys, extra, needle):
    src, tgt = domains
    if "WRONG" in extra:
        wrong = tmp_path / "wrong"
        shutil.copytree(tgt / "red", wrong / "purple")
        extra = ["--target-test", str(wrong)]
    assert _adapt(src, tgt, tmp_path / "run", *extra) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()  # nothing written for a run that cannot start


def test_adapt_never_writes_into_its_data_or_over_a_users_folder(domains, tmp_path, capsys):
    src, tgt = domains
    assert _adapt(src, tgt, tgt / "run") == 2  # inside the unlabelled target folder
    assert "inside the --target folder" in capsys.readouterr().err and not (tgt / "run").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    assert _adapt(src, tgt, mine) == 2
    assert "not empty and is not a transferkit run" in capsys.readouterr().err
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
