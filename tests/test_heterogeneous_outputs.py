"""Runs on inputs that are not RGB pictures, after training: `export` (timm with in_chans, onnx,
torchscript) and `rank` on a 4-band .npy folder and on .wav signals, and the report's gallery of
worst errors picturing arrays and spectrograms."""

import base64
import io
import json
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from test_heterogeneous import _npy_folder, _tone_folder

from transferkit.cli.main import main

TINY = "timm:test_resnet@random"
SPEC = "sr=16000,n_mels=32"


@pytest.fixture(scope="module")
def bands(tmp_path_factory):
    root = tmp_path_factory.mktemp("bands")
    data, run = _npy_folder(root / "data"), root / "run"
    assert main(["train", str(data), "--backbone", TINY, "--out", str(run), "--steps", "4", "--batch-size", "8",
                 "--image-size", "32", "--strategy", "full", "--quiet"]) == 0
    return data, run


@pytest.fixture(scope="module")
def tones(tmp_path_factory):
    root = tmp_path_factory.mktemp("tones")
    data, run = _tone_folder(root / "data"), root / "run"
    assert main(["train", str(data), "--backbone", TINY, "--out", str(run), "--steps", "4", "--batch-size", "8",
                 "--image-size", "32", "--spectrogram", SPEC, "--strategy", "linear_probe", "--quiet"]) == 0
    return data, run


def test_export_of_a_four_channel_run_to_timm_onnx_torchscript(bands, tmp_path, capsys):
    import timm

    from transferkit.data import read_items
    from transferkit.infer.loaders import make_dataset
    from transferkit.engine.run import load_run
    data, run = bands
    for fmt in ("timm", "onnx", "torchscript"):
        assert main(["export", str(run), "--format", fmt, "--out", str(tmp_path / fmt)]) == 0, capsys.readouterr().err
        manifest = json.loads((tmp_path / fmt / "export.json").read_text())
        assert manifest["parity"]["ok"] and manifest["parity"]["max_abs_diff"] <= 1e-4
        assert manifest["input_kind"] == "array" and manifest["preprocess"]["channels"] == 4
    cfg = json.loads((tmp_path / "timm" / "config.json").read_text())
    assert cfg["model_args"] == {"in_chans": 4} and cfg["pretrained_cfg"]["input_size"][0] == 4
    assert cfg["pretrained_cfg"]["crop_mode"] == "squash" and cfg["transferkit_input"]["kind"] == "array"
    # plain timm, from the folder alone: the 4-channel first conv and the run's logits
    tm = timm.create_model(f"local-dir:{tmp_path / 'timm'}", pretrained=True).eval()
    model, rcfg = load_run(run)
    items = read_items(data, "image")[0][:6]
    ds = make_dataset(model, items, train=False, augment=False, image_size=rcfg.image_size, seed=0)
    x = torch.stack([ds[i][0] for i in range(len(items))])
    assert x.shape[1] == 4
    with torch.no_grad():
        torch.testing.assert_close(tm(x), model.eval()(x), atol=1e-5, rtol=0)


def test_export_of_a_signal_run(tones, tmp_path, capsys):
    _, run = tones
    assert main(["export", str(run), "--format", "timm", "--out", str(tmp_path / "t")]) == 0, capsys.readouterr().err
    cfg = json.loads((tmp_path / "t" / "config.json").read_text())
    assert cfg["model_args"] == {"in_chans": 1} and cfg["transferkit_input"]["kind"] == "signal"
    assert "n_mels=32" in cfg["transferkit_input"]["feed"]


