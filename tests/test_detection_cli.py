"""`--task detect` through the CLI. Needs the dense-task registry (transferkit/dense, branch
fix/dense) with `"detect": "transferkit.detection.task"` in TASKS: skipped where transferkit/dense
is absent, failing where it is present but detect is not registered."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("transferkit.dense")

from test_detection import coco_set, yolo_set  # noqa: E402

from transferkit.cli import main  # noqa: E402

TINY = ["--backbone", "bundled:efficientnet_lite0@random", "--image-size", "64", "--batch-size", "2"]


def test_detect_train_evaluate_predict_through_the_cli(tmp_path, capsys):
    data, run = tmp_path / "coco", tmp_path / "run"
    coco_set(data, 6)
    assert main(["train", str(data), "--task", "detect", *TINY, "--steps", "3", "--out", str(run), "--quiet"]) == 0
    assert json.loads((run / "run.json").read_text())["task"] == "detect"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["n_train"] == 5 and set(metrics["per_class"]) == {"red", "blue"}
    capsys.readouterr()
    assert main(["evaluate", str(run), str(data), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 6
    out = tmp_path / "pred"
    assert main(["predict", str(run), str(data / "images"), "--output", str(out)]) == 0
    assert (out / "predictions.csv").read_text().splitlines()[0] == "image,label,score,x1,y1,x2,y2"
    assert main(["predict", str(run), str(data / "images"), "--output", str(out)]) == 2
    assert "already holds predictions.csv" in capsys.readouterr().err


def test_detect_layout_is_inferred_and_a_bad_label_stops_before_the_run_folder(tmp_path, capsys):
    data = tmp_path / "yolo"
    yolo_set(data, 3)
    (data / "labels" / "img_01.txt").write_text("7 0.5 0.5 0.2 0.2\n")
    assert main(["train", str(data), *TINY, "--steps", "1", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("transferkit: error: ") and "img_01.txt:1: class index 7" in err[-1]
    assert not (tmp_path / "run").exists()


def test_detect_shots_trains_on_that_many_labelled_images(tmp_path):
    data, run = tmp_path / "coco", tmp_path / "run"
    coco_set(data, 8)
    assert main(["train", str(data), "--task", "detect", *TINY, "--steps", "1", "--shots", "3",
                 "--out", str(run), "--quiet"]) == 0
    split = json.loads((run / "split.json").read_text())
    assert json.loads((run / "metrics.json").read_text())["n_train"] == 3 == len(split["train"])
    assert not set(split["train"]) & set(split["test"])


def test_detect_trains_batches_of_eight_unless_the_command_or_recipe_says(tmp_path):
    """dense.task_defaults: detect's own batch (few images need many small updates) sits below the
    recipe and the flags, and also applies when the task is inferred from the layout."""
    from transferkit.config import read_config
    data = tmp_path / "coco"
    coco_set(data, 4)
    tiny = ["--backbone", "bundled:efficientnet_lite0@random", "--image-size", "64", "--steps", "1", "--quiet"]
    recipe = tmp_path / "r.yaml"
    recipe.write_text("batch_size: 3\n")
    cases = {"inferred": [], "flag": ["--batch-size", "2"], "recipe": ["--config", str(recipe)]}
    for name, extra in cases.items():
        assert main(["train", str(data), *tiny, *extra, "--out", str(tmp_path / name)]) == 0
    got = {name: read_config(tmp_path / name / "config.yaml").batch_size for name in cases}
    assert got == {"inferred": 8, "flag": 2, "recipe": 3}
    import transferkit  # the notebook call takes the same defaults
    model = transferkit.fit(str(data), backbone="bundled:efficientnet_lite0@random", image_size=64, steps=1,
                            out=tmp_path / "api", quiet=True)
    assert model.config.batch_size == 8
