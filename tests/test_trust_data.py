"""Data is read as the user sees it, labels keep their identity, and scores say what they measure
(issue 19): links that re-enter DATA, unused files, Unicode spellings, macOS leftovers, numbers as
labels, missing-value folders, absent classes, train/test overlap, splits too small to score and
names that are not UTF-8. Each test here failed before the fix it covers."""

import json
import os
import shutil
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from conftest import write_image_folder
from PIL import Image

from transferkit.cli import main
from transferkit.data import DataError, load_task, read_items
from transferkit.report.metrics import classification_metrics

TINY = "timm:test_resnet@random"


def _train(data, out, *extra):
    return main(["train", str(data), "--backbone", TINY, "--image-size", "32", "--batch-size", "8",
                 "--steps", "2", "--strategy", "full", "--out", str(out), "--quiet", *extra])


def _err(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err and "surrogates not allowed" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("transferkit: error:")]
    assert len(lines) == 1, err
    return lines[0]


def _labels(items):
    from collections import Counter
    return dict(Counter(e.label for e in items))


# ------------------------------------------------------------------------- folders read once

def test_links_that_reenter_data_are_skipped_not_relabelled(tmp_path):
    data = write_image_folder(tmp_path / "images", per_class=2)
    os.symlink(data, data / "red" / "everything")                      # DATA itself
    os.symlink(tmp_path, data / "red" / "above")                       # a folder above DATA
    os.symlink(data / "green", data / "blue" / "greens")               # another class folder
    os.symlink(data / "green" / "green_00.png", data / "blue" / "g.png")  # a file of another class
    os.symlink(data / "green", data / "verdant")                       # a class folder, twice
    items, skipped = read_items(data, "image")
    assert _labels(items) == {"blue": 2, "green": 2, "red": 2}
    assert len({e.x for e in items}) == len(items) == 6
    text = "\n".join(skipped)
    assert len(skipped) == 5, text
    assert text.count("DATA itself or a folder above it") == 2
    assert "blue/greens: a link to the class folder 'green'" in text
    assert "blue/g.png: a link into DATA (green/green_00.png)" in text
    assert "verdant: a link into DATA (green)" in text


def test_every_unused_file_is_listed_and_pillow_formats_are_decoded(tmp_path):
    data = write_image_folder(tmp_path / "images", per_class=2)
    px = Image.fromarray(np.full((16, 16, 3), (200, 40, 40), np.uint8))
    px.save(data / "red" / "anim.gif")
    px.save(data / "red" / "photo.jfif", "JPEG")
    px.save(data / "red" / "scan.tga")
    (data / "red" / "notes.txt").write_text("not a picture")
    (data / "red" / "raw.heic").write_bytes(b"\0" * 64)
    items, skipped = read_items(data, "image")
    assert _labels(items)["red"] == 5
    assert sorted(Path(e.x).name for e in items if e.label == "red") == [
        "anim.gif", "photo.jfif", "red_00.png", "red_01.png", "scan.tga"]
    assert len(skipped) == 2
    assert any("notes.txt: not an image" in s and "(.txt" in s for s in skipped)
    assert any("raw.heic: not an image" in s and "(.heic" in s for s in skipped)


def test_unicode_spellings_of_one_name_are_one_class(tmp_path):
    data = write_image_folder(tmp_path / "images", per_class=2)
    nfc, nfd = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    assert nfc != nfd
    for form, src in ((nfc, "red/red_00.png"), (nfd, "red/red_01.png")):
        (data / form).mkdir()
        shutil.copy(data / src, data / form / f"{len(form)}.png")
    items, _ = read_items(data, "image")
    assert _labels(items) == {"blue": 2, "green": 2, "red": 2, nfc: 2}
    warnings = []
    read_items(data, "image", warnings_out=warnings)
    assert any("one class 'café'" in w and "NFC and NFD" in w for w in warnings)
    table = tmp_path / "t.csv"
    table.write_text(f"text,label\nhot drink,{nfc}\nwarm drink,{nfd}\nrain,weather\n", encoding="utf-8")
    items, _ = read_items(table, "text")
    assert _labels(items) == {nfc: 2, "weather": 1}


