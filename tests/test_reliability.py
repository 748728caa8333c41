"""Reliability (issue 10): the user's files and compute are never lost, and bad input is one clear
line with exit code 2. Each test here backs a row of the "Bad inputs and faults" table (docs/reference/bad-inputs.md)."""

import errno
import importlib
import json
import os
import signal
from pathlib import Path

import pytest
import torch
from conftest import write_image_folder
from safetensors.torch import load_file

from transferkit.cli import main
from transferkit.store import checkpoint as ck

TINY = "timm:test_resnet@random"


def _train(data, out, *extra, steps=6, strategy="full"):
    return main(["train", str(data), "--backbone", TINY, "--image-size", "32", "--batch-size", "8",
                 "--steps", str(steps), "--strategy", strategy, "--out", str(out), "--quiet", *extra])


def _err(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("transferkit: error:")]
    assert len(lines) == 1, err
    return err


def _same_weights(a: Path, b: Path, name="last/model.safetensors"):
    ta, tb = load_file(str(a / name)), load_file(str(b / name))
    assert ta.keys() == tb.keys()
    for k in ta:
        torch.testing.assert_close(ta[k], tb[k], rtol=0, atol=1e-6, msg=k)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("rel") / "images")


@pytest.fixture(scope="module")
def whole(data, tmp_path_factory):
    """The uninterrupted 6-step run every interrupted run must end up equal to."""
    run = tmp_path_factory.mktemp("whole") / "run"
    assert _train(data, run) == 0
    return run


# ------------------------------------------------------------------------------- run folder

def test_out_not_empty_and_not_a_run_is_refused(data, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.yaml").write_text("my own config\n")
    (out / "notes.txt").write_text("keep me\n")
    assert _train(data, out) == 2
    err = _err(capsys)
    assert "not empty and is not a transferkit run" in err and "--overwrite" in err and "notes.txt" in err
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "notes.txt"]

    assert _train(data, out, "--overwrite", steps=2) == 0
    assert (out / "config.yaml.orig").read_text() == "my own config\n"  # kept, not replaced
    assert (out / "notes.txt").read_text() == "keep me\n"
    assert (out / "metrics.json").is_file() and (out / "run.json").is_file()


def test_overwrite_of_our_own_run_keeps_the_users_files(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(data, out, steps=2) == 0
    (out / "notes.txt").write_text("mine\n")
    assert _train(data, out, steps=2) == 2
    assert "already holds a run" in _err(capsys)
    assert _train(data, out, "--overwrite", steps=3) == 0
    assert (out / "notes.txt").read_text() == "mine\n"
    assert json.loads((out / "last" / "state.json").read_text())["run_state"]["global_step"] == 3


@pytest.mark.parametrize("where", ["data", "inside", "val"])
def test_out_in_the_data_is_refused(data, tmp_path, capsys, where):
    before = sorted(str(p) for p in data.rglob("*"))
    extra = []
    if where == "data":
        out = data
    elif where == "inside":
        out = data / "red" / "run"
    else:
        val = write_image_folder(tmp_path / "val", per_class=2)
        out, extra = val / "run", ["--val", str(val)]
    assert _train(data, out, *extra) == 2
    assert "must not write into the data" in _err(capsys)
    assert sorted(str(p) for p in data.rglob("*")) == before


def test_run_json_versions(whole, data, tmp_path, capsys):
    meta = json.loads((whole / "run.json").read_text())
    from transferkit import __version__
    assert meta["format"] == 1 and meta["transferkit"] == __version__
    newer = tmp_path / "newer"
    import shutil
    shutil.copytree(whole, newer)
    (newer / "run.json").write_text(json.dumps({"format": 7, "transferkit": "9.0.0"}))
    for argv in (["evaluate", str(newer), str(data)], ["train", "--resume", str(newer), "--quiet"]):
        assert main(argv) == 2
        err = _err(capsys)
        assert "transferkit 9.0.0 (run format 7)" in err and "Upgrade" in err


# -------------------------------------------------------------------------- never lose compute

def test_killed_right_after_setup_resumes(data, whole, tmp_path, monkeypatch, capsys):
    fit_mod = importlib.import_module("transferkit.engine.fit")

    def killed(*a, **k):
        raise KeyboardInterrupt  # stands in for kill -9 before the first step finishes
    monkeypatch.setattr(fit_mod, "_gradient_phase", killed)
    run = tmp_path / "run"
    assert _train(data, run) == 130
    st = json.loads((run / "last" / "state.json").read_text())["run_state"]
    assert st["global_step"] == 0 and not st["done"]
    monkeypatch.undo()
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    _same_weights(whole, run)


def test_sigterm_checkpoints_and_prints_the_resume_command(data, whole, tmp_path, monkeypatch, capsys):
    fit_mod = importlib.import_module("transferkit.engine.fit")
    real, calls = fit_mod._collate, []

    def collate(*a, **k):
        calls.append(1)
        if len(calls) == 3:  # in the middle of step 3
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*a, **k)
    monkeypatch.setattr(fit_mod, "_collate", collate)
    run = tmp_path / "run"
    assert _train(data, run) == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert f"continue with: transferkit train --resume {run}" in err and "SIGTERM" in err
    st = json.loads((run / "last" / "state.json").read_text())["run_state"]
    assert st["global_step"] == 3 and not st["done"]  # step 3 was finished, then saved
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers are put back
    monkeypatch.undo()
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    _same_weights(whole, run)
    _same_weights(whole, run, "model.safetensors")


