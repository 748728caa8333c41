"""The notebook API: fit on lists, DataFrames, arrays and paths with the CLI's defaults; predict on
paths, PIL images, numpy arrays, tensors and strings into a DataFrame; predict_proba, embed and the
torch module; overwrite=True and resume=True; absolute paths in the run; errors in the API's words;
the documentation's notebook examples run as written (with a tiny model swapped in)."""

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import transferkit
from transferkit.config import ConfigError
from transferkit.data import DataError

REPO = Path(__file__).resolve().parents[1]
TINY = "timm:test_resnet@random"


def _notebook_blocks() -> list[str]:
    text = (REPO / "docs" / "how-to" / "notebook.md").read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_docs_notebook_examples_run(tmp_path, monkeypatch, tiny_bert_dir, capsys):
    blocks = _notebook_blocks()
    assert len(blocks) == 2
    monkeypatch.chdir(tmp_path)
    # the same code with tiny models (and a shorter held-out list): the example's lines run as written
    swaps = {'backbone="bundled:efficientnet_lite0"': f'backbone="{TINY}", image_size=32, batch_size=16',
             'backbone="bundled:minilm-l6"': f'backbone="hf:{tiny_bert_dir}"',
             "images[150:], labels[150:]": "images[150:250], labels[150:250]"}
    codes = []
    for block in blocks:
        code = block
        for a, b in swaps.items():
            code = code.replace(a, b)
        assert code != block, "the notebook example no longer names the backbone the test swaps"
        codes.append(code)
    for code in (codes[0], codes[0], codes[1]):  # the digits cell run twice: overwrite=True trains again
        exec(compile(code, "docs/how-to/notebook.md", "exec"), {})
    out = capsys.readouterr().out
    assert out.count("Model('runs/digits'") == 2 and "runs/digits/report.html" in out
    assert "(10, 10) (10, " in out and "TransferModel" in out and "probability" in out
    m = json.loads((tmp_path / "runs/digits/metrics.json").read_text())
    assert m["n_train"] == 80 and len(m["per_class"]) == 10  # shots=8 x 10 digits
    assert (tmp_path / "runs/digits.data/data.csv").is_file()
    assert len(list((tmp_path / "runs/digits.data/data").glob("*.png"))) == 150
    assert (tmp_path / "runs/debian/model.safetensors").is_file()


def test_fit_defaults_are_the_clis(tmp_path, image_folder, monkeypatch):
    """fit(data, out=...) and `transferkit train DATA --out ...` make the same configuration
    (strategy auto, the same backbone, ...): compared before any training."""
    import transferkit.train as train_module
    from transferkit.cli import main
    seen = []

    class Stop(Exception):
        pass

    def capture(cfg, **kw):
        seen.append(cfg.to_dict())
        raise Stop

    monkeypatch.setattr(train_module, "train", capture)
    with pytest.raises(Stop):
        transferkit.fit(str(image_folder), out=tmp_path / "a")
    with pytest.raises(Stop):
        main(["train", str(image_folder), "--out", str(tmp_path / "b")])
    api, cli = seen
    assert api["strategy"] == "auto" and api["backbone"] == "bundled:efficientnet_lite0"
    assert {k: v for k, v in api.items() if k != "out"} == {k: v for k, v in cli.items() if k != "out"}
    # a recipe's strategy wins over the default, an argument wins over the recipe (as flags do)
    with pytest.raises(Stop):
        transferkit.fit(str(image_folder), out=tmp_path / "c", config="two_phase")
    with pytest.raises(Stop):
        transferkit.fit(str(image_folder), out=tmp_path / "c", config="two_phase", strategy="linear_probe")
    assert seen[2]["strategy"] == "two_phase" and seen[3]["strategy"] == "linear_probe"