def test_macos_resource_files_are_not_data(tmp_path):
    data = write_image_folder(tmp_path / "images", per_class=2)
    (data / "__MACOSX" / "red").mkdir(parents=True)
    shutil.copy(data / "red" / "red_00.png", data / "__MACOSX" / "red" / "._red_00.png")
    shutil.copy(data / "red" / "red_00.png", data / "__MACOSX" / "real.png")  # a real image, still not a class
    shutil.copy(data / "red" / "red_00.png", data / "red" / "._red_00.png")
    (data / "red" / "__MACOSX").mkdir()
    shutil.copy(data / "red" / "red_00.png", data / "red" / "__MACOSX" / "x.png")
    (data / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    items, skipped = read_items(data, "image")
    assert _labels(items) == {"blue": 2, "green": 2, "red": 2} and skipped == []


def test_the_same_content_in_two_classes_is_a_warning(tmp_path):
    data = write_image_folder(tmp_path / "images", per_class=4)
    shutil.copy(data / "red" / "red_00.png", data / "blue" / "also_red.png")
    task = load_task(data, seed=0)
    assert any("same content in two or more classes" in w and "blue/also_red.png ('blue')" in w
               and "red/red_00.png ('red')" in w for w in task.warnings), task.warnings
    for p in sorted((data / "green").glob("*.png"))[1:]:
        shutil.copy(data / "green" / "green_00.png", p)  # one picture four times: a copy on each side
    task = load_task(data, seed=0)
    assert any(w.startswith("1 test item(s) have the same content as a training item") for w in task.warnings)


# ------------------------------------------------------------------------ labels keep identity

def test_numbers_as_labels_are_compared_as_written_and_warned(tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("text,label\na,1\nb,1.0\nc,2\nd,2\ne,1\nf,1.0\n")
    task = load_task(table, test_fraction=0.3, val_fraction=0.0, seed=0)
    assert task.classes == ["1", "1.0", "2"]
    assert any("'1' and '1.0'" in w for w in task.warnings), task.warnings
    warnings = []
    items, _ = read_items(table, "text", warnings_out=warnings)
    assert _labels(items) == {"1": 2, "1.0": 2, "2": 2}
    assert warnings == ["labels '1' and '1.0' are the same number written differently; labels are compared "
                        "as written, so they are separate classes (write them one way if they are one class)"]
    lines = tmp_path / "t.jsonl"
    lines.write_text("\n".join(json.dumps(r) for r in [{"text": "a", "label": 1}, {"text": "b", "label": "1"},
                                                       {"text": "c", "label": 1.0}, {"text": "d", "label": 2}]))
    warnings = []
    items, _ = read_items(lines, "text", warnings_out=warnings)
    assert _labels(items) == {"1": 2, "1.0": 1, "2": 1}
    assert len(warnings) == 1 and "'1' and '1.0'" in warnings[0]


def test_a_folder_named_like_a_missing_marker_is_missing_as_in_a_table(tmp_path):
    data = write_image_folder(tmp_path / "images", per_class=2)
    os.rename(data / "blue", data / "None")
    items, skipped = read_items(data, "image")
    assert _labels(items) == {"green": 2, "red": 2}
    assert len(skipped) == 1 and "None: missing label ('None')" in skipped[0]
    table = tmp_path / "images.csv"
    rows = [f"{p.relative_to(tmp_path)},{p.parent.name}" for p in sorted(data.rglob("*.png"))]
    table.write_text("\n".join(["path,label", *rows]) + "\n")
    csv_items, csv_skipped = read_items(table, "image")
    assert _labels(csv_items) == _labels(items) and len(csv_skipped) == 2


# ---------------------------------------------------------------------- what evaluate reports

def test_macro_f1_is_over_the_classes_present():
    y = np.array([0, 0, 1, 1])
    probs = np.eye(3)[[0, 0, 1, 1]]
    m = classification_metrics(y, probs, ["a", "b", "c"])
    assert m["accuracy"] == 1.0 and m["macro_f1"] == pytest.approx(1.0)
    assert m["absent_classes"] == ["c"]
    wrong = np.eye(3)[[0, 2, 1, 1]]  # predicting an absent class still costs the true class its recall
    m = classification_metrics(y, wrong, ["a", "b", "c"])
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1.0) / 2)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("trust")
    data = write_image_folder(root / "images", per_class=6)
    out = root / "run"
    assert _train(data, out) == 0
    return out, data


