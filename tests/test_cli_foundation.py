"""The foundation commands end to end: `transferkit models` and `transferkit predict --model`."""

import json
from pathlib import Path

import pytest

from transferkit.cli import main

# ImageNet classes a photo of a Chinese temple can reasonably be given
BUILDINGS = {"palace", "monastery", "bell cote, bell cot", "church, church building", "mosque",
             "stupa, tope", "castle", "boathouse", "dome", "triumphal arch", "pagoda"}


@pytest.fixture(scope="module")
def sample_photos() -> dict[str, str]:
    from sklearn.datasets import load_sample_images
    return {Path(f).stem: f for f in load_sample_images().filenames}


def _json(capsys):
    return json.loads(capsys.readouterr().out)


def test_models_json(capsys):
    assert main(["models", "--json"]) == 0
    out = _json(capsys)
    rows = {r["id"]: r for r in out["sources"]}
    lite0, minilm = rows["bundled:efficientnet_lite0"], rows["bundled:minilm-l6"]
    assert lite0["available"] and minilm["available"]
    assert (lite0["modality"], lite0["feature_dim"], lite0["num_stages"]) == ("image", 1280, 8)
    assert (minilm["modality"], minilm["feature_dim"], minilm["num_stages"]) == ("text", 384, 7)
    assert 3_000_000 < lite0["params"] < 4_000_000  # Lite0 without its classifier: ~3.4M
    assert set(out["kinds"]) == {"timm", "torchvision", "hf", "file", "bundled", "clip"}


def test_models_table(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "bundled:efficientnet_lite0" in out and "1280" in out and "bundled:minilm-l6" in out


def test_predict_source_model_on_real_photos(capsys, sample_photos):
    flower, temple = sample_photos["flower"], sample_photos["china"]
    assert main(["predict", "--backbone", "bundled:efficientnet_lite0", flower, temple, "--json"]) == 0
    rows = {Path(r["input"]).stem: r for r in _json(capsys)}
    assert rows["flower"]["label"] == "daisy"
    assert len(rows["flower"]["top"]) == 5
    probs = [t["probability"] for t in rows["flower"]["top"]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    top5 = {t["label"] for t in rows["china"]["top"]}
    assert top5 & BUILDINGS, top5


def test_predict_source_missing_file(capsys, tmp_path):
    missing = tmp_path / "no_such_photo.jpg"
    assert main(["predict", "--backbone", "bundled:efficientnet_lite0", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("transferkit: error:") and "no_such_photo.jpg" in err


def test_predict_unknown_source(capsys, sample_photos):
    assert main(["predict", "--model", "bundled:nope", sample_photos["flower"]]) == 2  # the old spelling
    warning, error = capsys.readouterr().err.splitlines()
    assert "'predict --model' is deprecated" in warning and "use '--backbone'" in warning
    assert "unknown bundled model 'nope'" in error
