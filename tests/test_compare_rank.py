"""`transferkit compare`, `transferkit rank` and `--reg l2sp:auto` on CPU with a tiny timm model:
the files they write, identical splits per seed, the budget, and a ranking that must put an
informative source above a noise source."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import COLOURS, write_image_folder
from torch import nn

from transferkit.cli import main
from transferkit.choose.compare import (budget_decision, estimate_seconds, parse_seeds, parse_shots,
                                 strategy_overrides)
from transferkit.regularizers import L2SP_AUTO_GRID

TINY = "timm:test_resnet@random"
# an explicit validation split: these tests are about choosing by it (the few-label protocol, which
# spends no labels on validation, has tests of its own in test_fewshot.py)
COMMON = ["--backbone", TINY, "--image-size", "32", "--batch-size", "8", "--steps", "3", "--quiet",
          "--val-fraction", "0.2"]


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _compare(data, out):
    return main(["compare", str(data), "--strategies", "linear_probe,full", "--shots", "2,all",
                 "--seeds", "2", "--out", str(out), *COMMON])


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """2 strategies x 2 shot settings x 2 seeds, through the real CLI."""
    root = tmp_path_factory.mktemp("compare")
    data = write_image_folder(root / "images")
    out = root / "out"
    assert _compare(data, out) == 0
    return out, data, json.loads((out / "compare.json").read_text())


# ------------------------------------------------------------------------------------ compare

def test_compare_writes_the_three_files(compared, capsys):
    out, _, result = compared
    rows = result["rows"]
    # (probe + 2 strategies) x 2 shot settings x 2 seeds
    assert len(rows) == 3 * 2 * 2
    cells = {(r["strategy"], str(r["shots"]), r["seed"]) for r in rows}
    assert cells == {(s, k, seed) for s in ("probe", "linear_probe", "full") for k in ("2", "all")
                     for seed in (0, 1)}
    for r in rows:
        assert not r["skipped"] and 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["macro_f1"] <= 1.0
        assert 0.0 <= r["val_accuracy"] <= 1.0 and r["train_seconds"] >= 0.0
        assert r["n_train"] == (2 * len(COLOURS) if r["shots"] == 2 else 24)
    assert all(r["steps"] == 3 for r in rows if r["strategy"] == "full")
    assert (out / "cells" / "full" / "2" / "seed1" / "metrics.json").is_file()

    # the summary is the mean over the seeds' rows
    probe_2 = [r["accuracy"] for r in rows if r["strategy"] == "probe" and r["shots"] == 2]
    entry = next(e for e in result["summary"] if e["strategy"] == "probe" and e["shots"] == "2")
    assert entry["n"] == 2 and entry["accuracy_mean"] == pytest.approx(np.mean(probe_2), abs=1e-12)
    assert entry["accuracy_std"] == pytest.approx(np.std(probe_2, ddof=1), abs=1e-12)

    # a recommendation per shot count, chosen by mean validation score among the compared strategies
    rec = result["recommended"]
    assert set(rec) == {"2", "all"}
    for k, r in rec.items():
        assert r["strategy"] in ("linear_probe", "full")
        vals = {s: np.mean([x["val_accuracy"] for x in rows if x["strategy"] == s and str(x["shots"]) == k])
                for s in ("linear_probe", "full")}
        assert r["val_accuracy"] == pytest.approx(max(vals.values()), abs=1e-12)

    md = (out / "compare.md").read_text()
    assert "| probe |" in md and "| linear_probe |" in md and "| full |" in md
    assert "Recommended strategy" in md and "± " in md and "transferkit compare " in md
    page = (out / "compare.html").read_text()
    assert "data:image/png;base64," in page and "<table>" in page and "probe" in page


def test_identical_splits_per_seed(compared):
    out, _, result = compared
    assert result["identical_splits"]
    for seed in (0, 1):
        for k in ("2", "all"):
            records = {s: _rows(out / "cells" / s / k / f"seed{seed}" / "splits.csv")
                       for s in ("probe", "linear_probe", "full")}
            # full's file was written by the engine, the others by compare: the same items everywhere
            assert records["probe"] == records["linear_probe"] == records["full"]
            hashes = {r["split_hash"] for r in result["rows"] if r["seed"] == seed and str(r["shots"]) == k}
            assert len(hashes) == 1
    train = {seed: sorted(r["item"] for r in _rows(out / "cells/full/all" / f"seed{seed}/splits.csv")
                          if r["split"] == "train") for seed in (0, 1)}
    assert train[0] != train[1]  # the seed does change the split


def test_linear_probe_cell_is_the_engines_linear_probe(compared, tmp_path):
    out, data, result = compared
    run = tmp_path / "lp"
    assert main(["train", str(data), "--strategy", "linear_probe", "--shots", "2", "--seed", "1",
                 "--out", str(run), *COMMON]) == 0
    engine_val = _rows(run / "history.csv")[0]
    cell = next(r for r in result["rows"] if (r["strategy"], r["shots"], r["seed"]) == ("linear_probe", 2, 1))
    assert cell["val_loss"] == pytest.approx(float(engine_val["val_loss"]), abs=2e-5)
    assert cell["accuracy"] == json.loads((run / "metrics.json").read_text())["accuracy"]


def test_rerun_reuses_finished_cells(compared):
    out, data, first = compared
    assert _compare(data, out) == 0
    again = json.loads((out / "compare.json").read_text())["rows"]
    assert all(r.get("reused") for r in again if r["strategy"] == "full")
    assert [(r["strategy"], r["accuracy"], r["val_loss"]) for r in again] == \
        [(r["strategy"], r["accuracy"], r["val_loss"]) for r in first["rows"]]


def test_budget_skips_and_reports(image_folder, tmp_path):
    out = tmp_path / "out"
    assert main(["compare", str(image_folder), "--strategies", "linear_probe,full", "--shots", "2",
                 "--seeds", "1", "--budget", "0.00001", "--out", str(out), *COMMON]) == 0
    rows = json.loads((out / "compare.json").read_text())["rows"]
    full = [r for r in rows if r["strategy"] == "full"]
    assert len(full) == 1 and full[0]["skipped"] and "budget" in full[0]["skip_reason"]
    assert full[0]["accuracy"] is None and not (out / "cells" / "full").exists()
    # the cheap rows on cached features always run
    assert all(not r["skipped"] for r in rows if r["strategy"] in ("probe", "linear_probe"))
    md = (out / "compare.md").read_text()
    assert "Skipped or shortened" in md and "full · 2 shots · seed 0: skipped" in md


def test_budget_decision_and_estimate():
    assert budget_decision(None, 10.0, 100) == ("run", 100, "")  # nothing measured yet
    assert budget_decision(50.0, 60.0, 100) == ("run", 100, "")
    action, steps, why = budget_decision(80.0, 60.0, 100)
    assert (action, steps) == ("shorten", 75) and "75 steps" in why
    assert budget_decision(200.0, 60.0, 100)[:2] == ("skip", 0)  # under half would fit
    assert budget_decision(1.0, 0.0, 100)[:2] == ("skip", 0)
    measured = [{"strategy": "full", "shots": "5", "seconds": 20.0, "steps": 10},
                {"strategy": "two_phase", "shots": "5", "seconds": 10.0, "steps": 10},
                {"strategy": "full", "shots": "all", "seconds": 60.0, "steps": 10}]
    assert estimate_seconds(measured, "full", "5", 100) == pytest.approx(200.0)       # same cell
    assert estimate_seconds(measured, "scratch", "5", 100) == pytest.approx(150.0)    # same shots
    assert estimate_seconds(measured, "full", "10", 100) == pytest.approx(400.0)      # same strategy
    assert estimate_seconds(measured, "scratch", "10", 10) == pytest.approx(30.0)     # anything
    assert estimate_seconds([], "full", "5", 100) is None


def test_strategy_names():
    assert strategy_overrides("full+l2sp", "bundled:x") == {"strategy": "full", "reg": "l2sp:10"}
    assert strategy_overrides("two_phase+l2sp:0.001", "b:x") == {"strategy": "two_phase", "reg": "l2sp:0.001"}
    assert strategy_overrides("full+bss:0.001", "b:x") == {"strategy": "full", "reg": "bss:0.001"}
    assert strategy_overrides("full+l2sp+bss:0.001", "b:x")["reg"] == "l2sp:10+bss:0.001"
    assert strategy_overrides("scratch", "bundled:efficientnet_lite0") == {
        "backbone": "bundled:efficientnet_lite0@random", "strategy": "full", "lr": 3e-3}
    with pytest.raises(ValueError, match="unknown kind"):
        strategy_overrides("full+l2s:0.1", "b:x")
    assert parse_shots("5, 10,all") == [5, 10, None] and parse_seeds("3") == [0, 1, 2]
    assert parse_seeds("0,5,7") == [0, 5, 7]
    for bad in ("0", "five"):
        with pytest.raises(ValueError, match="--shots"):
            parse_shots(bad)


def test_unknown_strategy_is_exit_2(image_folder, tmp_path, capsys):
    assert main(["compare", str(image_folder), "--strategies", "ful", "--shots", "2", "--seeds", "1",
                 "--out", str(tmp_path / "o"), *COMMON]) == 2
    assert "ful" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- l2sp:auto

def test_l2sp_auto_records_the_chosen_alpha(image_folder, tmp_path):
    run = tmp_path / "run"
    assert main(["train", str(image_folder), "--strategy", "full", "--reg", "l2sp:auto,0.01",
                 "--out", str(run), *COMMON]) == 0
    import yaml
    reg = yaml.safe_load((run / "config.yaml").read_text())["reg"]
    sweep = json.loads((run / "sweep" / "sweep.json").read_text())
    assert [r["alpha"] for r in sweep["runs"]] == list(L2SP_AUTO_GRID)
    assert reg == sweep["chosen"] and reg in {f"l2sp:{a},0.01" for a in L2SP_AUTO_GRID}
    assert sweep["steps"] == 1  # half of --steps 3
    for a in L2SP_AUTO_GRID:
        m = json.loads((run / "sweep" / f"alpha_{a:g}" / "metrics.json").read_text())
        assert "accuracy" not in m  # the sweep never looks at the test split
    assert "accuracy" in json.loads((run / "metrics.json").read_text())


def test_l2sp_auto_picks_best_validation(image_folder, tmp_path, monkeypatch):
    import importlib

    from transferkit.config import make_config
    from transferkit.choose.l2sp_sweep import resolve_l2sp_auto
    g = L2SP_AUTO_GRID
    score = {g[0]: 0.5, g[1]: 0.7, g[2]: 0.9, g[3]: 0.9}  # a tie: the lower val loss wins
    loss = {g[0]: 1.0, g[1]: 0.3, g[2]: 0.6, g[3]: 0.4}
    seen = []
    engine_fit = importlib.import_module("transferkit.engine.fit")  # the package exports a `fit` function

    def fake_fit(cfg, **kw):
        assert kw["evaluate_test"] is False
        alpha = float(cfg.reg.split(":")[1].split("+")[0])
        seen.append(cfg.reg)
        Path(cfg.out).mkdir(parents=True)
        hist = [{"step": 1, "val_accuracy": score[alpha] - 0.2, "val_loss": 1.5, "train_loss": 1.0},
                {"step": 2, "val_accuracy": score[alpha], "val_loss": loss[alpha], "train_loss": 0.5}]
        return engine_fit.FitResult(Path(cfg.out), None, engine_fit.RunState(history=hist))

    monkeypatch.setattr(engine_fit, "fit", fake_fit)
    cfg = make_config(None, data=str(image_folder), backbone=TINY, out=str(tmp_path / "r"),
                      reg="l2sp:auto+bss:0.001", steps=10, metric="accuracy", val_fraction=0.2)
    chosen = resolve_l2sp_auto(cfg, log=lambda *a: None)
    assert chosen.reg == f"l2sp:{g[3]}+bss:0.001,1" and chosen.steps == 10
    assert seen == [f"l2sp:{a}+bss:0.001,1" for a in L2SP_AUTO_GRID]

    # the default selection metric is the validation loss: the lowest best-row loss wins
    cfg = make_config(None, data=str(image_folder), backbone=TINY, out=str(tmp_path / "r2"),
                      reg="l2sp:auto+bss:0.001", steps=10, val_fraction=0.2)
    assert resolve_l2sp_auto(cfg, log=lambda *a: None).reg == f"l2sp:{g[1]}+bss:0.001,1"


# --------------------------------------------------------------------------------------- rank

class _MeanColour(nn.Module):
    """Per-channel mean and a few products of the means: features that tell the colours apart."""

    def forward(self, x):
        m = x.mean(dim=(2, 3))
        return torch.cat([m, m[:, :1] * m[:, 1:], m ** 2], dim=1)


class _Noise(nn.Module):
    """Features that ignore the input."""

    def __init__(self):
        super().__init__()
        self.g = torch.Generator().manual_seed(0)

    def forward(self, x):
        return torch.randn(x.shape[0], 8, generator=self.g)


def _fake_backbone(module, name, head=None):
    from transferkit.models.backbone import Backbone, ImagePreprocess, SourceInfo
    pre = ImagePreprocess(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), size=32)
    return Backbone(module=module, feature_dim=8, stages=[], preprocess=pre,
                    source=SourceInfo(id=name, arch=name, weights_hash="-"), modality="image",
                    source_head=head, source_classes=["r", "g", "b"] if head is not None else None)


def test_rank_puts_informative_source_first(image_folder):
    from transferkit.choose.rank import rank_sources
    head = nn.Linear(8, 3)
    with torch.no_grad():  # source classes that fire on red, green and blue
        head.weight.zero_()
        head.weight[:, :3] = 8 * torch.eye(3)
        head.bias.zero_()
    good = _fake_backbone(_MeanColour(), "fake:colour", head)
    noise = _fake_backbone(_Noise(), "fake:noise")
    rows = rank_sources(str(image_folder), [noise, good], log=lambda *a: None)
    assert [r["source"] for r in rows] == ["fake:colour", "fake:noise"]
    assert [r["rank"] for r in rows] == [1, 2]
    assert rows[0]["logme"] > rows[1]["logme"] + 0.1
    assert rows[0]["leep"] > np.log(1 / 3) + 0.1 and rows[1]["leep"] is None
    assert rows[0]["n"] == 24 and rows[0]["feature_dim"] == 8


def test_rank_cli(image_folder, capsys):
    srcs = f"{TINY},timm:test_efficientnet@random"
    assert main(["rank", str(image_folder), "--backbone", srcs, "--image-size", "32", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert sorted(r["source"] for r in rows) == sorted(srcs.split(","))
    assert rows[0]["logme"] >= rows[1]["logme"] and [r["rank"] for r in rows] == [1, 2]
    assert all(r["leep"] is not None and r["seconds"] > 0 for r in rows)  # timm keeps a classifier
    assert main(["rank", str(image_folder), "--backbone", TINY, "--shots", "2", "--image-size", "32"]) == 0
    out = capsys.readouterr().out
    assert "| 1 | timm:test_resnet@random |" in out and "LogME" in out


def test_rank_pick_prefers_the_source_whose_probe_scores_higher(image_folder):
    from transferkit.choose.source import best_row
    from transferkit.choose.rank import rank_sources
    good = _fake_backbone(_MeanColour(), "fake:colour")
    noise = _fake_backbone(_Noise(), "fake:noise")
    rows = rank_sources(str(image_folder), [noise, good], cv=True, log=lambda *a: None)
    by = {r["source"]: r for r in rows}
    assert by["fake:colour"]["cv_accuracy"] > 0.9 > 0.6 > by["fake:noise"]["cv_accuracy"]
    assert by["fake:colour"]["cv_folds"] == 5  # 8 training images per class: 5 stratified folds
    assert best_row(rows)["source"] == "fake:colour"
    # one label per class: nothing to cross-validate, LogME decides
    rows1 = rank_sources(str(image_folder), [noise, good], cv=True, shots=1, log=lambda *a: None)
    assert all(r["cv_accuracy"] is None for r in rows1)
    assert best_row(rows1)["source"] == max(rows1, key=lambda r: r["logme"])["source"]


def test_train_backbone_auto_trains_the_source_with_the_best_cv_probe(image_folder, tmp_path, capsys):
    other = "timm:test_efficientnet@random"
    out = tmp_path / "run"
    assert main(["train", str(image_folder), "--backbone", f"auto:{TINY},{other}", "--strategy",
                 "linear_probe", "--image-size", "32", "--quiet", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    record = metrics["choice"]["backbone"]
    assert record["candidates"] == [TINY, other] and record["unscored"] == []
    best = max(record["rows"], key=lambda r: (r["cv_accuracy"], r["logme"]))
    assert record["chosen"] == best["source"]
    import yaml
    assert yaml.safe_load((out / "config.yaml").read_text())["backbone"] == best["source"]
    assert "Source chosen by auto" in (out / "report.html").read_text()


@pytest.mark.parametrize("value,needle", [("auto:", "lists no source"),
                                          ("auto:bundled:efficientnet_lite0,nosuch:x", "nosuch")])
def test_backbone_auto_lists_are_checked_before_work(image_folder, tmp_path, capsys, value, needle):
    assert main(["train", str(image_folder), "--backbone", value, "--out", str(tmp_path / "r")]) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_backbone_auto_with_a_text_source_for_images_is_refused_by_name(image_folder, tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["train", str(image_folder), "--backbone", f"auto:{TINY},bundled:minilm-l6",
                 "--out", str(out)]) == 2
    assert "bundled:minilm-l6 is a text model" in capsys.readouterr().err
    assert not out.exists()