def test_evaluate_names_absent_classes_and_training_items(run, tmp_path, capsys):
    out, data = run
    other = write_image_folder(tmp_path / "other", per_class=2, seed=7)
    shutil.rmtree(other / "green")
    capsys.readouterr()
    assert main(["evaluate", str(out), str(other)]) == 0
    cap = capsys.readouterr()
    assert "classes of the run absent from" in cap.out and "(not in macro-F1): green" in cap.out
    assert "training split" not in cap.err
    assert main(["evaluate", str(out), str(other), "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["absent_classes"] == ["green"] and m["warnings"] == []
    assert main(["evaluate", str(out), str(data), "--json"]) == 0
    cap = capsys.readouterr()
    m = json.loads(cap.out)
    assert len(m["warnings"]) == 1 and "are also in the run's training split" in m["warnings"][0]
    assert "transferkit: warning:" in cap.err and "the run's training split" in cap.err


# ------------------------------------------------------------------------------- overlap

def test_test_data_inside_the_training_split_is_an_error_unless_allowed(tmp_path, capsys):
    data = write_image_folder(tmp_path / "images", per_class=4)
    copy = tmp_path / "copy"
    shutil.copytree(data, copy)  # other paths, same content
    for test in (data, copy):
        out = tmp_path / f"run_{test.name}"
        assert _train(data, out, "--test", str(test)) == 2
        line = _err(capsys)
        assert f"--test {test}: " in line and "are also in the training split" in line and "--allow-overlap" in line
        assert not out.exists()
    out = tmp_path / "allowed"
    assert _train(data, out, "--test", str(copy), "--allow-overlap") == 0
    warnings = json.loads((out / "metrics.json").read_text())["warnings"]
    assert any(w.startswith(f"--test {copy}: ") for w in warnings)


# ------------------------------------------------------------------------ too small to score

def test_one_item_per_class_stops_before_training(tmp_path, capsys):
    data = write_image_folder(tmp_path / "images", per_class=1)
    out = tmp_path / "run"
    assert _train(data, out) == 2
    assert "too few items to hold out a test split" in _err(capsys)
    assert not out.exists()


def test_no_test_split_asked_for_prints_no_nan(tmp_path, capsys):
    data = write_image_folder(tmp_path / "images", per_class=4)
    out = tmp_path / "run"
    assert main(["train", str(data), "--backbone", TINY, "--image-size", "32", "--strategy", "linear_probe",
                 "--test-fraction", "0", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "no test split" in said and "accuracy nan" not in said
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_test"] == 0 and "accuracy" not in metrics


# ----------------------------------------------------------------------------- non-UTF-8 names

def test_names_that_are_not_utf8_are_named(tmp_path, capsys):
    data = write_image_folder(tmp_path / "images", per_class=3)
    raw = os.fsencode(data / "red") + b"/caf\xe9.png"
    shutil.copy(data / "red" / "red_00.png", os.fsdecode(raw))
    items, skipped = read_items(data, "image")
    assert _labels(items)["red"] == 3
    assert len(skipped) == 1 and "red/caf\\xe9.png: the name is not valid UTF-8" in skipped[0]
    json.dumps(skipped).encode("utf-8")  # printable and writable
    os.mkdir(os.fsencode(data) + b"/gr\xfcn")
    shutil.copy(data / "red" / "red_00.png", os.fsdecode(os.fsencode(data) + b"/gr\xfcn/x.png"))
    with pytest.raises(DataError, match=r"class folder .*gr\\xfcn has a name that is not valid UTF-8"):
        read_items(data, "image")
    assert _train(data, tmp_path / "run") == 2
    assert "gr\\xfcn" in _err(capsys)
    table = os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9.csv")
    with open(table, "w") as f:
        f.write("text,label\nhot,a\ncold,b\n")
    with pytest.raises(DataError, match=r"caf\\xe9.csv: the path is not valid UTF-8"):
        read_items(table, "text")


def test_the_bundled_demo_data_reads_with_nothing_skipped():
    # its provenance files sit beside the class folders' parent, so a demo run lists no skipped item
    from transferkit.demo import IMAGE_DEMO
    items, skipped = read_items(IMAGE_DEMO, "image")
    assert len(items) == 613 and skipped == []
    assert (IMAGE_DEMO.parent / f"{IMAGE_DEMO.name}_SOURCES.csv").is_file()