def test_crash_between_the_renames_of_last_resumes_from_the_old_copy(data, whole, tmp_path, monkeypatch):
    run = tmp_path / "run"
    assert _train(data, run, "--stop-after", "2") == 0
    real, calls = os.replace, []

    def replace(src, dst):
        calls.append(dst)
        if Path(dst).name == "last":  # `last` was moved aside, the new copy never arrives
            raise KeyboardInterrupt
        return real(src, dst)
    monkeypatch.setattr(ck.os, "replace", replace)
    assert main(["train", "--resume", str(run), "--stop-after", "4", "--quiet"]) == 130
    monkeypatch.undo()
    assert not (run / "last").exists() and (run / ".last.old" / "state.json").is_file()
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    _same_weights(whole, run)


def test_missing_optimizer_state_refuses_or_resumes_inexactly(data, whole, tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(data, run, "--stop-after", "3") == 0
    (run / "last" / "optimizer.safetensors").unlink()
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    err = _err(capsys)
    assert "optimizer.safetensors is missing" in err and "--resume-inexact" in err
    assert main(["train", "--resume", str(run), "--resume-inexact"]) == 0
    assert "WITHOUT optimizer state" in capsys.readouterr().out
    meta = json.loads((run / "run.json").read_text())
    assert meta["inexact_resumes"][0]["global_step"] == 3
    assert json.loads((run / "last" / "state.json").read_text())["run_state"]["done"]


def test_checksums_catch_a_damaged_checkpoint(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(data, run, "--stop-after", "2") == 0
    sums = json.loads((run / "last" / "checksums.json").read_text())
    assert set(sums) == {"model.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json"}
    f = run / "last" / "model.safetensors"
    raw = bytearray(f.read_bytes())
    raw[-5] ^= 0xFF  # one flipped bit pattern in the tensor data: still a valid safetensors file
    f.write_bytes(bytes(raw))
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    err = _err(capsys)
    assert f"{f} is damaged" in err


def test_disk_full_while_checkpointing_keeps_the_previous_one(data, whole, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    real, calls = ck.save_file, []

    def save_file(tensors, path, **k):
        if Path(path).parent.name.startswith(".last.tmp"):
            calls.append(path)
        # the setup checkpoint (model, rng) and the one at step 2 (+ optimizer) go through, then the disk is full
        if len(calls) > 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, path, **k)
    monkeypatch.setattr(ck, "save_file", save_file)
    assert _train(data, run, "--checkpoint-every", "2") == 2
    err = _err(capsys)
    assert f"disk full while writing {run / 'last'}" in err and "previous last/ is intact" in err and "--resume" in err
    monkeypatch.undo()
    ck.verify_dir(run / "last")
    st = json.loads((run / "last" / "state.json").read_text())["run_state"]
    assert st["global_step"] == 2
    assert [p.name for p in run.iterdir() if p.name.startswith(".")] == []  # no temporary leftovers
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    _same_weights(whole, run)


# ------------------------------------------------- numeric flags (their ranges live in TrainConfig)

@pytest.mark.parametrize("flag,value", [("--steps", "0"), ("--shots", "0"), ("--image-size", "1"),
                                        ("--batch-size", "0"), ("--checkpoint-every", "0"),
                                        ("--checkpoint-seconds", "0")])
def test_out_of_range_numbers_stop_before_anything_is_written(data, tmp_path, capsys, flag, value):
    out = tmp_path / "run"
    assert main(["train", str(data), "--backbone", TINY, "--out", str(out), flag, value, "--quiet"]) == 2
    err = _err(capsys)
    assert flag in err and f"got {value}" in err
    assert not out.exists()