def test_predict_takes_paths_pil_arrays_and_tensors(tmp_path, image_folder, monkeypatch):
    monkeypatch.chdir(image_folder.parent)
    pairs = [(str(p.relative_to(image_folder.parent)), p.parent.name) for p in sorted(image_folder.rglob("*.png"))]
    model = transferkit.fit(pairs, backbone=TINY, strategy="linear_probe", out="run", image_size=32, quiet=True)
    assert model.classes == ["blue", "green", "red"]
    # every path the run records is absolute: the run works from any directory
    run = image_folder.parent / "run"
    assert model.config.out == str(run) and model.run_dir == run
    assert Path(model.config.data).is_absolute() and Path(model.config.data).parent == image_folder.parent / "run.data"
    written = pd.read_csv(model.config.data)
    assert all(Path(p).is_absolute() for p in written["path"])

    path = pairs[0][0]
    pil = Image.open(path).convert("RGB")
    arr = np.asarray(pil)
    inputs = [path, pil, arr, arr.astype(np.float32) / 255, torch.from_numpy(arr.copy()).permute(2, 0, 1)]
    df = model.predict(inputs, top_k=3)
    assert isinstance(df, pd.DataFrame) and list(df.columns) == ["input", "label", "probability", "top"]
    assert list(df["input"]) == [path, "<image 1>", "<array 2>", "<array 3>", "<array 4>"]
    # the same pixels, in any form: the same probabilities
    for top in df["top"]:
        assert [p for _, p in top] == pytest.approx([p for _, p in df["top"][0]], abs=1e-6)
    assert sum(p for _, p in df["top"][0]) == pytest.approx(1.0, abs=1e-5)
    assert model.predict(path).shape == (1, 4)  # one input: a one-row DataFrame
    assert len(model.predict(np.stack([arr, arr]))) == 2  # a 4-D array is a batch
    assert len(model.predict(pd.Series([path, path]))) == 2

    proba = model.predict_proba([path, pil])
    assert proba.shape == (2, 3) and proba.dtype == np.float32
    assert proba.sum(axis=1) == pytest.approx([1, 1], abs=1e-5)
    assert model.classes[int(proba[0].argmax())] == df["label"][0]
    assert float(proba[0].max()) == pytest.approx(df["probability"][0], abs=1e-6)

    feats = model.embed([path, pil, arr])
    module = model.module
    assert isinstance(module, torch.nn.Module) and type(module).__name__ == "TransferModel"
    assert feats.shape == (3, module.head.in_features) and feats.dtype == np.float32
    assert feats[0] == pytest.approx(feats[1], abs=1e-5) and feats[0] == pytest.approx(feats[2], abs=1e-5)
    with torch.no_grad():  # embed is what the head reads: the head on it gives the logits
        logits = module.head(torch.from_numpy(feats[:1]).to(next(module.parameters()).device)).cpu()
    assert model.classes[int(logits.argmax())] == df["label"][0]

    # an unreadable input: a row with its error (predict), a DataError (predict_proba)
    bad = model.predict([path, "missing.png"])
    assert bad["error"][1] == "file not found" and pd.isna(bad["label"][1]) and pd.isna(bad["error"][0])
    with pytest.raises(DataError, match="missing.png"):
        model.predict_proba(["missing.png"])
    with pytest.raises(ValueError, match="H x W"):
        model.predict(np.zeros((4, 4, 7), dtype=np.uint8))
    with pytest.raises(ValueError, match="0..1"):
        model.predict(np.full((4, 4), 3.0))
    with pytest.raises(TypeError, match="numpy arrays or torch tensors"):
        model.predict(3.5)

    # from another directory: the run and the data it names are found
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    again = transferkit.load(run)
    assert Path(again.config.data).is_file()
    assert again.predict(str(image_folder.parent / path))["top"][0] == df["top"][0][:1]
    # evaluate on pairs == evaluate on the folder (the CLI's path)
    from transferkit.engine.run import evaluate_run
    by_pairs = again.evaluate([(str(image_folder.parent / p), y) for p, y in pairs])
    assert by_pairs["accuracy"] == pytest.approx(evaluate_run(run, image_folder)["accuracy"]) and by_pairs["n"] == 36
    assert again.evaluate() == json.loads((run / "metrics.json").read_text())
    assert again.report() == run / "report.html" and again.report().is_file()


