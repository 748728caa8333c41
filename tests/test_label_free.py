"""A source model with few or no target labels: nearest class mean and k-NN (hand-checked, and 100%
on a separable toy set), the `prototypes` strategy through train/evaluate/predict, and the `embed`,
`knn` and `cluster` commands end to end through `transferkit.cli.main`."""

import csv
import json
import math
import shutil

import numpy as np
import pytest
import torch
from conftest import COLOURS, PER_CLASS
from PIL import Image
from safetensors.torch import load_file

from transferkit.cli import main
from transferkit.data import read_items
from transferkit.infer.features import frozen_features
from transferkit.models import load_backbone
from transferkit.models.prototypes import PrototypeHead, class_prototypes, knn_scores, nearest_centroid

TINY = "timm:test_resnet@random"
N = len(COLOURS) * PER_CLASS


def _rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------- the methods

def test_prototypes_and_knn_by_hand():
    feats = torch.tensor([[2.0, 0.0], [1.0, 1.0], [0.0, 3.0]])
    labels = torch.tensor([0, 0, 1])
    # class 0: mean of (1, 0) and (1, 1)/sqrt2, normalised; class 1: (0, 1)
    r = 1 / math.sqrt(2)
    m0 = torch.tensor([(1 + r) / 2, r / 2])
    expected = torch.stack([m0 / m0.norm(), torch.tensor([0.0, 1.0])])
    torch.testing.assert_close(class_prototypes(feats, labels, 2), expected)
    q = torch.tensor([[0.0, 5.0], [4.0, 1.0]])
    sims = nearest_centroid(feats, labels, q, 2)
    torch.testing.assert_close(sims, (q / q.norm(dim=1, keepdim=True)) @ expected.T)
    # k=2 for the query (4, 1): neighbours (2, 0) [cos .970] and (1, 1) [cos .857], both class 0
    s = knn_scores(feats, labels, q[1:], 2, k=2)
    torch.testing.assert_close(s, torch.tensor([[1.0, 0.0]]))
    # k=3 for (0, 5): (0, 3) cos 1 -> class 1, (1, 1) cos r and (2, 0) cos 0 -> class 0
    w = torch.exp(torch.tensor([0.0, (r - 1) / 0.07, -1 / 0.07]))
    s = knn_scores(feats, labels, q[:1], 2, k=3)
    torch.testing.assert_close(s, torch.tensor([[w[1] + w[2], w[0]]]) / w.sum())


def test_toy_separable_set_is_classified_perfectly():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 16, generator=g) * 4
    def draw(n):
        y = torch.arange(4).repeat_interleave(n)
        return centres[y] + torch.randn(len(y), 16, generator=g), y
    tr, ytr = draw(5)          # a handful of labels per class
    te, yte = draw(50)
    assert (nearest_centroid(tr, ytr, te, 4).argmax(1) == yte).all()
    assert (knn_scores(tr, ytr, te, 4, k=3).argmax(1) == yte).all()
    head = PrototypeHead(16, 4)
    info = head.fit_prototypes(tr, ytr, val=(te[:20], yte[:20]))
    assert info["val_accuracy"] == 1.0 and info["scale"] in (3.0, 10.0, 30.0, 100.0)
    assert (head(te).argmax(1) == yte).all()
    torch.testing.assert_close(head.weight.norm(dim=1), torch.full((4,), info["scale"]))


