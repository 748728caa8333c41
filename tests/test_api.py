"""The notebook API: fit on lists, DataFrames and paths; predict on paths, PIL images and strings;
evaluate; load; the documentation's notebook examples run as written (with a tiny model swapped in)."""

import json
import re
from pathlib import Path

import pandas as pd
import pytest
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
    # the same code with tiny models: the example's lines are run as written
    swaps = {'backbone="bundled:efficientnet_lite0"': f'backbone="{TINY}", image_size=32, batch_size=16',
             'backbone="bundled:minilm-l6"': f'backbone="hf:{tiny_bert_dir}"'}
    for block in blocks:
        code = block
        for a, b in swaps.items():
            code = code.replace(a, b)
        assert code != block, "the notebook example no longer names the backbone the test swaps"
        exec(compile(code, "docs/how-to/notebook.md", "exec"), {})
    out = capsys.readouterr().out
    assert "Model('runs/digits'" in out and "runs/digits/report.html" in out
    m = json.loads((tmp_path / "runs/digits/metrics.json").read_text())
    assert m["n_train"] == 80 and len(m["per_class"]) == 10  # shots=8 x 10 digits
    assert (tmp_path / "runs/digits.data/data.csv").is_file()
    assert len(list((tmp_path / "runs/digits.data/data").glob("*.png"))) == 150
    assert (tmp_path / "runs/debian/model.safetensors").is_file()


def _pairs(image_folder):
    return [(str(p), p.parent.name) for p in sorted(image_folder.rglob("*.png"))]


def test_fit_list_of_paths_then_predict_pil_and_paths(tmp_path, image_folder):
    pairs = _pairs(image_folder)
    model = transferkit.fit(pairs, backbone=TINY, strategy="linear_probe", out=tmp_path / "run",
                            image_size=32, quiet=True)
    assert model.classes == ["blue", "green", "red"]
    cfg_data = Path(model.config.data)
    assert cfg_data.is_file() and cfg_data.parent == tmp_path / "run.data"
    rows = model.predict([pairs[0][0], Image.open(pairs[0][0]).convert("RGB")], top_k=3)
    assert rows[0]["input"] == pairs[0][0] and rows[1]["input"] == "<image 1>"
    # a PIL image and its file are the same pixels: identical probabilities
    assert [t["probability"] for t in rows[0]["top"]] == pytest.approx([t["probability"] for t in rows[1]["top"]], abs=1e-6)
    assert sum(t["probability"] for t in rows[0]["top"]) == pytest.approx(1.0, abs=1e-5)
    # evaluate on pairs == evaluate on the folder (the CLI's path)
    from transferkit.engine.run import evaluate_run
    by_pairs = model.evaluate(pairs)
    by_path = evaluate_run(tmp_path / "run", image_folder)
    assert by_pairs["accuracy"] == pytest.approx(by_path["accuracy"]) and by_pairs["n"] == len(pairs) == 36
    assert model.evaluate() == json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert model.report() == tmp_path / "run" / "report.html" and model.report().is_file()
    again = transferkit.load(tmp_path / "run")
    assert again.predict(pairs[0][0])["top"] == rows[0]["top"][:1]


def test_fit_dataframe_text_and_predict_strings(tmp_path, tiny_bert_dir):
    words = {"pos": "good great fine nice love fun", "neg": "bad awful poor hate boring dull"}
    rows = [{"review": " ".join(ws.split()[i % 6:] + ws.split()[:i % 6]), "y": lab}
            for lab, ws in words.items() for i in range(12)]
    df = pd.DataFrame(rows)
    model = transferkit.fit(df, backbone=f"hf:{tiny_bert_dir}", strategy="linear_probe", out=tmp_path / "t",
                            text_col="review", label_col="y", quiet=True)
    assert model.classes == ["neg", "pos"] and model.config.text_col == "review"
    one = model.predict("good great fine")
    assert one["input"] == "good great fine" and one["label"] in ("neg", "pos")
    assert len(model.predict(["good", "bad"])) == 2
    with pytest.raises(TypeError, match="strings"):
        model.predict(Image.new("RGB", (8, 8)))


def test_fit_checks_before_writing(tmp_path, image_folder):
    with pytest.raises(ConfigError, match="batch_size"):
        transferkit.fit(_pairs(image_folder), backbone=TINY, out=tmp_path / "r", batch_size=0)
    with pytest.raises(DataError, match="not an \\(x, label\\) pair"):
        transferkit.fit([("a", "b", "c")], backbone=TINY, out=tmp_path / "r")
    with pytest.raises(DataError, match="no 'label' column"):
        transferkit.fit(pd.DataFrame({"text": ["x"]}), backbone=TINY, out=tmp_path / "r")
    assert not (tmp_path / "r").exists() and not (tmp_path / "r.data").exists()