def test_rerun_needs_overwrite_and_speaks_the_apis_names(tmp_path, image_folder):
    pairs = [(str(p), p.parent.name) for p in sorted(image_folder.rglob("*.png"))]
    opts = dict(backbone=TINY, strategy="full", image_size=32, steps=2, batch_size=8, out=tmp_path / "r", quiet=True)
    with pytest.raises(RuntimeError, match=r"transferkit.fit\(out='.*', resume=True\)"):
        transferkit.fit(pairs, stop_after=1, **opts)
    data_csv = tmp_path / "r.data" / "data.csv"
    before = data_csv.stat().st_mtime_ns
    # the same cell run again: refused before anything is written, in the API's words
    with pytest.raises(FileExistsError) as e:
        transferkit.fit(pairs[:-3], **opts)
    assert "resume=True" in str(e.value) and "overwrite=True" in str(e.value) and "--" not in str(e.value)
    assert data_csv.stat().st_mtime_ns == before
    with pytest.raises(TypeError, match="steps differ"):
        transferkit.fit(pairs, resume=True, **{**opts, "steps": 5})
    model = transferkit.fit(pairs, resume=True, **opts)  # the cell with resume=True: continues, the data unchanged
    assert model.metrics["n_train"] > 0 and (tmp_path / "r" / "model.safetensors").is_file()
    model = transferkit.fit(pairs[:-3], overwrite=True, **opts)
    assert len(pd.read_csv(data_csv)) == 33
    with pytest.raises(ConfigError) as e:
        transferkit.fit(pairs, backbone=TINY, out=tmp_path / "x", batch_size=0)
    assert str(e.value).startswith("'batch_size' must be") and "--" not in str(e.value)


def test_fit_dataframe_text_and_predict_strings(tmp_path, tiny_bert_dir):
    words = {"pos": "good great fine nice love fun", "neg": "bad awful poor hate boring dull"}
    rows = [{"review": " ".join(ws.split()[i % 6:] + ws.split()[:i % 6]), "y": lab}
            for lab, ws in words.items() for i in range(12)]
    df = pd.DataFrame(rows)
    model = transferkit.fit(df, backbone=f"hf:{tiny_bert_dir}", strategy="linear_probe", out=tmp_path / "t",
                            text_col="review", label_col="y", quiet=True)
    assert model.classes == ["neg", "pos"] and model.config.text_col == "review"
    one = model.predict("good great fine")
    assert isinstance(one, pd.DataFrame) and one["input"][0] == "good great fine" and one["label"][0] in ("neg", "pos")
    many = model.predict(["good", "bad"])
    assert list(many["input"]) == ["good", "bad"]
    assert len(model.predict(np.array(["good", "bad", "fun"]))) == 3
    assert len(model.predict(df["review"].head(4))) == 4
    proba = model.predict_proba(["good", "bad"])
    assert proba.shape == (2, 2) and list(many["label"]) == [model.classes[i] for i in proba.argmax(1)]
    assert model.embed(["good", "bad"]).shape == (2, model.module.head.in_features)
    with pytest.raises(TypeError, match="strings"):
        model.predict(Image.new("RGB", (8, 8)))


def test_fit_checks_before_writing(tmp_path, image_folder):
    pairs = [(str(p), p.parent.name) for p in sorted(image_folder.rglob("*.png"))]
    with pytest.raises(ConfigError, match="batch_size"):
        transferkit.fit(pairs, backbone=TINY, out=tmp_path / "r", batch_size=0)
    with pytest.raises(DataError, match="not an \\(x, label\\) pair"):
        transferkit.fit([("a", "b", "c")], backbone=TINY, out=tmp_path / "r")
    with pytest.raises(DataError, match="no 'label' column"):
        transferkit.fit(pd.DataFrame({"text": ["x"]}), backbone=TINY, out=tmp_path / "r")
    with pytest.raises(TypeError, match="needs data"):
        transferkit.fit(out=tmp_path / "r")
    assert not (tmp_path / "r").exists() and not (tmp_path / "r.data").exists()
    with pytest.raises(FileNotFoundError, match=r"transferkit.fit\(data, out=...\)"):
        transferkit.load(tmp_path)


def test_api_words():
    from transferkit.api import api_words
    assert api_words("'lr' (--lr) must be 0 < number") == "'lr' must be 0 < number"
    assert api_words("pass --overwrite to write beside, --no-tta to skip") == "pass overwrite=True to write beside, tta=False to skip"
    assert api_words("--out runs/x is a file; choose another --out") == "out='runs/x' is a file; choose another out"
    assert api_words("continue with 'transferkit train --resume runs/x'") == "continue with 'transferkit.fit(out='runs/x', resume=True)'"
    assert api_words("--val data has labels") == "val data has labels"
    assert api_words("--not-a-flag stays") == "--not-a-flag stays"