def test_prototypes_strategy_trains_evaluates_and_predicts(image_folder, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(image_folder), "--backbone", TINY, "--image-size", "32", "--strategy",
                 "prototypes", "--out", str(run)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    # the log, metrics.json and the report name the scale; a nearest class mean head has no C
    said = "".join(capsys.readouterr())
    line = next(ln for ln in said.splitlines() if "prototype head" in ln)
    assert f"scale {metrics['head_fit']['scale']:g} chosen" in line and "C=" not in said
    assert metrics["head_fit"]["C"] is None and metrics["head_fit"]["scale"] in (3.0, 10.0, 30.0, 100.0)
    page = (run / "report.html").read_text()
    assert "prototype head" in page and "with C =" not in page
    state = load_file(str(run / "model.safetensors"))
    assert set(k for k in state if k.startswith("head.")) == {"head.weight"}  # no bias: W = s * p_c
    norms = state["head.weight"].norm(dim=1)
    torch.testing.assert_close(norms, norms[:1].expand(3))  # every prototype has the same length s
    # the prototypes are the normalised class means of the training features
    split = _rows(run / "splits.csv")
    train = [r for r in split if r["split"] == "train"]
    torch.manual_seed(0)
    bb = load_backbone(TINY)
    from transferkit.data.splits import Example
    items = [Example(str(image_folder / r["item"]), r["label"]) for r in train]
    feats, labels, flipped = frozen_features(bb, items, sorted(COLOURS), image_size=32, flip=True)
    expected = class_prototypes(torch.cat([feats, flipped]), torch.cat([labels, labels]), 3)
    torch.testing.assert_close(state["head.weight"] / norms[:, None], expected, atol=1e-5, rtol=1e-5)
    capsys.readouterr()
    assert main(["evaluate", str(run), str(image_folder), "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["n"] == N and 0.0 <= ev["accuracy"] <= 1.0
    assert main(["predict", str(run), str(image_folder), "--json"]) == 0
    preds = json.loads(capsys.readouterr().out)
    truth = {str(image_folder / e.ref): e.label for e in read_items(image_folder, "image")[0]}
    acc = np.mean([p["label"] == truth[p["input"]] for p in preds])
    # predict and evaluate agree (both use the same TTA setting from the run)
    assert acc == pytest.approx(ev["accuracy"], abs=1e-9)
    assert metrics["n_train"] == len(train)
    # timm's classifier is a plain Linear: exporting there would silently drop the normalisation
    assert main(["export", str(run), "--format", "timm", "--out", str(tmp_path / "exp")]) == 2
    assert "prototypes" in capsys.readouterr().err and not (tmp_path / "exp").exists()


# -------------------------------------------------------------------------- the commands

def test_embed_images_and_text(image_folder, tiny_bert_dir, tmp_path, capsys):
    out = tmp_path / "emb" / "features.npy"
    assert main(["embed", str(image_folder), "--backbone", TINY, "--image-size", "32", "--out", str(out)]) == 0
    feats = np.load(out)
    index = _rows(tmp_path / "emb" / "features.index.csv")
    meta = json.loads((tmp_path / "emb" / "features.meta.json").read_text())
    assert feats.shape == (N, meta["shape"][1]) and feats.dtype == np.float32
    assert [r["row"] for r in index] == [str(i) for i in range(N)]
    assert sorted({r["label"] for r in index}) == sorted(COLOURS)
    torch.manual_seed(0)
    bb = load_backbone(TINY)
    items, _ = read_items(image_folder, "image")
    fresh, _, _ = frozen_features(bb, items, sorted(COLOURS), image_size=32)
    assert [r["item"] for r in index] == [e.x for e in items]
    np.testing.assert_allclose(feats, fresh.numpy(), atol=1e-5)
    assert meta["source"]["weights_hash"] == bb.source.weights_hash and meta["labelled"]

    texts = tmp_path / "texts.txt"
    texts.write_text("the cat and the dog\nrain and snow\n\nred green blue\n", encoding="utf-8")
    out = tmp_path / "text.safetensors"
    assert main(["embed", str(texts), "--backbone", f"hf:{tiny_bert_dir}", "--out", str(out)]) == 0
    t = load_file(str(out))["features"]
    assert t.shape == (3, 32)  # three non-empty lines, hidden size 32
    index = _rows(tmp_path / "text.index.csv")
    assert [r["item"] for r in index] == ["the cat and the dog", "rain and snow", "red green blue"]
    assert all(r["label"] == "" for r in index)

    # a file transferkit did not write is never replaced
    foreign = tmp_path / "mine.npy"
    foreign.write_bytes(b"keep")
    capsys.readouterr()
    assert main(["embed", str(texts), "--backbone", f"hf:{tiny_bert_dir}", "--out", str(foreign)]) == 2
    assert "not written by transferkit" in capsys.readouterr().err and foreign.read_bytes() == b"keep"


def test_knn_command(image_folder, tmp_path, capsys):
    out = tmp_path / "knn"
    assert main(["knn", str(image_folder), "--backbone", TINY, "--image-size", "32", "--shots", "3",
                 "--k", "3", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    saved = json.loads((out / "knn.json").read_text())
    preds = _rows(out / "predictions.csv")
    assert saved["n_train"] == 9 and saved["n_test"] == len(preds) > 0
    for name in ("nearest_centroid", "knn_3"):
        acc = np.mean([p[name] == p["label"] for p in preds])
        assert saved["methods"][name]["accuracy"] == pytest.approx(acc)
        assert printed[name]["accuracy"] == pytest.approx(acc, abs=1e-4)


def test_cluster_with_and_without_labels(image_folder, tmp_path, capsys):
    out = tmp_path / "clusters"
    assert main(["cluster", str(image_folder), "--backbone", TINY, "--image-size", "32", "--k", "3",
                 "--out", str(out), "--per-sheet", "8", "--thumb", "16"]) == 0
    rows = _rows(out / "clusters.csv")
    summary = json.loads((out / "summary.json").read_text())
    assert len(rows) == N and {r["cluster"] for r in rows} == {"0", "1", "2"}
    assert sum(summary["sizes"].values()) == N
    for c, rel in summary["sheets"].items():
        with Image.open(out / rel) as im:
            assert im.size == (6 * (16 + 4) + 4, 24 + 2 * (16 + 4) + 4)  # 8 thumbnails: 2 rows of 6
    # purity recomputed from the CSV
    hit = 0
    for c in ("0", "1", "2"):
        labels = [r["label"] for r in rows if r["cluster"] == c]
        hit += max(labels.count(x) for x in set(labels))
    assert summary["purity"] == pytest.approx(hit / N)
    assert -1.0 <= summary["adjusted_rand"] <= 1.0
    # rerunning into its own output is allowed; zero labels: a flat folder, no agreement scores
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in sorted(image_folder.rglob("*.png"))[::4]:
        shutil.copy(p, flat / p.name)
    assert main(["cluster", str(flat), "--backbone", TINY, "--image-size", "32", "--k", "2",
                 "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == N // 4 and "purity" not in summary
    assert all(r["label"] == "" for r in _rows(out / "clusters.csv"))
    capsys.readouterr()
    assert main(["cluster", str(flat), "--backbone", TINY, "--k", "1", "--out", str(tmp_path / "x")]) == 2
    assert "--k 1" in capsys.readouterr().err


def test_help_of_the_new_commands(capsys):
    import subprocess
    import sys
    from pathlib import Path

    from transferkit.cli.cache import _parser as cache_parser
    from transferkit.cli.embeddings import _cluster_parser, _embed_parser, _knn_parser
    for p in (_embed_parser(), _knn_parser(), _cluster_parser(), cache_parser()):
        for a in (a for a in p._actions if a.option_strings and a.dest != "help"):
            assert len(a.help.split("(default:")[0].strip()) >= 8, a.option_strings
            assert "(default:" in a.help or "(required" in a.help, a.option_strings
    code = ("import sys\nfrom transferkit.cli import main\n"
            "for c in ('embed', 'knn', 'cluster', 'cache'):\n"
            "    try:\n        main([c, '--help'])\n    except SystemExit:\n        pass\n"
            "assert 'torch' not in sys.modules, 'torch imported by --help'\nprint('ok')")
    repo = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo,
                       env={"PYTHONPATH": str(repo), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr
    # values are checked as for train, before any work
    assert main(["embed", "x", "--out", "y.npy", "--image-size", "1"]) == 2
    assert "image_size" in capsys.readouterr().err
