"""Dense runs behave as runs: exact resume after --stop-after, a finished run is not overwritten, a
resume stops on changed data, the same seed gives the same run, report.html shows the predictions
worst first, `compare` has a row per strategy in the task's metric, and the notebook API trains and
predicts. Tiny sets and models (test_dense.py, test_detection.py builders): seconds each."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from test_dense import SEG, TINY, write_mvtec, write_segmentation
from test_detection import coco_set

from transferkit.cli import main

DET = ["--task", "detect", "--backbone", "bundled:efficientnet_lite0@random", "--image-size", "64",
       "--batch-size", "2", "--quiet"]
ANOM = ["--backbone", TINY, "--image-size", "64", "--quiet"]


def _same_tensors(a: Path, b: Path) -> bool:
    x, y = load_file(str(a)), load_file(str(b))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def _metrics(run: Path) -> dict:
    m = json.loads((run / "metrics.json").read_text())
    return {k: v for k, v in m.items() if "seconds" not in k}


def _last_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("transferkit: error: "), err
    return err[-1]


# ------------------------------------------------------------------------------------ detect

def test_a_stopped_detect_run_resumes_to_the_same_weights_and_metrics(tmp_path, capsys):
    data = tmp_path / "coco"
    coco_set(data, 6)
    args = ["train", str(data), *DET, "--steps", "4"]
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    assert main([*args, "--out", str(tmp_path / "cut"), "--stop-after", "2"]) == 0
    cut = tmp_path / "cut"
    assert not (cut / "metrics.json").exists() and not (cut / "detector.safetensors").exists()
    state = json.loads((cut / "last" / "state.json").read_text())
    assert state["run_state"]["global_step"] == 2 and state["optimizer"] and len(state["losses"]) == 2
    assert main(["train", "--resume", str(cut), "--quiet"]) == 0
    assert _same_tensors(tmp_path / "whole" / "detector.safetensors", cut / "detector.safetensors")
    assert _metrics(tmp_path / "whole") == _metrics(cut)
    whole = json.loads((tmp_path / "whole" / "history.json").read_text())["loss"]
    assert json.loads((cut / "history.json").read_text())["loss"] == whole and len(whole) == 4
    page = (cut / "report.html").read_text()  # the held-out image, predicted boxes beside the truth
    assert "worst first (1 of 1)" in page and page.count("<img") == 2 and "missed" in page
    # finished: a resume has nothing to do, a new train there is refused without --overwrite
    assert main(["train", "--resume", str(cut), "--quiet"]) == 0
    capsys.readouterr()
    assert main([*args, "--out", str(cut)]) == 2
    assert "already holds a run" in _last_error(capsys)


def test_a_detect_resume_stops_when_an_annotation_changed(tmp_path, capsys):
    data, run = tmp_path / "coco", tmp_path / "run"
    coco_set(data, 6)
    assert main(["train", str(data), *DET, "--steps", "3", "--stop-after", "1", "--out", str(run)]) == 0
    doc = json.loads((data / "annotations.json").read_text())
    doc["annotations"][0]["bbox"][2] -= 3  # a narrower box
    (data / "annotations.json").write_text(json.dumps(doc))
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    line = _last_error(capsys)
    assert "data changed since the run started" in line and "edited" in line, line
    assert not (run / "metrics.json").exists()


def test_detect_report_draws_boxes_worst_first(tmp_path):
    from transferkit.detection.report import cards, match
    data = tmp_path / "coco"
    ds = coco_set(data, 2)
    good, bad = ds.items
    perfect = {"boxes": torch.tensor(good.boxes), "labels": torch.tensor(good.labels),
               "scores": torch.full((len(good.boxes),), 0.9)}
    wrong = {"boxes": torch.tensor([[0.0, 0.0, 5.0, 5.0]]), "labels": torch.tensor([0]),
             "scores": torch.tensor([0.8])}
    assert match(perfect, good.boxes, good.labels)["f1"] == 1.0
    m = match(wrong, bad.boxes, bad.labels)
    assert m == {"found": 0, "missed": len(bad.boxes), "false": 1, "f1": 0.0}
    made = cards([good, bad], [perfect, wrong], ds.classes)
    assert [c["badness"] for c in made] == [0.0, 1.0]
    drawn = np.asarray(made[1]["images"][0][1])
    plain = np.asarray(Image.open(bad.image).convert("RGB"))
    assert drawn.shape == plain.shape and (drawn != plain).any()  # the false box is drawn on the image


# ------------------------------------------------------------------------------------ anomaly

def test_a_stopped_anomaly_run_resumes_to_the_same_bank_threshold_and_metrics(tmp_path, monkeypatch):
    from transferkit.dense import anomaly
    data = write_mvtec(tmp_path / "mv", n_train=6, n_test=3)
    args = ["train", str(data), *ANOM]
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    for stop in (1, 3):  # after the memory bank; in the middle of the threshold's 5 folds
        cut = tmp_path / f"cut{stop}"
        assert main([*args, "--out", str(cut), "--stop-after", str(stop)]) == 0
        assert not (cut / "metrics.json").exists()
        saved = json.loads((cut / "last" / "state.json").read_text())["run_state"]
        assert saved["global_step"] == stop and not saved["done"]
        done, real = [], anomaly.fold_scores  # the resume continues: no second bank, only the folds left
        with monkeypatch.context() as m:
            m.setattr(anomaly, "build_bank", lambda *a, **k: pytest.fail("the bank was built again"))
            m.setattr(anomaly, "fold_scores", lambda maps, held, f, *a: done.append(f) or real(maps, held, f, *a))
            assert main(["train", "--resume", str(cut), "--quiet"]) == 0
        assert done == list(range(stop - 1, 5))
        assert _same_tensors(tmp_path / "whole" / "model.safetensors", cut / "model.safetensors")
        assert _metrics(tmp_path / "whole") == _metrics(cut)


def test_anomaly_seed_decides_the_run(tmp_path):
    data = write_mvtec(tmp_path / "mv", n_train=6, n_test=3)
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        assert main(["train", str(data), *ANOM, "--seed", str(seed), "--out", str(tmp_path / name)]) == 0
    assert _same_tensors(tmp_path / "a" / "model.safetensors", tmp_path / "b" / "model.safetensors")
    assert not _same_tensors(tmp_path / "a" / "model.safetensors", tmp_path / "c" / "model.safetensors")


# ------------------------------------------------------------------------------------ segment

def test_a_segment_resume_stops_when_a_mask_changed(tmp_path, capsys):
    data, run = write_segmentation(tmp_path / "seg", n=6), tmp_path / "run"
    assert main(["train", str(data), *SEG, "--steps", "4", "--stop-after", "1", "--out", str(run)]) == 0
    mask = np.asarray(Image.open(data / "masks" / "im03.png")).copy()
    mask[:4, :4] = 1
    Image.fromarray(mask, "L").save(data / "masks" / "im03.png")
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    line = _last_error(capsys)
    assert "data changed since the run started" in line and "im03.png" in line, line
    assert main(["train", "--resume", str(run), "--resume-inexact", "--quiet"]) == 0  # said, then allowed
    assert json.loads((run / "run.json").read_text())["inexact_resumes"][0]["reason"] == "data changed"


# ------------------------------------------------------------------------------------ compare

def test_compare_on_a_segment_set_has_a_row_per_strategy_in_miou(tmp_path, capsys):
    data, out = write_segmentation(tmp_path / "seg", n=8), tmp_path / "cmp"
    args = ["compare", str(data), *SEG, "--strategies", "linear_probe,scratch", "--seeds", "1",
            "--steps", "2", "--out", str(out)]
    assert main(args) == 0
    assert "task: segment (inferred" in capsys.readouterr().out
    r = json.loads((out / "compare.json").read_text())
    assert r["task"] == "segment" and r["metric"] == "miou" and r["identical_splits"]
    assert [(x["strategy"], x["shots"], x["seed"]) for x in r["rows"]] == [("linear_probe", "all", 0),
                                                                           ("scratch", "all", 0)]
    for row in r["rows"]:  # each row is the test mIoU of its own run folder
        assert row["miou"] == json.loads((Path(row["run_dir"]) / "metrics.json").read_text())["miou"]
        assert json.loads((Path(row["run_dir"]) / "run.json").read_text())["task"] == "segment"
    assert r["rows"][1]["backbone"].endswith("@random")
    md = (out / "compare.md").read_text()
    assert "## Test miou" in md and "| linear_probe |" in md and (out / "compare.html").is_file()
    assert main(args) == 0  # a second time: the finished cells are reused
    assert all(x["reused"] for x in json.loads((out / "compare.json").read_text())["rows"])


def test_compare_on_an_anomaly_set_scores_frozen_and_random_features_by_image_auroc(tmp_path, capsys):
    data, out = write_mvtec(tmp_path / "mv", n_train=4, n_test=3), tmp_path / "cmp"
    assert main(["compare", str(data), *ANOM, "--seeds", "0,1", "--out", str(out)]) == 0
    r = json.loads((out / "compare.json").read_text())
    assert r["metric"] == "image_auroc" and r["strategies"] == ["frozen", "scratch"]
    assert len(r["rows"]) == 4 and all(x["image_auroc"] is not None for x in r["rows"])
    assert {e["strategy"]: e["n"] for e in r["summary"]} == {"frozen": 2, "scratch": 2}
    assert main(["compare", str(data), *ANOM, "--strategies", "two_phase", "--out", str(tmp_path / "x")]) == 2
    assert "--strategies two_phase: anomaly compares frozen, scratch" in _last_error(capsys)
    assert not (tmp_path / "x" / "cells").exists()


def test_compare_on_a_detection_set_has_a_row_per_strategy_in_map50_on_identical_splits(tmp_path):
    data, out = tmp_path / "coco", tmp_path / "cmp"
    coco_set(data, 6)
    args = ["compare", str(data), *DET, "--strategies", "linear_probe,full,scratch", "--seeds", "1",
            "--steps", "1", "--out", str(out)]
    assert main(args) == 0
    r = json.loads((out / "compare.json").read_text())
    assert r["task"] == "detect" and r["metric"] == "map_50" and r["identical_splits"]
    assert [x["strategy"] for x in r["rows"]] == ["linear_probe", "full", "scratch"]
    splits = set()
    for row in r["rows"]:  # each row is its own detect run, scored on the same test images
        run = Path(row["run_dir"])
        assert row["map_50"] == json.loads((run / "metrics.json").read_text())["map_50"]
        assert json.loads((run / "run.json").read_text())["task"] == "detect"
        splits.add(json.dumps(json.loads((run / "split.json").read_text()), sort_keys=True))
    assert len(splits) == 1
    assert "| scratch |" in (out / "compare.md").read_text()


# ------------------------------------------------------------------------------------ notebook API

def test_fit_and_predict_a_segment_run_from_a_notebook(tmp_path):
    import transferkit
    data = write_segmentation(tmp_path / "seg", n=6)
    Image.open(data / "images" / "im01.png").resize((40, 24)).save(tmp_path / "odd.png")
    model = transferkit.fit(str(data), backbone=TINY, image_size=32, batch_size=4, steps=2,
                            out=tmp_path / "run", quiet=True)  # task inferred from the layout
    assert model.task == "segment" and model.classes == ["background", "square"]
    assert model.config.strategy == "auto" and "task='segment'" in repr(model) and "test miou=" in repr(model)
    one = model.predict(str(tmp_path / "odd.png"))
    assert one["mask"].shape == (24, 40) and one["mask"].dtype == np.uint8 and set(np.unique(one["mask"])) <= {0, 1}
    rows = model.predict([str(data / "images" / "im00.png"), Image.open(data / "images" / "im00.png")])
    assert np.array_equal(rows[0]["mask"], rows[1]["mask"]) and rows[1]["input"] == "<image 1>"
    # the same pixels as `transferkit predict` writes
    assert main(["predict", str(model.run_dir), str(data / "images" / "im00.png"), "--output", str(tmp_path / "p")]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "p" / "im00_mask.png")), rows[0]["mask"])
    assert model.evaluate(str(data))["n"] == 6
    assert transferkit.load(model.run_dir).predict(str(data / "images" / "im00.png"))["classes"] == rows[0]["classes"]


def test_fit_and_predict_anomaly_and_detect_runs_from_a_notebook(tmp_path):
    import transferkit
    mv = write_mvtec(tmp_path / "mv", n_train=4, n_test=2)
    model = transferkit.fit(str(mv), task="anomaly", backbone=TINY, image_size=64, out=tmp_path / "a", quiet=True)
    bad, good = model.predict([str(mv / "test" / "patch" / "000.png"), str(mv / "test" / "good" / "000.png")])
    assert bad["map"].shape == (64, 64) and bad["score"] == pytest.approx(float(bad["map"].max()), rel=0.05)
    assert bad["score"] > good["score"] and {bad["label"], good["label"]} <= {"good", "defect"}
    coco = tmp_path / "coco"
    coco_set(coco, 6)
    det = transferkit.fit(str(coco), backbone="bundled:efficientnet_lite0@random", image_size=64, batch_size=2,
                          steps=1, out=tmp_path / "d", quiet=True)
    assert det.task == "detect" and det.classes == ["red", "blue"]
    row = det.predict(str(coco / "images" / "img_00.png"))
    assert row["boxes"].shape == (len(row["scores"]), 4) and set(row["labels"]) <= {"red", "blue"}
    assert list(row["scores"]) == sorted(row["scores"], reverse=True)
    with pytest.raises(TypeError, match="reads a folder in its layout"):
        transferkit.fit([("a.png", "x")], task="segment", out=tmp_path / "no")
