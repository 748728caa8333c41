"""Outputs people look at: predict --output (CSV/JSONL), evaluate --out (metrics, per-item
predictions, report with the most confident mistakes), and the gallery in the training report."""

import csv
import json
import re
import shutil
from types import SimpleNamespace

import numpy as np
import pytest

from transferkit.cli import main
from transferkit.report.gallery import gallery_html, worst_errors

TINY = "timm:test_resnet@random"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from conftest import write_image_folder
    root = tmp_path_factory.mktemp("outputs")
    data = write_image_folder(root / "images")
    out = root / "run"
    assert main(["train", str(data), "--backbone", TINY, "--image-size", "32", "--batch-size", "8",
                 "--steps", "4", "--strategy", "full", "--out", str(out), "--quiet"]) == 0
    # the same images under rotated labels: a model that learnt anything is confidently wrong here
    swapped = root / "swapped"
    for a, b in (("blue", "green"), ("green", "red"), ("red", "blue")):
        shutil.copytree(data / a, swapped / b)
    return SimpleNamespace(root=root, data=data, out=out, swapped=swapped)


def test_worst_errors_order_and_gallery_escaping():
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.3, 0.7]])
    y = np.array([1, 1, 1, 0])
    items = [SimpleNamespace(x=t) for t in ("a", "b <script>", "c", "d")]
    errs = worst_errors(items, probs, y, ["neg", "pos"])
    assert [e["item"] for e in errs] == ["a", "d", "b <script>"]  # wrong ones, most confident first
    assert errs[0] == {"item": "a", "true": "pos", "predicted": "neg", "confidence": 0.9, "p_true": 0.1}
    page = gallery_html(errs, "text")
    assert page.count("class='err'") == 3 and "<script>" not in page and "&lt;script&gt;" in page
    assert gallery_html([], "text") == ""


