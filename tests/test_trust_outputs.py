"""transferkit deletes or replaces only what it wrote, and text from the data (class names, file
names, labels) stays data in plots and in CSV files (issue 19, items 5 and 8)."""

import json

import numpy as np
import pytest

from transferkit.cli import main
from transferkit.data import feature_cache as fc


def _store(cache: fc.FeatureCache, view: str = "plain") -> str:
    ns, parts = fc.namespace("w" * 8, "Mod", {"kind": "text", "max_length": 8}, view, "cpu")
    cache.store(ns, parts, ["text:a", "text:b"], np.ones((2, 3), dtype=np.float32))
    return ns


def test_cache_clear_leaves_a_features_folder_transferkit_never_wrote(tmp_path, capsys):
    mine = tmp_path / "project" / "features"
    (mine / "sub").mkdir(parents=True)
    (mine / "notes.txt").write_text("mine")
    (mine / "sub" / "x.npy").write_bytes(b"not ours")
    fake = mine / ("0" * 24)  # our naming, but its meta.json does not hash to its name
    fake.mkdir()
    (fake / "meta.json").write_text(json.dumps({"format": 1, "transferkit": "0"}))
    before = sorted(p.relative_to(mine) for p in mine.rglob("*"))
    assert main(["cache", "clear", "--cache-dir", str(tmp_path / "project")]) == 0
    out = capsys.readouterr().out
    assert sorted(p.relative_to(mine) for p in mine.rglob("*")) == before
    assert "cleared 0.0 MB" in out and "notes.txt" in out and "sub" in out and "0" * 24 in out


