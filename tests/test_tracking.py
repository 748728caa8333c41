"""--log-with tensorboard through Accelerate's trackers: the event file holds the per-step training
loss, the validation metrics and confusion matrix of every evaluation, the test metrics and the
hyper-parameters, and the numbers agree with history.csv and metrics.json."""

import csv
import json

import pytest

from transferkit.cli import main

TINY = "timm:test_resnet@random"


def test_tensorboard_event_file_has_the_run(tmp_path, image_folder, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out = tmp_path / "run"
    rc = main(["train", str(image_folder), "--backbone", TINY, "--image-size", "32", "--batch-size", "8",
               "--steps", "4", "--eval-every", "2", "--strategy", "full", "--val-fraction", "0.2",
               "--out", str(out), "--quiet",
               "--log-with", "tensorboard"])
    assert rc == 0, capsys.readouterr().err
    events = list((out / "logs").rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file under RUN/logs"
    scalars, images = {}, {}
    for ev in events:
        acc = EventAccumulator(str(ev.parent), size_guidance={"scalars": 0, "images": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
        for tag in acc.Tags()["images"]:
            images.setdefault(tag, []).extend(e.step for e in acc.Images(tag))
    assert [s for s, _ in scalars["train/loss"]] == [1, 2, 3, 4]
    with open(out / "history.csv", newline="") as f:
        history = [r for r in csv.DictReader(f) if r["val_accuracy"]]
    assert [s for s, _ in sorted(scalars["val/accuracy"])] == [int(r["step"]) for r in history] == [2, 4]
    for (step, value), row in zip(sorted(scalars["val/accuracy"]), history):
        assert value == pytest.approx(float(row["val_accuracy"]), abs=1e-5)
    for (step, value), row in zip(sorted(scalars["val/nll"]), history):
        assert value == pytest.approx(float(row["val_loss"]), abs=1e-5)
    # the mean of the logged per-step losses is the train_loss of the validation row
    losses = dict(scalars["train/loss"])
    assert (losses[1] + losses[2]) / 2 == pytest.approx(float(history[0]["train_loss"]), abs=1e-5)
    assert sorted(images["val/confusion_matrix"]) == [2, 4]
    m = json.loads((out / "metrics.json").read_text())
    assert scalars["test/accuracy"][0][1] == pytest.approx(m["accuracy"], abs=1e-6)
    assert list((out / "logs").rglob("hparams.yml")), "hyper-parameters not stored"


def test_log_with_unknown_or_missing_tracker_is_refused_first(tmp_path, image_folder, capsys):
    out = tmp_path / "run"
    assert main(["train", str(image_folder), "--backbone", TINY, "--out", str(out), "--log-with", "neptune"]) == 2
    assert "tensorboard, mlflow, wandb" in capsys.readouterr().err and not out.exists()


def test_no_progress_bar_when_the_output_is_not_a_terminal(image_folder, tmp_path, capsys):
    # a redirected log got one carriage-return update per step from the training bar
    assert main(["train", str(image_folder), "--backbone", TINY, "--image-size", "32", "--strategy", "full",
                 "--steps", "6", "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr()
    assert "\r" not in out.err + out.out and "it/s" not in out.err + out.out
    assert "test accuracy" in out.out  # the log lines themselves are still there