def test_predict_output_csv_and_jsonl(run, tmp_path, capsys):
    inputs = [str(p) for p in sorted(run.data.rglob("*.png"))[:5]]
    assert main(["predict", str(run.out), *inputs, "--json", "--top-k", "2", "--out", str(tmp_path / "p.csv")]) == 0
    printed = json.loads(capsys.readouterr().out)
    with open(tmp_path / "p.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["input"] for r in rows] == inputs
    assert [r["predicted"] for r in rows] == [p["label"] for p in printed]
    assert [float(r["probability"]) for r in rows] == pytest.approx([p["probability"] for p in printed], abs=1e-6)
    # the format of evaluate --out: the runner-up in cells of its own, a column per class
    assert list(rows[0]) == ["input", "predicted", "probability", "top2", "top2_probability",
                             "p:blue", "p:green", "p:red", "error"]
    assert [r["top2"] for r in rows] == [p["top"][1]["label"] for p in printed]
    assert all(abs(sum(float(r[f"p:{c}"]) for c in ("blue", "green", "red")) - 1) < 1e-4 for r in rows)
    assert all(max(float(r[f"p:{c}"]) for c in ("blue", "green", "red")) == float(r["probability"]) for r in rows)
    assert main(["predict", str(run.out), *inputs, "--top-k", "2", "--output", str(tmp_path / "p.jsonl")]) == 0
    assert "'predict --output' is deprecated" in capsys.readouterr().err  # the old spelling still writes
    lines = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [r["label"] for r in lines] == [p["label"] for p in printed]
    assert [r["top"] for r in lines] == [p["top"] for p in printed]  # structured, as --json prints it
    assert [list(r["probabilities"]) for r in lines] == [["blue", "green", "red"]] * len(inputs)
    assert "probabilities" not in printed[0]  # --json on the terminal stays top-k
    # never replaced, and a format we cannot write is refused before any work
    before = (tmp_path / "p.csv").read_bytes()
    assert main(["predict", str(run.out), inputs[0], "--out", str(tmp_path / "p.csv")]) == 2
    assert (tmp_path / "p.csv").read_bytes() == before
    assert main(["predict", str(run.out), inputs[0], "--out", str(tmp_path / "p.txt")]) == 2
    assert "already exists" in capsys.readouterr().err


def test_predict_has_the_options_evaluate_has(run, capsys):
    """--tta/--no-tta and --batch-size as in evaluate; --top-k 5 as in serve (the run has 3 classes)."""
    inputs = [str(p) for p in sorted(run.data.rglob("*.png"))[:3]]
    assert main(["predict", str(run.out), *inputs, "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert all(len(r["top"]) == 3 for r in plain)
    assert main(["predict", str(run.out), *inputs, "--json", "--no-tta", "--batch-size", "1"]) == 0
    no_tta = json.loads(capsys.readouterr().out)
    assert [r["input"] for r in no_tta] == inputs
    assert [r["probability"] for r in no_tta] != pytest.approx([r["probability"] for r in plain], abs=1e-7)
    assert main(["predict", str(run.out), *inputs, "--json", "--tta", "--batch-size", "2"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert [r["probability"] for r in again] == pytest.approx([r["probability"] for r in plain], abs=1e-5)
    assert main(["predict", str(run.out), inputs[0], "--batch-size", "0"]) == 2
    assert "batch_size" in capsys.readouterr().err
    assert main(["predict", "--backbone", TINY, inputs[0], "--no-tta"]) == 2
    assert "apply to a run's predictions" in capsys.readouterr().err


def test_evaluate_out_writes_report_and_per_item_predictions(run, tmp_path, capsys):
    out = tmp_path / "ev"
    assert main(["evaluate", str(run.out), str(run.swapped), "--json", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    m = json.loads((out / "metrics.json").read_text())
    assert m["accuracy"] == pytest.approx(printed["accuracy"]) and m["run"] == str(run.out)
    with open(out / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == printed["n"] == 36
    assert np.mean([int(r["correct"]) for r in rows]) == pytest.approx(printed["accuracy"])
    assert all(abs(sum(float(r[f"p:{c}"]) for c in ("blue", "green", "red")) - 1) < 1e-4 for r in rows)
    wrong = sorted((r for r in rows if r["correct"] == "0"), key=lambda r: -float(r["probability"]))
    assert wrong, "the swapped labels should give wrong predictions"
    page = (out / "report.html").read_text()
    assert "Most confident mistakes" in page
    figures = re.findall(r"<figure class='err' title='([^']*)'>", page)
    assert len(figures) == min(16, len(wrong))
    assert figures[0] == wrong[0]["input"]
    assert page.count("data:image/jpeg;base64,") == len(figures)
    # rerun into its own folder only with --overwrite; a folder with someone else's files is refused
    assert main(["evaluate", str(run.out), str(run.swapped), "--out", str(out)]) == 2
    assert "already holds an evaluation" in capsys.readouterr().err
    assert main(["evaluate", str(run.out), str(run.swapped), "--out", str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["evaluation.json", "metrics.json", "predictions.csv",
                                                     "report.html"]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert main(["evaluate", str(run.out), str(run.swapped), "--out", str(tmp_path / "other")]) == 2
    assert sorted(p.name for p in (tmp_path / "other").iterdir()) == ["notes.txt"]


def test_training_report_has_the_gallery_when_the_test_split_has_errors(run):
    m = json.loads((run.out / "metrics.json").read_text())
    page = (run.out / "report.html").read_text()
    n_wrong = round((1 - m["accuracy"]) * m["n_test"])
    assert ("Most confident mistakes" in page) == (n_wrong > 0)
    assert len(re.findall(r"<figure class='err'", page)) == min(16, n_wrong)


def test_progress_bars_on_a_terminal_only(run, monkeypatch, capsys):
    import io
    import sys

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    inputs = [str(p) for p in sorted(run.data.rglob("*.png"))[:3]]
    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    assert main(["evaluate", str(run.out), str(run.data)]) == 0
    assert main(["predict", str(run.out), *inputs]) == 0
    assert "evaluate:" in term.getvalue() and "predict:" in term.getvalue()
    monkeypatch.undo()
    assert main(["predict", str(run.out), *inputs]) == 0  # not a terminal: no bar
    assert "predict:" not in capsys.readouterr().err


def test_one_predictions_format_keeps_labels_with_commas_whole(tmp_path):
    """predict --out and evaluate --out write the same table; a label with a comma, a colon or a
    pipe stays one cell (the old `top` column joined `label:p` pairs with `|`)."""
    import torch

    from transferkit.infer.predictions import topk_rows
    from transferkit.report.outputs import prediction_table, write_predictions
    classes = ["food, hot", "a:b|c", "plain"]
    items = [SimpleNamespace(x="x1.png"), SimpleNamespace(x="x2.png")]
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    rows = topk_rows(items, probs, classes, 3, probabilities=True)
    write_predictions(rows, tmp_path / "p.csv")
    with open(tmp_path / "p.csv", newline="") as f:
        got = list(csv.DictReader(f))
    assert [(r["predicted"], r["top2"], r["top3"]) for r in got] == [("food, hot", "a:b|c", "plain"),
                                                                     ("plain", "a:b|c", "food, hot")]
    assert [float(got[0][f"p:{c}"]) for c in classes] == [0.7, 0.2, 0.1]
    write_predictions(rows, tmp_path / "p.jsonl")
    back = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert back[0]["top"][0]["label"] == "food, hot" and back[1]["probabilities"]["food, hot"] == 0.1

    table = list(csv.DictReader(prediction_table(rows[:1], ["a:b|c"]).splitlines()))
    assert list(table[0])[:5] == ["input", "label", "predicted", "probability", "correct"]
    assert (table[0]["label"], table[0]["predicted"], table[0]["correct"]) == ("a:b|c", "food, hot", "0")


def test_training_report_draws_the_loss_of_every_step(run):
    """4 steps and one validation row: the curve comes from the loss of every step, and the
    headline is the test score, with the settings folded away."""
    page = (run.out / "report.html").read_text()
    m = json.loads((run.out / "metrics.json").read_text())
    assert "<h2>Learning curves</h2>" in page
    assert f"<div class='card main'>test accuracy<b>{m['accuracy']:.3f}</b>" in page
    assert "<details><summary>all " in page