def test_cache_clear_removes_only_its_own_feature_spaces(tmp_path, capsys):
    root = tmp_path / "cache"
    cache = fc.FeatureCache(root)
    ours = _store(cache)
    older = _store(cache, "flip")
    assert (root / "features" / fc.MARKER).is_file()
    (root / "features" / "keep.txt").write_text("mine")
    # a file of the user's inside a feature space makes that folder not ours as a whole
    (root / "features" / older / "README").write_text("mine")
    assert main(["cache", "clear", "--cache-dir", str(root), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["removed"] == 1 and r["freed_bytes"] > 0
    assert sorted(r["kept"]) == sorted([str(root / "features" / older), str(root / "features" / "keep.txt")])
    assert not (root / "features" / ours).exists()
    assert (root / "features" / older / "README").read_text() == "mine"
    assert (root / "features" / "keep.txt").read_text() == "mine"


def test_cache_clear_recognises_entries_of_older_versions_without_the_marker(tmp_path, capsys):
    root = tmp_path / "cache"
    cache = fc.FeatureCache(root)
    _store(cache)
    _store(cache, "flip")
    (root / "features" / fc.MARKER).unlink()  # what a transferkit before the marker left
    (root / "notes.txt").write_text("mine")
    assert main(["cache", "clear", "--cache-dir", str(root)]) == 0
    assert "2 feature spaces" in capsys.readouterr().out
    assert not (root / "features").exists() and (root / "notes.txt").read_text() == "mine"
    # and the cache still works afterwards
    _store(cache)
    assert cache.info()["spaces"][0]["rows"] == 2


TINY = "timm:test_resnet@random"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from conftest import write_image_folder
    root = tmp_path_factory.mktemp("trust")
    data = write_image_folder(root / "images")
    out = root / "run"
    assert main(["train", str(data), "--backbone", TINY, "--image-size", "32", "--batch-size", "8",
                 "--steps", "2", "--strategy", "full", "--out", str(out), "--quiet"]) == 0
    return out, data


def _theirs(folder, names):
    folder.mkdir()
    for n in names:
        (folder / n).write_text(f"my own {n}")


def test_evaluate_out_never_replaces_files_it_did_not_write(run, tmp_path, capsys):
    out, data = run
    theirs = tmp_path / "theirs"
    _theirs(theirs, ["report.html", "metrics.json", "predictions.csv"])
    assert main(["evaluate", str(out), str(data), "--out", str(theirs)]) == 2
    err = capsys.readouterr().err
    assert "transferkit did not write it" in err and "metrics.json" in err and "--overwrite" in err
    assert all((theirs / n).read_text() == f"my own {n}" for n in ["report.html", "metrics.json", "predictions.csv"])
    assert main(["evaluate", str(out), str(data), "--out", str(theirs), "--overwrite"]) == 0
    for n in ["report.html", "metrics.json", "predictions.csv"]:  # theirs kept beside ours
        assert (theirs / f"{n}.orig").read_text() == f"my own {n}"
        assert (theirs / n).read_text() != f"my own {n}"
    assert json.loads((theirs / "metrics.json").read_text())["run"] == str(out)
    # now it is ours: a second --overwrite replaces our files and keeps the .orig ones untouched
    assert main(["evaluate", str(out), str(data), "--out", str(theirs), "--overwrite"]) == 0
    assert len(list(theirs.glob("*.orig*"))) == 3


def test_evaluate_out_of_an_older_transferkit_and_a_training_run(run, tmp_path, capsys):
    out, data = run
    ev = tmp_path / "ev"
    assert main(["evaluate", str(out), str(data), "--out", str(ev)]) == 0
    (ev / "evaluation.json").unlink()  # an evaluation folder written before evaluation.json existed
    assert main(["evaluate", str(out), str(data), "--out", str(ev)]) == 2
    assert "already holds an evaluation" in capsys.readouterr().err
    assert main(["evaluate", str(out), str(data), "--out", str(ev), "--overwrite"]) == 0
    assert not list(ev.glob("*.orig"))
    # the run's own metrics.json and report.html are never the evaluation's, even with --overwrite
    before = {n: (out / n).read_bytes() for n in ("metrics.json", "report.html")}
    assert main(["evaluate", str(out), str(data), "--out", str(out), "--overwrite"]) == 2
    assert "training run" in capsys.readouterr().err
    assert {n: (out / n).read_bytes() for n in before} == before


def test_export_never_replaces_a_users_export_json(run, tmp_path, capsys):
    out, _ = run
    theirs = tmp_path / "theirs"
    _theirs(theirs, ["export.json", "config.json"])
    assert main(["export", str(out), "--format", "timm", "--out", str(theirs)]) == 2
    assert "transferkit did not write" in capsys.readouterr().err
    assert (theirs / "export.json").read_text() == "my own export.json"
    assert main(["export", str(out), "--format", "timm", "--out", str(theirs), "--overwrite"]) == 0
    assert (theirs / "export.json.orig").read_text() == "my own export.json"
    assert (theirs / "config.json.orig").read_text() == "my own config.json"
    assert json.loads((theirs / "export.json").read_text())["format"] == "timm"
    assert not [p for p in theirs.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_export_into_an_earlier_export_needs_overwrite_and_replaces_only_its_files(run, tmp_path, capsys):
    out, _ = run
    ex = tmp_path / "ex"
    assert main(["export", str(out), "--format", "timm", "--out", str(ex)]) == 0
    (ex / "NOTES.md").write_text("mine")
    capsys.readouterr()
    assert main(["export", str(out), "--format", "torchscript", "--out", str(ex)]) == 2
    assert "already holds an export" in capsys.readouterr().err
    assert sorted(p.name for p in ex.iterdir()) == ["NOTES.md", "config.json", "export.json", "model.safetensors"]
    assert main(["export", str(out), "--format", "torchscript", "--out", str(ex), "--overwrite"]) == 0
    # the timm files of the earlier export are gone, the user's note stays, nothing was renamed
    assert sorted(p.name for p in ex.iterdir()) == ["NOTES.md", "export.json", "model.pt"]
    assert json.loads((ex / "export.json").read_text())["written"] == ["model.pt"]


MARKUP = ["$\\bogus{$", "$x^2$", "50%_off #1 {a}"]  # mathtext that fails, mathtext that draws, plain
FORMULAS = ["=1+2", "@SUM(1+1)", "-2+3", "-1"]  # the last one is a number: it stays as it is
ODD = MARKUP + FORMULAS


def _safe(text: str) -> str:
    return text if text == "-1" or not text.startswith(("=", "+", "-", "@")) else "'" + text


@pytest.fixture(scope="module")
def odd_run(tmp_path_factory):
    """A run whose class names are mathtext and spreadsheet formulas (7 classes from 3 colours: a
    weak model, but every output file is written)."""
    import shutil

    from conftest import COLOURS, write_image_folder
    root = tmp_path_factory.mktemp("odd")
    data = write_image_folder(root / "images", per_class=6)
    colours = sorted(COLOURS)
    for i, name in enumerate(ODD):
        shutil.copytree(data / colours[i % 3], data / name)
    for c in colours:
        shutil.rmtree(data / c)
    out = root / "run"
    assert main(["train", str(data), "--backbone", TINY, "--image-size", "32", "--batch-size", "8",
                 "--steps", "1", "--strategy", "full", "--seed", "0", "--out", str(out), "--quiet"]) == 0
    return out, data


def test_class_names_in_the_confusion_matrix_are_drawn_as_they_are(monkeypatch):
    import transferkit.report as report
    figs = []
    real = report.png_data_uri
    monkeypatch.setattr(report, "png_data_uri", lambda fig: (figs.append(fig), real(fig))[1])
    cm = [[2, 1, 0], [0, 3, 0], [1, 0, 2]]
    assert report.confusion_figure({"confusion_matrix": cm, "class_names": MARKUP}).startswith("data:image/png")
    ax = figs[0].axes[0]
    for labels in (ax.get_xticklabels(), ax.get_yticklabels()):
        # what the renderer draws: the text after matplotlib's maths preprocessing, and no maths
        assert [t._preprocess_math(t.get_text()) for t in labels] == [(c, False) for c in MARKUP]


def test_a_run_whose_class_names_look_like_mathtext_trains_and_evaluates(odd_run, tmp_path, capsys):
    out, data = odd_run
    assert "Confusion matrix" in (out / "report.html").read_text()
    capsys.readouterr()
    assert main(["evaluate", str(out), str(data), "--out", str(tmp_path / "ev"), "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert sorted(m["per_class"]) == sorted(ODD)
    assert "Confusion matrix" in (tmp_path / "ev" / "report.html").read_text()


def test_spreadsheet_cell():
    from transferkit.report.outputs import spreadsheet_cell
    cases = {"=cmd|' /C calc'!A0": "'=cmd|' /C calc'!A0", "+1+2": "'+1+2", "-2+3": "'-2+3", "@SUM(A1)": "'@SUM(A1)",
             "\tx": "'\tx", "\rx": "'\rx", "cat": "cat", "a=b": "a=b", "": "",
             "-0.000000": "-0.000000", "-1": "-1", "+2.5e-3": "+2.5e-3", "-.5": "-.5"}
    assert {k: spreadsheet_cell(k) for k in cases} == cases
    assert [spreadsheet_cell(v) for v in (-1, -0.0, 3.5, None)] == [-1, -0.0, 3.5, None]


def _csv(path):
    import csv
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_csv_outputs_neutralise_formulas_and_jsonl_stays_raw(odd_run, tmp_path, capsys):
    out, data = odd_run
    images = sorted(str(p) for p in data.rglob("*.png"))[::5]
    assert main(["predict", str(out), *images, "--top-k", "2", "--out", str(tmp_path / "p.csv")]) == 0
    assert main(["predict", str(out), *images, "--top-k", "2", "--out", str(tmp_path / "p.jsonl")]) == 0
    raw = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    rows = _csv(tmp_path / "p.csv")
    assert {r["label"] for r in raw} & set(FORMULAS), "the check needs a formula-like predicted label"
    assert [r["predicted"] for r in rows] == [_safe(r["label"]) for r in raw]
    assert [r["top2"] for r in rows] == [_safe(r["top"][1]["label"]) for r in raw]
    assert set(rows[0]) >= {f"p:{c}" for c in ODD}  # headers: `p:` first, never a formula
    assert [float(r["probability"]) for r in rows] == pytest.approx([r["probability"] for r in raw], abs=1e-6)

    ev = tmp_path / "ev"
    assert main(["evaluate", str(out), str(data), "--out", str(ev)]) == 0
    rows = _csv(ev / "predictions.csv")
    assert {r["label"] for r in rows} == {_safe(c) for c in ODD}
    assert {r["predicted"] for r in rows} <= {_safe(c) for c in ODD}
    assert all(abs(sum(float(r[f"p:{c}"]) for c in ODD) - 1) < 1e-4 for r in rows)  # numbers stay numbers

    assert main(["knn", str(data), "--backbone", TINY, "--image-size", "32", "--out", str(tmp_path / "knn")]) == 0
    rows = _csv(tmp_path / "knn" / "predictions.csv")
    assert rows and {r["label"] for r in rows} <= {_safe(c) for c in ODD}
    assert any(r["label"].startswith("'") for r in rows)
    assert main(["embed", str(data), "--backbone", TINY, "--image-size", "32", "--out", str(tmp_path / "e.npy")]) == 0
    rows = _csv(tmp_path / "e.index.csv")
    assert {r["label"] for r in rows} == {_safe(c) for c in ODD} and rows[0]["row"] == "0"
    assert main(["cluster", str(data), "--backbone", TINY, "--image-size", "32", "--k", "2",
                 "--out", str(tmp_path / "cl")]) == 0
    rows = _csv(tmp_path / "cl" / "clusters.csv")
    assert {r["label"] for r in rows} == {_safe(c) for c in ODD} and all(float(r["distance"]) >= 0 for r in rows)
