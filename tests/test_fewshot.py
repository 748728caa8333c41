"""The few-label protocol: cross-validation instead of a validation carve-out, heads that leave
fine-tuning a gradient, WiSE-FT, the multi-stage probe and `--strategy auto`; each defect of issue 9
that the engine had is pinned by a test here."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import COLOURS, PER_CLASS, write_image_folder
from torch import nn

from transferkit.cli import main
from transferkit.data import cv_folds, load_task
from transferkit.engine.headfit import choose_c, fit_linear_head, fit_probe, view_probs

TINY = "timm:test_resnet@random"


def _train(data, out, *extra, steps=4, strategy="two_phase"):
    return main(["train", str(data), "--backbone", TINY, "--image-size", "32", "--batch-size", "8",
                 "--steps", str(steps), "--strategy", strategy, "--out", str(out), "--quiet", *extra])


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------ cross-validation

@pytest.mark.parametrize("per_class,k,expect", [(5, 5, 5), (3, 5, 3), (10, 3, 3), (1, 5, 0)])
def test_each_label_is_held_out_in_exactly_one_fold(per_class, k, expect):
    labels = np.repeat(np.arange(4), per_class)
    folds = cv_folds(labels, k, seed=0)
    assert len(folds) == expect
    if not folds:
        return  # a class with a single label cannot be held out: no cross-validation at all
    held = np.concatenate([te for _, te in folds])
    assert sorted(held.tolist()) == list(range(len(labels)))  # every label exactly once
    for tr, te in folds:
        assert not set(tr) & set(te)
        assert set(labels[te]) == set(range(4))  # stratified: every class in every fold
    assert [te.tolist() for _, te in cv_folds(labels, k, seed=0)] == [te.tolist() for _, te in folds]


def test_few_labels_spend_none_on_validation(image_folder):
    # defect 3: at 5 shots a 20% carve-out took one label in five away from training
    task = load_task(image_folder, shots=5, seed=0, val_fraction=None)
    assert len(task.val) == 0 and len(task.train) == 5 * len(COLOURS)
    # the old default, asked for explicitly, still works; and with many labels a split is made
    assert len(load_task(image_folder, shots=5, seed=0, val_fraction=0.2).val) > 0
    assert len(load_task(image_folder, seed=0, val_fraction=0.0).val) == 0


def test_train_at_few_labels_reports_the_cv_estimate_and_keeps_final_weights(image_folder, tmp_path):
    run = tmp_path / "run"
    assert _train(image_folder, run, "--shots", "5", "--cv-folds", "5") == 0
    m = json.loads((run / "metrics.json").read_text())
    assert m["n_val"] == 0 and m["n_train"] == 5 * len(COLOURS)
    est = m["estimate"]
    assert est["method"] == "cv" and est["folds"] == 5 and 0.0 <= est["accuracy"] <= 1.0
    assert est["accuracy_se"] is not None and est["of"] == "the probe phase"
    assert m["selection"].startswith("final weights")
    assert "held-out" in (run / "report.html").read_text() or "estimate" in (run / "report.html").read_text()
    # the estimate is the best of the values of C compared on the same folds: labelled optimistic
    from transferkit.engine.headfit import C_GRID
    assert est["compared"] == len(C_GRID) and est["optimistic"] is True
    assert f"chosen among {est['compared']} compared, so optimistic" in (run / "report.html").read_text()


# ------------------------------------------------------------------------------ head fitting

def _blobs(n_per_class=12, dim=16, classes=3, seed=0, sep=3.0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=g) * sep
    y = torch.arange(classes).repeat_interleave(n_per_class)
    x = centers[y] + torch.randn(len(y), dim, generator=g)
    return x, y


def test_calibrated_head_leaves_fine_tuning_a_gradient():
    # defect 1: a head fitted to near-zero training loss gives the backbone almost no gradient
    x, y = _blobs()
    views = x[None]
    folds = cv_folds(y.numpy(), 4, 0)
    sharp, calibrated = nn.Linear(16, 3), nn.Linear(16, 3)
    calibrated.load_state_dict(sharp.state_dict())
    fit_linear_head(sharp, x, y, C=1e4)
    choice = fit_probe(calibrated, views, y, folds=folds, calibrated=True)
    assert choice.C_nll == min(choice.table, key=lambda r: r["nll"])["C"]

    def feature_grad(head):
        f = x.clone().requires_grad_(True)
        nn.functional.cross_entropy(head(f), y).backward()
        return f.grad.norm().item()
    assert nn.functional.cross_entropy(sharp(x), y).item() < 1e-2
    assert feature_grad(calibrated) > 5 * feature_grad(sharp)


def test_cv_scores_held_out_items_on_all_their_views_and_never_trains_on_them():
    x, y = _blobs(n_per_class=6)
    flipped = x + 0.01
    views = torch.stack([x, flipped])
    folds = cv_folds(y.numpy(), 3, 0)
    choice = choose_c(nn.Linear(16, 3), views, y, folds=folds, cs=(1.0,))
    # recompute by hand: train on both views of the fold's training items, score averaged views
    accs = []
    for tr, te in folds:
        head = nn.Linear(16, 3)
        torch.manual_seed(0)
        head.load_state_dict(nn.Linear(16, 3).state_dict())
        fit_linear_head(head, views[:, tr].reshape(-1, 16), y[tr].repeat(2), 1.0)
        accs.append(float((view_probs(head, views[:, te]).argmax(1) == y[te]).float().mean()))
    assert choice.method == "cv" and choice.folds == 3
    assert choice.table[0]["accuracy"] == pytest.approx(np.mean(accs), abs=1e-9)


def test_folds_fitted_together_along_the_c_path_match_separate_fits():
    # a linear head fits the folds of one C in one L-BFGS run, warm-started from the smaller C:
    # same minimum as one cold fit per (C, fold), which a head of another type still gets
    from transferkit.engine.headfit import _fit_linear_heads
    x, y = _blobs(n_per_class=10, sep=0.6)  # overlapping classes: held-out accuracy varies with C
    views = torch.stack([x, x.flip(1)])
    folds = cv_folds(y.numpy(), 4, 0)
    torch.manual_seed(0)
    linear = nn.Linear(16, 3)
    other = nn.Sequential(nn.Linear(16, 3))
    other[0].load_state_dict(linear.state_dict())
    together, apart = choose_c(linear, views, y, folds=folds), choose_c(other, views, y, folds=folds)
    assert (together.C, together.C_nll) == (apart.C, apart.C_nll)
    assert len({r["accuracy"] for r in apart.table}) > 2  # the choice is not a tie
    for a, b in zip(together.table, apart.table):
        assert a["accuracy"] == b["accuracy"] and a["nll"] == pytest.approx(b["nll"], abs=2e-3)
    rows = torch.zeros(len(folds), len(y))
    for f, (tr, _) in enumerate(folds):
        rows[f, tr] = 1.0
    w = linear.weight.detach().expand(len(folds), -1, -1).clone().requires_grad_(True)
    b = linear.bias.detach().expand(len(folds), -1).clone().requires_grad_(True)
    _fit_linear_heads(w, b, views.reshape(-1, 16), y.repeat(2), rows.repeat(1, 2), 1.0)
    for f, (tr, _) in enumerate(folds):
        head = nn.Linear(16, 3)
        head.load_state_dict(linear.state_dict())
        fit_linear_head(head, views[:, tr].reshape(-1, 16), y[tr].repeat(2), 1.0)
        assert torch.allclose(head.weight, w[f], atol=5e-3) and torch.allclose(head.bias, b[f], atol=5e-3)


def test_validation_is_scored_with_the_tests_tta(image_folder, tmp_path):
    # defect 2: validation was scored without the flip TTA the test uses
    run = tmp_path / "run"
    assert _train(image_folder, run, "--val-fraction", "0.3", strategy="linear_probe") == 0
    from transferkit.infer.loaders import eval_loader, make_dataset
    from transferkit.infer.predict import predict_probs
    from transferkit.engine.run import load_run
    model, cfg = load_run(run)
    val = [r for r in _rows(run / "splits.csv") if r["split"] == "val"]
    from transferkit.data import Example
    items = [Example(str(Path(image_folder) / r["item"]), r["label"]) for r in val]
    loader = eval_loader(model, make_dataset(model, items, train=False, augment=False, image_size=32, seed=0), 16)
    from transferkit.infer.tta import views_of
    assert views_of(cfg) > 0  # the mirror and augmented copies (infer/tta.py), as the test is scored
    p_tta, yv = predict_probs(model, loader, "cpu", tta=True, views=views_of(cfg))
    p_plain, _ = predict_probs(model, loader, "cpu", tta=False)
    nll = lambda p: float(-np.log(p[np.arange(len(yv)), yv]).mean())  # noqa: E731
    logged = float(_rows(run / "history.csv")[0]["val_loss"])
    assert nll(p_tta) != pytest.approx(nll(p_plain), abs=1e-6)  # the flip does change the scores
    assert logged == pytest.approx(nll(p_tta), abs=1e-4)


# ------------------------------------------------------------------------------ WiSE-FT

def test_wise_mix_interpolates_weights_and_keeps_integer_buffers():
    from transferkit.engine.selection import wise_mix
    lp = {"w": torch.zeros(3), "n": torch.tensor(5)}
    ft = {"w": torch.tensor([2.0, 4.0, 6.0]), "n": torch.tensor(9)}
    assert torch.equal(wise_mix(lp, ft, 0.0)["w"], lp["w"])
    assert torch.equal(wise_mix(lp, ft, 1.0)["w"], ft["w"])
    assert torch.allclose(wise_mix(lp, ft, 0.25)["w"], torch.tensor([0.5, 1.0, 1.5]))
    assert wise_mix(lp, ft, 0.5)["n"].item() == 9


def test_two_phase_with_wise_zero_is_exactly_its_probe(image_folder, tmp_path):
    from transferkit.store import checkpoint as ck
    run = tmp_path / "run"
    assert _train(image_folder, run, "--shots", "4", "--wise", "0") == 0
    final, lp = ck.load_tensors(run / "model.safetensors"), ck.load_tensors(run / "lp_model.safetensors")
    assert all(torch.equal(final[k], lp[k]) for k in final if final[k].is_floating_point())
    m = json.loads((run / "metrics.json").read_text())
    assert m["wise"]["weight"] == 0.0 and m["wise"]["chosen"] == "given"
    from transferkit.choose.compare import kept_finetuned
    from transferkit.config import read_config
    assert kept_finetuned(m, read_config(run / "config.yaml")) is False  # measured, not hidden


# ------------------------------------------------------------------------------ augmented probe views

def test_probe_learns_from_augmented_views_and_scores_only_plain_ones(image_folder, tmp_path, monkeypatch):
    from transferkit.store import checkpoint as ck
    from transferkit.engine import headfit
    seen = []
    real = headfit.choose_c

    def spy(head, views, y, **kw):
        seen.append((len(views), kw.get("fit_views"), kw.get("score_views")))
        return real(head, views, y, **kw)
    monkeypatch.setattr(headfit, "choose_c", spy)
    runs = {}
    for k in (0, 3):
        runs[k] = tmp_path / f"pv{k}"
        assert _train(image_folder, runs[k], "--shots", "6", "--probe-views", str(k),
                      strategy="linear_probe") == 0
    # plain + mirrored views score; the 3 augmented copies are only learnt from
    assert seen == [(2, 2, 2), (5, 5, 2)]
    m = json.loads((runs[3] / "metrics.json").read_text())
    assert m["head_fit"]["probe_views"] == 3
    assert "probe_views" not in json.loads((runs[0] / "metrics.json").read_text())["head_fit"]
    w0, w3 = (ck.load_tensors(runs[k] / "model.safetensors")["head.weight"] for k in (0, 3))
    assert not torch.allclose(w0, w3)  # the extra views changed what the head learnt


def test_probe_views_default_shrinks_with_the_training_set():
    from transferkit.config import TrainConfig
    from transferkit.infer.probe_views import MAX_VIEWS, VIEW_BUDGET, n_probe_views
    cfg = TrainConfig(data="x", out="y")
    assert n_probe_views(cfg, 50, "image") == MAX_VIEWS
    assert n_probe_views(cfg, VIEW_BUDGET // 2, "image") == 2
    assert n_probe_views(cfg, VIEW_BUDGET * 2, "image") == 0
    assert n_probe_views(cfg, 50, "text") == 0
    assert n_probe_views(TrainConfig(data="x", out="y", augment=False), 50, "image") == 0
    assert n_probe_views(TrainConfig(data="x", out="y", probe_views=3), 10_000, "image") == 3


# ------------------------------------------------------------------------------ multi-stage probe

def test_multi_stage_features_scale_each_block_by_one_number():
    """A dimension nearly constant on the few training items must not get a huge weight: the scale
    is per block (unit total variance), not per dimension."""
    from transferkit.models.multi_probe import MultiStageFeatures
    feats = MultiStageFeatures(torch.nn.Identity(), [], [4])
    g = torch.Generator().manual_seed(0)
    raw = torch.randn(12, 4, generator=g) * torch.tensor([1.0, 2.0, 3.0, 1e-4]) + 5.0
    feats.standardise(raw, [True])
    assert torch.allclose(feats.shift, raw.mean(0))
    assert torch.allclose(feats.scale, torch.full((4,), feats.scale[0].item()))  # one number per block
    z = (raw - feats.shift) * feats.scale
    assert abs(float(z.var(0).sum()) - 1.0) < 1e-4  # the block's total variance is 1
    assert float(z[:, 3].abs().max()) < 1e-3  # the near-constant dimension stays near zero


def test_multi_probe_chooses_blocks_by_cv_and_reloads(image_folder, tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(image_folder, run, "--shots", "6", strategy="multi_probe") == 0
    m = json.loads((run / "metrics.json").read_text())
    fit = m["head_fit"]
    assert fit["method"] == "cv" and 0 <= fit["blocks"] <= 3
    assert [o["blocks"] for o in fit["options"]] == list(range(len(fit["options"])))
    from transferkit.engine.run import load_run
    model, _ = load_run(run)
    scale = model.backbone.scale
    # unchosen blocks contribute nothing; chosen ones and the final features do
    for i, sl in enumerate(model.backbone.blocks()[:-1]):
        assert bool((scale[sl] != 0).any()) == (i < fit["blocks"])
    assert bool((scale[model.backbone.blocks()[-1]] != 0).all())
    capsys.readouterr()
    assert main(["evaluate", str(run), str(image_folder), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == len(COLOURS) * PER_CLASS


# ------------------------------------------------------------------------------ auto

def test_auto_follows_the_cross_validated_evidence(image_folder, tmp_path, monkeypatch):
    from transferkit.choose import auto, cv
    from transferkit.config import make_config
    # (LP-FT held-out accuracy per WiSE weight, multi-stage probe held-out accuracy, standard error
    # over folds) -> the choice: the cheapest within one standard error of the best
    cases = {"probe": ([0.8, 0.7, 0.6, 0.5, 0.5], 0.8, 0.01, ("linear_probe", None)),  # a tie goes to the cheaper
             "ft": ([0.5, 0.6, 0.9, 0.7, 0.6], 0.7, 0.01, ("two_phase", 0.5)),
             "multi": ([0.6, 0.65, 0.7, 0.6, 0.6], 0.75, 0.01, ("multi_probe", None)),
             "ft_clear": ([0.70, 0.74, 0.80, 0.78, 0.7], 0.6, 0.03, ("two_phase", 0.5)),
             "ft_in_the_noise": ([0.70, 0.74, 0.80, 0.78, 0.7], 0.6, 0.07, ("two_phase", 0.25)),
             "probe_in_the_noise": ([0.70, 0.74, 0.80, 0.78, 0.7], 0.6, 0.12, ("linear_probe", None))}
    for name, (accs, multi, se, expect) in cases.items():
        ft = [{"wise": w, "accuracy": a, "accuracy_se": se, "nll": 1.0} for w, a in zip(cv.WISE_GRID, accs)]
        mp = [{"wise": 1.0, "accuracy": multi, "accuracy_se": se, "nll": 1.0}]

        def fake(cfg, task, root, *, k=3, strategy="two_phase", ft=ft, mp=mp, **kw):
            return {"folds": k, "table": mp if strategy == "multi_probe" else ft, "seconds": 0}
        monkeypatch.setattr(cv, "cv_finetune", fake)
        cfg = make_config(None, data=str(image_folder), backbone="bundled:efficientnet_lite0",
                          out=str(tmp_path / name), shots=5)
        chosen, info = auto.resolve_auto(cfg, log=lambda *a: None)
        assert (chosen.strategy, chosen.wise) == expect, name
        assert info["multi_probe_cv"]["accuracy"] == multi
        assert json.loads((tmp_path / name / "auto" / "choice.json").read_text())["strategy"] == chosen.strategy
    # a random-init backbone is fine-tuned whole; with a validation split, LP-FT chooses on it
    assert auto.resolve_auto(make_config(None, data=str(image_folder), backbone=TINY, out=str(tmp_path / "r")),
                             log=lambda *a: None)[0].strategy == "full"
    # one label per class: no fold can be formed, so LP-FT at the weight chosen in advance for it
    monkeypatch.setattr(cv, "cv_finetune", lambda *a, **kw: None)
    one = make_config(None, data=str(image_folder), backbone="bundled:efficientnet_lite0",
                      out=str(tmp_path / "one"), shots=1)
    chosen, info = auto.resolve_auto(one, log=lambda *a: None)
    assert (chosen.strategy, chosen.wise) == ("two_phase", auto.ONE_LABEL_WISE) == ("two_phase", 0.25)
    assert "no held-out evidence" in info["reason"]


def test_auto_end_to_end_never_reads_the_test_split_before_the_final_score(image_folder, tmp_path, monkeypatch):
    from transferkit.data import images
    opened = []
    real = images.open_rgb
    monkeypatch.setattr(images, "open_rgb", lambda p: (opened.append(str(p)), real(p))[1])
    from transferkit.choose.auto import resolve_auto
    from transferkit.config import make_config
    from transferkit.engine.build import load_task_for
    from transferkit.train import train
    # a pretrained-looking source so that auto cross-validates: the tiny model from a file
    cfg = make_config(None, data=str(image_folder), backbone=TINY, out=str(tmp_path / "run"), shots=4,
                      image_size=32, batch_size=8, steps=3)
    monkeypatch.setattr("transferkit.models.parse_source", lambda s: ("timm", "test_resnet", True))
    chosen, info = resolve_auto(cfg, log=lambda *a: None)
    test_items = {e.x for e in load_task_for(cfg).test}
    assert opened and not test_items & set(opened)
    assert info["finetune_cv"]["folds"] == 3 and len(info["finetune_cv"]["table"]) == 5
    assert info["multi_probe_cv"]["accuracy"] is not None  # scored on the same folds, before any test item
    assert chosen.strategy in ("linear_probe", "multi_probe", "two_phase")
    result = train(chosen, quiet=True)
    assert test_items <= set(opened) and result.metrics["n_test"] == len(test_items)


# ------------------------------------------------------------------------------ learning happens

def test_scratch_baseline_learns(image_folder, tmp_path):
    # an honest baseline: random init with a learning rate for random weights; its loss must fall
    run = tmp_path / "scratch"
    assert _train(image_folder, run, "--lr", "3e-3", "--eval-every", "10", steps=60, strategy="full") == 0
    losses = [float(r["train_loss"]) for r in _rows(run / "history.csv") if r["train_loss"]]
    assert losses[-1] < 0.7 * losses[0] and losses[0] > 0.5
    assert json.loads((run / "metrics.json").read_text())["accuracy"] > 1 / len(COLOURS) + 0.2


def test_fine_tuning_real_weights_moves_the_backbone_and_beats_chance_and_scratch(tmp_path):
    """The bundled ImageNet Lite0 on 4 clip-art classes, 6 labels each, at 64 px."""
    import shutil

    from transferkit.demo import IMAGE_DEMO
    from transferkit.store import checkpoint as ck
    from transferkit.models import load_backbone
    data = tmp_path / "clipart"
    for d in sorted(p for p in IMAGE_DEMO.iterdir() if p.is_dir())[:4]:
        shutil.copytree(d, data / d.name)
    common = ["--image-size", "64", "--batch-size", "12", "--shots", "6", "--quiet", "--steps", "12",
              "--test-fraction", "0.3"]
    ft, scratch = tmp_path / "ft", tmp_path / "scratch"
    assert main(["train", str(data), "--backbone", "bundled:efficientnet_lite0", "--strategy", "two_phase",
                 "--wise", "1", "--out", str(ft), *common]) == 0
    assert main(["train", str(data), "--backbone", "timm:tf_efficientnet_lite0@random", "--strategy", "full",
                 "--lr", "3e-3", "--out", str(scratch), *common]) == 0
    # parameters only: with few labels BatchNorm runs on its source statistics (--bn auto), so the
    # running means and variances rightly stay where they were
    source = {f"backbone.{k}": v for k, v in load_backbone("bundled:efficientnet_lite0").module.named_parameters()}
    tuned = ck.load_tensors(ft / "model.safetensors")
    moved = [k for k in source if not torch.equal(source[k].detach(), tuned[k])]
    assert len(moved) > 0.5 * len(source)  # fine-tuning moved the backbone, not only the head
    acc_ft = json.loads((ft / "metrics.json").read_text())["accuracy"]
    acc_scratch = json.loads((scratch / "metrics.json").read_text())["accuracy"]
    assert acc_ft > 0.25 + 0.25 and acc_ft > acc_scratch + 0.1


def test_report_curves_without_a_validation_split_draw_without_warnings():
    # few labels: no validation rows; matplotlib warned "No artists with labels" into every demo log
    import warnings

    from transferkit.report import _curves
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        uri = _curves([{"step": 0, "train_loss": 2.0}, {"step": 5, "train_loss": 1.0}])
    assert uri.startswith("data:image/png;base64,")


def test_cv_folds_train_the_final_runs_backbone_lr(tmp_path):
    """A fold holds two thirds of the labels: at 24 per class it has 16 (few), the final run 24
    (more than few). The folds must train the recipe the final run trains, so the backbone LR
    default is settled on the whole training split and recorded in each fold's config."""
    from transferkit.choose.cv import cv_finetune
    from transferkit.config import make_config
    data = write_image_folder(tmp_path / "images", per_class=24)
    task = load_task(str(data), val_fraction=0.0, test_fraction=0.0)
    cfg = make_config(None, data=str(data), backbone=TINY, out=str(tmp_path / "run"), steps=1, batch_size=8,
                      precision="fp32", val_fraction=0.0, test_fraction=0.0)
    assert cv_finetune(cfg, task, tmp_path / "cv", k=3, strategy="full", log=lambda *a: None) is not None
    for i in range(3):
        fold = json.loads((tmp_path / "cv" / f"fold{i}" / "fold.json").read_text())
        assert fold["config"]["backbone_lr_mult"] == 1.0
