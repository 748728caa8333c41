"""`train --unlabelled`: the pool (folder, CSV, or the test inputs), AdaBN, FixMatch, auto's choice
of keeping the pool, exact resume with the pool, and bad pools refused before anything is written."""

import json
import math
import shutil

import pytest
import torch
from conftest import COLOURS, write_image_folder
from safetensors.torch import load_file
from torch import nn

from transferkit.cli import main
from transferkit.engine.adabn import adabn, gate
from transferkit.engine.fixmatch import fixmatch_loss

TINY = "timm:test_resnet@random"


def _train(data, out, *extra, steps=4, strategy="two_phase"):
    return main(["train", str(data), "--backbone", TINY, "--image-size", "32", "--batch-size", "8",
                 "--steps", str(steps), "--strategy", strategy, "--out", str(out), "--quiet", "--shots", "5",
                 *extra])


# ------------------------------------------------------------------------------ FixMatch's loss

def test_fixmatch_loss_by_hand():
    weak = torch.tensor([[5.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 10.0, 0.0]])
    strong = torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0], [0.5, 0.5, 2.0]])
    # max softmax: e^5/(e^5+2) = 0.9867 (kept, label 0); 1/3 (dropped); ~0.9999 (kept, label 1)
    ce0 = -1.0 + math.log(math.e ** 1 + math.e ** 2 + 1)                 # CE([1,2,0], 0)
    ce2 = -0.5 + math.log(2 * math.e ** 0.5 + math.e ** 2)              # CE([.5,.5,2], 1)
    loss, kept = fixmatch_loss(weak, strong, threshold=0.95, weight=1.0)
    assert kept == 2
    assert loss.item() == pytest.approx((ce0 + ce2) / 3, abs=1e-6)    # mean over all mu*B, kept or not
    loss2, _ = fixmatch_loss(weak, strong, threshold=0.95, weight=2.5)
    assert loss2.item() == pytest.approx(2.5 * (ce0 + ce2) / 3, abs=1e-6)
    loss3, kept3 = fixmatch_loss(weak, strong, threshold=0.99, weight=1.0)  # 0.9867 now falls below
    assert kept3 == 1 and loss3.item() == pytest.approx(ce2 / 3, abs=1e-6)
    # no gradient through the pseudo-labels, only through the strong view
    w, s = weak.clone().requires_grad_(), strong.clone().requires_grad_()
    fixmatch_loss(w, s, 0.95)[0].backward()
    assert w.grad is None and s.grad.abs().sum() > 0


# ------------------------------------------------------------------------------ AdaBN

def test_adabn_sets_running_statistics_to_the_pool_statistics():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3)
    net = nn.Sequential(bn, nn.Conv2d(3, 2, 1))
    net.eval()
    pool = torch.randn(10, 3, 4, 4) * torch.tensor([1.0, 2.0, 0.5]).view(1, 3, 1, 1) + 3.0
    loader = [(pool[i:i + 4], -1) for i in range(0, 10, 4)]  # three uneven batches
    conv_before = net[1].weight.clone()
    assert adabn(net, loader, "cpu") == 1
    torch.testing.assert_close(bn.running_mean, pool.mean((0, 2, 3)), rtol=0, atol=1e-5)
    torch.testing.assert_close(bn.running_var, pool.var((0, 2, 3), unbiased=True), rtol=0, atol=1e-5)
    assert not net.training and not bn.training  # modes restored
    assert torch.equal(net[1].weight, conv_before) and bn.track_running_stats


def test_adabn_gate_keeps_the_source_statistics_unless_they_lose():
    pool = [(torch.randn(6, 3, 2, 2) + 5.0, -1)]
    for source_acc, adabn_acc, applied in [(0.5, 0.7, True), (0.7, 0.7, False), (0.8, 0.6, False)]:
        bn = nn.BatchNorm2d(3).eval()
        accs = iter([source_acc, adabn_acc])
        kept, rec = gate(bn, pool, "cpu", "source", lambda: "adapted", lambda f: next(accs))
        assert rec["applied"] is applied and kept == ("adapted" if applied else "source")
        assert (rec["held_out_source"], rec["held_out_adabn"]) == (source_acc, adabn_acc)
        assert torch.allclose(bn.running_mean, torch.zeros(3)) is not applied  # restored unless applied


# ------------------------------------------------------------------------------ end to end

def test_train_with_an_unlabelled_folder(image_folder, tmp_path):
    pool = write_image_folder(tmp_path / "pool", per_class=3, seed=1)  # in class folders: names ignored
    from transferkit.data import load_task
    train_item = load_task(image_folder, shots=5, seed=0, val_fraction=None).train[0].x
    shutil.copy(train_item, pool / "blue" / "copy.png")  # a copy is a different file: it stays
    (pool / "red" / "link.png").symlink_to(train_item)   # the training file itself: dropped
    run = tmp_path / "run"
    assert _train(image_folder, run, "--unlabelled", str(pool), "--unlabelled-weight", "0.5") == 0
    u = json.loads((run / "metrics.json").read_text())["unlabelled"]
    assert u["source"] == str(pool) and u["transductive"] is False
    assert u["count"] == 3 * len(COLOURS) + 1 and u["dropped_training_items"] == 1
    assert "fixmatch" in u["used"] and u["weight"] == 0.5
    assert u["fixmatch"]["seen"] == 4 * 8 and 0 <= u["fixmatch"]["kept"] <= 32  # 4 steps x mu*B
    ada = u["adabn"]
    assert ada["images"] == u["count"] + 5 * len(COLOURS)  # pool + training images
    assert ada["applied"] == (ada["held_out_adabn"] > ada["held_out_source"]) and ("adabn" in u["used"]) == ada["applied"]
    page = (run / "report.html").read_text()
    assert "Unlabelled inputs" in page and "FixMatch with weight 0.5" in page


