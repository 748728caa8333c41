"""Run folders and starting a run (issue 19): the data's kind must match the backbone's, a refused
start leaves nothing that blocks a retry, one writer per run folder, and a resume checks that the
data (and the weights' metadata) are still what the run was started on. Each test backs a row of
the "Bad inputs and faults" table (docs/reference/bad-inputs.md)."""

import importlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import write_image_folder

from transferkit.cli import main

TINY = "timm:test_resnet@random"
REPO = Path(__file__).resolve().parents[1]


def _args(data, out, *extra, steps=4, backbone=TINY):
    return ["train", str(data), "--backbone", backbone, "--image-size", "32", "--batch-size", "8",
            "--steps", str(steps), "--strategy", "full", "--out", str(out), "--quiet", *extra]


def _train(data, out, *extra, **kw):
    return main(_args(data, out, *extra, **kw))


def _err(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("transferkit: error:")]
    assert len(lines) == 1, err
    return lines[0]


def _text_csv(path: Path) -> Path:
    rows = [f"the cat and the dog {i},animals" for i in range(8)] + [f"rain and snow {i},weather" for i in range(8)]
    path.write_text("text,label\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("trust") / "images", per_class=6)


# ----------------------------------------------------------------------------------- modality

def test_image_folder_for_a_text_model_is_refused_before_anything_is_written(data, tiny_bert_dir, tmp_path,
                                                                             capsys):
    out = tmp_path / "run"
    assert _train(data, out, backbone=f"hf:{tiny_bert_dir}") == 2  # it used to train on the file paths
    err = _err(capsys)
    assert f"DATA {data} is an image folder" in err and "is a text model" in err
    assert "bundled:efficientnet_lite0" in err
    assert not out.exists()


def test_text_table_for_an_image_model_is_refused_and_the_fixed_command_runs(data, tmp_path, capsys):
    """The text CSV used to end in 'OSError: File name too long' with a half-made run that refused
    the retry; now it is refused first, and the same --out takes the run once the data is right."""
    out = tmp_path / "run"
    texts = _text_csv(tmp_path / "texts.csv")
    assert _train(texts, out) == 2
    err = _err(capsys)
    assert "is a text table" in err and "is an image model" in err and "bundled:minilm-l6" in err
    assert not out.exists()
    assert _train(data, out) == 0  # no --overwrite needed
    assert (out / "model.safetensors").is_file()


def test_val_of_the_other_kind_is_refused_by_flag(data, tmp_path, capsys):
    assert _train(data, tmp_path / "run", "--val", str(_text_csv(tmp_path / "t.csv"))) == 2
    assert "--val" in _err(capsys)
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------- no partial run

def test_a_start_that_fails_before_its_first_step_leaves_nothing(data, tmp_path, monkeypatch, capsys):
    """A data fault met only once training reads the items (here: an item gone between listing and
    training) used to leave run.json, config.yaml and a step-0 `last/`: 'already holds a run'."""
    from transferkit.data import DataError
    fit_mod = importlib.import_module("transferkit.engine.fit")

    def vanished(*a, **k):
        raise DataError(f"{data}/red/red_00.png: cannot read the image; replace or remove the file")
    monkeypatch.setattr(fit_mod, "_gradient_phase", vanished)
    out = tmp_path / "run"
    assert _train(data, out) == 2
    assert "cannot read the image" in _err(capsys)
    assert not out.exists()

    mine = tmp_path / "mine"  # a folder of the user's: only what the start wrote goes
    mine.mkdir()
    (mine / "notes.txt").write_text("keep\n")
    assert _train(data, mine, "--overwrite") == 2
    _err(capsys)
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]

    monkeypatch.undo()
    assert _train(data, out) == 0  # the same command, no --overwrite
    assert _train(data, mine, "--overwrite") == 0
    assert (mine / "notes.txt").read_text() == "keep\n" and not (mine / "config.yaml.orig").exists()


def test_a_non_utf8_name_leaves_no_partial_run(tmp_path, capsys):
    # a file with such a name is skipped and listed; a class folder with one is an error: that error
    # comes before anything is written, and fixing the name lets the same command run
    data = write_image_folder(tmp_path / "images", per_class=6)
    bad = os.fsencode(data) + b"/r\xffd"
    os.rename(os.fsencode(data / "red"), bad)
    out = tmp_path / "run"
    assert _train(data, out) == 2
    assert "r\\xffd" in _err(capsys)
    assert not out.exists()
    os.rename(bad, os.fsencode(data / "red"))
    assert _train(data, out) == 0


# --------------------------------------------------------------------------- one writer

HOLD = textwrap.dedent("""
    import fcntl, json, os, sys
    run = sys.argv[1]
    os.makedirs(run, exist_ok=True)
    fd = os.open(os.path.join(run, ".lock"), os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, json.dumps({"pid": os.getpid(), "command": "transferkit train elsewhere"}).encode())
    print("locked", flush=True)
    sys.stdin.read()
""")