def test_rank_on_four_band_arrays_and_on_signals(bands, tones, capsys):
    from transferkit.choose.transferability import logme
    from transferkit.config import TrainConfig
    from transferkit.data import load_task
    from transferkit.infer.features import frozen_features
    from transferkit.engine.input_kind import adapt_backbone, settle_inputs
    from transferkit.models import load_backbone
    data, run = bands
    capsys.readouterr()
    assert main(["rank", str(data), "--backbone", f"{TINY},timm:test_efficientnet@random", "--json",
                 "--no-cache"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["rank"] for r in rows] == [1, 2] and rows[0]["logme"] >= rows[1]["logme"]
    # the scores are those of the backbone `train` builds: first conv on 4 bands, the data's statistics
    cfg = TrainConfig(data=str(data), backbone=TINY)
    cfg = settle_inputs(cfg)  # a new config: the one given is frozen
    assert cfg.in_chans == 4
    torch.manual_seed(0)
    bb = adapt_backbone(load_backbone(TINY), cfg)
    task = load_task(str(data), seed=0, val_fraction=None)  # as train and rank split it
    feats, labels, _ = frozen_features(bb, task.train, task.classes)
    mine = next(r for r in rows if r["source"] == TINY)
    assert mine["n"] == len(task.train) == 16
    assert mine["logme"] == pytest.approx(logme(feats.double().numpy(), labels.numpy()), abs=1e-6)

    assert main(["rank", str(tones[0]), "--backbone", TINY, "--spectrogram", SPEC, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 1 and rows[0]["feature_dim"] == 96 and np.isfinite(rows[0]["logme"])


def _swapped(data, dst):
    """Every item twice, under its own class and under the other one: exactly one copy of each is
    a mistake, whatever the model predicts, so the gallery is never empty."""
    a, b = sorted(p.name for p in data.iterdir())
    for cls in (a, b):
        shutil.copytree(data / cls, dst / cls)
    for cls, other in ((a, b), (b, a)):
        for f in (data / cls).iterdir():
            shutil.copy(f, dst / other / f"swapped_{f.name}")
    return dst


def _gallery_images(page: str) -> list[Image.Image]:
    figures = re.findall(r"<figure class='err'.*?</figure>", page, flags=re.S)
    assert figures and all("(unreadable)" not in f for f in figures)
    uris = [re.search(r"<img src='data:image/png;base64,([^']+)'", f) for f in figures]
    assert all(uris), "an array or signal mistake has no picture"
    return [Image.open(io.BytesIO(base64.b64decode(u.group(1)))) for u in uris]


@pytest.mark.parametrize("which", ["bands", "tones"])
def test_report_gallery_pictures_arrays_and_signals(which, bands, tones, tmp_path, capsys):
    data, run = {"bands": bands, "tones": tones}[which]
    (tmp_path / "d").mkdir()
    both = _swapped(data, tmp_path / "d")
    assert main(["evaluate", str(run), str(both), "--out", str(tmp_path / "ev")]) == 0, capsys.readouterr().err
    images = _gallery_images((tmp_path / "ev" / "report.html").read_text())
    assert len(images) == 16  # 20 (or 16) items, each wrong once: the gallery's 16 slots are full
    assert all(im.mode == "RGB" and max(im.size) == 112 for im in images)


def test_array_and_spectrogram_pictures_by_hand(tmp_path):
    from transferkit.data.signals import SpectrogramSpec, log_mel, read_signal
    from transferkit.report.gallery import _array_picture
    a = np.zeros((8, 8, 4), dtype=np.uint16)  # H x W x C
    a[:, 4:, 0] = 1000          # red: left half dark, right half full
    a[..., 1] = 7               # green: constant, so no contrast (0)
    a[..., 2] = np.arange(8)[:, None] * 100  # blue: a vertical ramp
    a[..., 3] = 60000           # the 4th band is not shown
    np.save(tmp_path / "a.npy", a)
    im = np.asarray(_array_picture(str(tmp_path / "a.npy")))
    assert im.shape == (112, 112, 3)
    assert im[:, :56, 0].max() == 0 and im[:, 56:, 0].min() == 255 and im[..., 1].max() == 0
    assert im[0, 0, 2] == 0 and im[-1, 0, 2] == 255 and (np.diff(im[:, 0, 2].astype(int)) >= 0).all()
    np.save(tmp_path / "g.npy", np.arange(16, dtype=np.float64).reshape(4, 4))  # one channel: gray
    g = _array_picture(str(tmp_path / "g.npy"))
    assert g.mode == "L" and np.asarray(g)[0, 0] == 0 and np.asarray(g)[-1, -1] == 255

    data = _tone_folder(tmp_path / "tones", n=1)
    wav = data / "high" / "high0.wav"
    pre = type("Pre", (), {"spectrogram": SPEC})()
    pic = np.asarray(_array_picture(str(wav), pre)).astype(float).sum(-1)  # magma: brighter = louder
    spec = SpectrogramSpec.parse(SPEC)
    loud = int(log_mel(read_signal(str(wav), spec.sr), spec)[0].mean(1).argmax())  # lowest mel = 0
    scale = pic.shape[0] / spec.n_mels
    row = (spec.n_mels - 1 - loud + 0.5) * scale  # drawn with the lowest frequency at the bottom
    assert abs(pic.mean(1).argmax() - row) <= scale