def test_train_with_the_test_inputs_transductive(image_folder, tmp_path):
    run = tmp_path / "run"
    assert _train(image_folder, run, "--unlabelled", "test", strategy="linear_probe") == 0
    m = json.loads((run / "metrics.json").read_text())
    u = m["unlabelled"]
    assert u["transductive"] is True and u["count"] == m["n_test"] and u["weight"] == 0.0
    assert "fixmatch" not in u["used"] and u["adabn"]["held_out_source"] is not None
    assert "transductive" in (run / "report.html").read_text()
    # a head the gate does not cover, and no phase that trains: the pool is not read, and the run says so
    other = tmp_path / "multi"
    assert _train(image_folder, other, "--unlabelled", "test", strategy="multi_probe") == 0
    u = json.loads((other / "metrics.json").read_text())["unlabelled"]
    assert u["used"] == [] and u["weight"] == 0.0 and "plain probe" in u["reason"]


def test_resume_with_the_pool_gives_the_uninterrupted_weights(image_folder, tmp_path):
    pool = write_image_folder(tmp_path / "pool", per_class=3, seed=1)
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    # --no-cache: a warm feature cache skips the head fit's data loader, whose iteration draws from
    # the global RNG, so a second run would start its dropout from another state (not the pool's doing)
    extra = ("--unlabelled", str(pool), "--unlabelled-threshold", "0.0", "--head-dropout", "0.3", "--no-cache")
    assert _train(image_folder, whole, *extra, steps=5) == 0
    assert _train(image_folder, parts, *extra, "--stop-after", "2", steps=5) == 0
    assert main(["train", "--resume", str(parts), "--quiet"]) == 0
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(parts / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    ua, ub = (json.loads((r / "metrics.json").read_text())["unlabelled"] for r in (whole, parts))
    assert ua == ub and ua["fixmatch"]["kept"] == 5 * 8  # threshold 0: every pseudo-label counts


def test_bad_pools_stop_before_anything_is_written(image_folder, tmp_path, capsys):
    texts = tmp_path / "texts.csv"
    texts.write_text("text\nhello\nworld\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    for pool, words in [(tmp_path / "nope", "not found"), (texts, "images only"),
                        (empty, "no readable images")]:
        run = tmp_path / f"run_{pool.name}"
        assert _train(image_folder, run, "--unlabelled", str(pool)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0] and ("--unlabelled" in err[0] or str(pool) in err[0])
        assert not run.exists()


def test_auto_keeps_the_pool_only_when_it_wins_held_out(image_folder, tmp_path, monkeypatch):
    from transferkit.choose import auto, cv
    from transferkit.config import make_config
    pool = write_image_folder(tmp_path / "pool", per_class=2, seed=1)
    for name, with_pool in [("wins", 0.9), ("ties", 0.7)]:
        def fake(cfg, task, root, *a, _w=with_pool, **k):
            accs = [0.7, 0.6, _w, 0.5, 0.5] if cfg.unlabelled else [0.7, 0.6, 0.6, 0.5, 0.5]
            return {"folds": 3, "seconds": 0, "table": [{"wise": w, "accuracy": x, "accuracy_se": 0.01, "nll": 1.0}
                                                        for w, x in zip(cv.WISE_GRID, accs)]}
        monkeypatch.setattr(cv, "cv_finetune", fake)
        cfg = make_config(None, data=str(image_folder), backbone="bundled:efficientnet_lite0",
                          out=str(tmp_path / name), shots=5, unlabelled=str(pool))
        chosen, info = auto.resolve_auto(cfg, log=lambda *a: None)
        rec = json.loads((tmp_path / name / "auto" / "choice.json").read_text())["unlabelled"]
        assert rec["without_pool"]["accuracy"] == 0.7 and rec["with_pool"]["accuracy"] == max(0.7, with_pool)
        if name == "wins":
            assert rec["kept"] and chosen.unlabelled == str(pool) and (chosen.strategy, chosen.wise) == ("two_phase", 0.5)
        else:  # a tie keeps the run without the pool
            assert not rec["kept"] and chosen.unlabelled is None and chosen.strategy == "linear_probe"
        assert info["unlabelled"] == rec


def test_auto_pool_folds_see_their_held_out_images_unlabelled_when_transductive(image_folder, tmp_path):
    from transferkit.choose.pool_cv import cv_pool_or_not
    from transferkit.config import make_config
    from transferkit.engine.build import load_task_for
    cfg = make_config(None, data=str(image_folder), backbone=TINY, out=str(tmp_path / "run"), shots=4,
                      image_size=32, batch_size=8, steps=2, unlabelled="test", cache=False)
    task = load_task_for(cfg)
    ft, chosen, rec = cv_pool_or_not(cfg, task, tmp_path / "auto", k=2, log=lambda *a: None)
    rows = (tmp_path / "auto" / "pool.csv").read_text().splitlines()
    assert rows[0] == "path" and len(rows) - 1 == len(task.test) + len(task.train)
    for i in range(2):  # each fold's pool: the test inputs and the fold's held-out training images
        u = json.loads((tmp_path / "auto" / "cv_pool" / f"fold{i}" / "metrics.json").read_text())["unlabelled"]
        assert u["count"] == len(task.test) + len(task.train) // 2 and u["dropped_training_items"] == len(task.train) // 2
    assert rec["source"] == "test" and rec["transductive"] and rec["count"] == len(task.test)
    assert rec["kept"] == (rec["with_pool"]["accuracy"] > rec["without_pool"]["accuracy"])
    assert (chosen.unlabelled == "test") == rec["kept"] and ft["folds"] == 2