def test_a_second_writer_is_refused_with_the_first_ones_pid(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(data, out, steps=2) == 0
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        for argv in (["train", "--resume", str(out), "--quiet"], _args(data, out, "--overwrite")):
            assert main(argv) == 2
            err = _err(capsys)
            assert "being written by another transferkit process" in err
            assert f"pid {holder.pid}" in err and "transferkit train elsewhere" in err
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert (out / "model.safetensors").is_file() and (out / "last").is_dir()  # the run is untouched
    assert main(["train", "--resume", str(out), "--quiet"]) == 0  # the lock went with its holder


def test_two_trains_on_one_out_at_once(data, tmp_path, capsys):
    """Both used to pass the 'already holds a run' check; the folder ended with one run's config and
    the other's weights. Now exactly one runs; the other stops with exit 2 and says why."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    for round_ in range(4):
        out = tmp_path / f"run{round_}"
        procs = [subprocess.Popen([sys.executable, "-m", "transferkit", *_args(data, out, "--seed", str(s), steps=2)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                 for s in (1, 2)]
        results = [(p.wait(timeout=300), p.stdout.read(), p.stderr.read()) for p in procs]
        codes = sorted(rc for rc, _, _ in results)
        assert codes == [0, 2], results
        winner = next(i for i, (rc, _, _) in enumerate(results) if rc == 0)
        loser_err = results[1 - winner][2]
        assert "Traceback" not in loser_err
        assert ("being written by another transferkit process (pid" in loser_err
                or "already holds a run" in loser_err), loser_err
        assert f"seed: {winner + 1}" in (out / "config.yaml").read_text()  # one run's files, not a mix
        assert main(["evaluate", str(out), str(data), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["n"] == 18


# ------------------------------------------------------------------------- resume checks the data

def _repaint(path: Path, rgb=(120, 120, 120)) -> None:
    from PIL import Image
    Image.new("RGB", (32, 32), rgb).save(path)


def _state(run: Path) -> dict:
    return json.loads((run / "last" / "state.json").read_text())["run_state"]


def test_resume_after_the_data_changed_says_what_changed(tmp_path, capsys):
    data = write_image_folder(tmp_path / "images", per_class=6)
    run = tmp_path / "run"
    assert _train(data, run, "--stop-after", "2") == 0
    os.utime(data / "blue" / "blue_01.png", (1, 1))   # touched, same bytes: not a change
    _repaint(data / "red" / "red_03.png")              # edited
    (data / "green" / "green_05.png").unlink()         # removed
    _repaint(data / "blue" / "blue_new.png", (40, 60, 200))  # added
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--quiet"]) == 2  # it used to exit 0, silently
    err = _err(capsys)
    assert "data changed since the run started" in err
    assert "1 item(s) added (blue/blue_new.png)" in err and "1 item(s) removed (green/green_05.png)" in err
    assert "1 item(s) edited (red/red_03.png)" in err and "blue_01" not in err
    assert "--resume-inexact" in err and "new run" in err
    assert _state(run)["global_step"] == 2  # nothing was touched

    assert main(["train", "--resume", str(run), "--resume-inexact", "--quiet"]) == 0
    note = json.loads((run / "run.json").read_text())["inexact_resumes"]
    assert [n["reason"] for n in note] == ["data changed"] and note[0]["added"] == 1 and note[0]["edited"] == 1
    assert "blue/blue_new.png" in (run / "splits.csv").read_text()  # splits.csv says what it trained on
    assert _state(run)["done"]


def test_resume_after_a_class_was_added_is_refused_without_a_traceback(tmp_path, capsys):
    data = write_image_folder(tmp_path / "images", per_class=6)
    run = tmp_path / "run"
    assert _train(data, run, "--stop-after", "2") == 0
    (data / "purple").mkdir()
    for i in range(6):
        _repaint(data / "purple" / f"purple_{i}.png", (150, 40, 160 + i))
    capsys.readouterr()
    for extra in ([], ["--resume-inexact"]):  # a head cannot grow an output mid-run
        assert main(["train", "--resume", str(run), "--quiet", *extra]) == 2
        err = _err(capsys)
        assert "classes added: purple" in err and "cannot continue" in err
    assert _state(run)["global_step"] == 2


def test_an_edited_class_list_in_the_weights_is_refused(data, tmp_path, capsys):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    run = tmp_path / "run"
    assert _train(data, run, steps=2) == 0
    path = run / "model.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    classes = json.loads(meta["classes"])
    meta["classes"] = json.dumps([classes[1], classes[0], *classes[2:]])  # labels swapped, tensors intact
    save_file(load_file(str(path)), str(path), metadata=meta)
    capsys.readouterr()
    for argv in (["evaluate", str(run), str(data)], ["predict", str(run), str(data / "red" / "red_00.png")]):
        assert main(argv) == 2  # both used to answer, with the labels swapped
        err = _err(capsys)
        assert f"{path} was edited" in err and "classes" in err
