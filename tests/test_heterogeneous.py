"""Heterogeneous inputs: channel adaptation of the first conv, arrays (.npy/.tif), signals (.wav)."""

import copy
import csv
import json

import numpy as np
import pytest
import torch
import yaml

from transferkit.cli.main import main
from transferkit.config import TrainConfig
from transferkit.data import DataError
from transferkit.data.arrays import read_array
from transferkit.data.signals import SpectrogramSpec, log_mel, mel_filterbank
from transferkit.engine.build import build_model
from transferkit.models import load_backbone
from transferkit.models.channels import adapt_input_channels, find_first_conv

TINY = "timm:test_resnet@random"


def _conv_pair(source, n, rule):
    torch.manual_seed(0)
    bb = load_backbone(source)
    name, conv = find_first_conv(bb.module)
    orig = copy.deepcopy(conv).eval()
    info = adapt_input_channels(bb, n, rule)
    assert info["conv"] == name and conv.in_channels == n and conv.weight.shape[1] == n
    return orig, conv.eval(), bb


@pytest.mark.parametrize("source", [TINY, "timm:test_efficientnet@random", "torchvision:resnet18@random"])
def test_gray_sum_rule_equals_source_conv_on_repeated_rgb(source):
    orig, conv, _ = _conv_pair(source, 1, "auto")
    x = torch.randn(2, 1, 20, 20)
    with torch.no_grad():
        assert torch.allclose(conv(x), orig(x.repeat(1, 3, 1, 1)), atol=1e-5)


def test_whole_backbone_after_gray_adaptation_matches_rgb_of_equal_channels():
    torch.manual_seed(0)
    ref = load_backbone(TINY).module.eval()
    orig, conv, bb = _conv_pair(TINY, 1, "sum")
    bb.module.load_state_dict({**ref.state_dict(), f"{find_first_conv(bb.module)[0]}.weight": conv.weight})
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(bb.module.eval()(x), ref(x.repeat(1, 3, 1, 1)), atol=1e-5)


def test_four_channels_sum_rule_and_rgb_slice_rules():
    x = torch.randn(2, 1, 16, 16)
    orig, conv, _ = _conv_pair(TINY, 4, "sum")
    with torch.no_grad():  # all four channels equal -> the source conv on [x, x, x]
        assert torch.allclose(conv(x.repeat(1, 4, 1, 1)), orig(x.repeat(1, 3, 1, 1)), atol=1e-5)

    rgb, extra = torch.randn(2, 3, 16, 16), torch.randn(2, 1, 16, 16) * 50
    orig, conv, _ = _conv_pair(TINY, 4, "rgb+zeros")
    assert torch.equal(conv.weight[:, :3], orig.weight) and torch.count_nonzero(conv.weight[:, 3]) == 0
    with torch.no_grad():
        assert torch.allclose(conv(torch.cat([rgb, extra], 1)), orig(rgb), rtol=0, atol=1e-6)

    orig, conv, _ = _conv_pair(TINY, 5, "rgb+mean")  # extras: mean RGB filter / (N - 3)
    assert torch.equal(conv.weight[:, :3], orig.weight)
    want = orig.weight.mean(1) / 2
    assert torch.allclose(conv.weight[:, 3], want, atol=1e-7) and torch.allclose(conv.weight[:, 4], want, atol=1e-7)


def test_l2sp_does_not_anchor_the_adapted_conv(tmp_path):
    cfg = TrainConfig(backbone=TINY, in_chans=4, reg="l2sp:1.0", strategy="full")
    model, anchor = build_model(cfg, ["a", "b"])
    conv_param = f"backbone.{model.spec.input_adaptation['param']}"
    names = {n for n, _ in model.named_parameters() if n.startswith("backbone.")}
    assert conv_param in names and conv_param not in anchor
    assert set(anchor) == names - {conv_param}
    from transferkit.regularizers.l2sp import L2SP
    reg = L2SP(anchor, alpha=1.0)
    params = dict(model.named_parameters())
    with torch.no_grad():
        params[conv_param][:, 3] += 1.0  # a new channel's filter moves: no penalty
        params[conv_param][:, 0] += 1.0  # so does the (derived) RGB slice: the conv is not anchored
    assert reg(model, None).item() == 0.0
    other = next(n for n in anchor if n != conv_param and params[n].ndim > 1)
    with torch.no_grad():
        params[other].add_(0.5)
    assert reg(model, None).item() == pytest.approx(0.5 * 0.25 * params[other].numel(), rel=1e-4)


def test_array_layouts_and_tif(tmp_path):
    import tifffile
    a = np.arange(6 * 5 * 4, dtype=np.int16).reshape(6, 5, 4)
    np.save(tmp_path / "hwc.npy", a)
    np.save(tmp_path / "chw.npy", np.moveaxis(a, -1, 0))
    tifffile.imwrite(tmp_path / "pages.tif", np.moveaxis(a, -1, 0), photometric="minisblack")  # 4 pages
    want = np.moveaxis(a, -1, 0).astype(np.float32)
    for f in ("hwc.npy", "chw.npy", "pages.tif"):
        got = read_array(tmp_path / f)
        assert got.dtype == np.float32 and np.array_equal(got, want), f
    np.save(tmp_path / "cube.npy", np.zeros((4, 6, 4)))
    with pytest.raises(DataError, match="array-layout"):
        read_array(tmp_path / "cube.npy")
    assert read_array(tmp_path / "cube.npy", "hwc").shape == (4, 4, 6)


def test_log_mel_puts_a_tone_in_its_band():
    spec = SpectrogramSpec.parse("sr=8000,n_fft=256,hop=64,n_mels=32")
    fb = mel_filterbank(spec)
    hz = np.linspace(0, 4000, 129)
    areas = (fb.numpy() * (hz[1] - hz[0])).sum(1)
    assert np.allclose(areas[4:], 1.0, atol=0.05)  # unit area (the narrowest low bands are undersampled)
    t = np.arange(8000) / 8000
    for f in (500.0, 2000.0):
        img = log_mel(np.sin(2 * np.pi * f * t), spec)
        assert img.shape[0] == 1 and img.shape[1] == 32
        centre = (fb * torch.from_numpy(hz).float()).sum(1) / fb.sum(1)
        band = int(img[0].mean(1).argmax())
        assert abs(centre[band].item() - f) < 150, (f, centre[band].item())
    with pytest.raises(ValueError, match="KEY=VALUE"):
        SpectrogramSpec.parse("mels=3")


def _npy_folder(root, n=10, chans=4, seed=0):
    rng = np.random.default_rng(seed)
    for cls, shift in (("lo", 0.0), ("hi", 40.0)):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            a = rng.normal(100.0, 10.0, size=(24, 24, chans))
            a[..., chans - 1] += shift  # only the extra (non-RGB) band tells the classes apart
            np.save(root / cls / f"{cls}{i}.npy", a.astype(np.uint16))
    return root


def test_train_evaluate_predict_on_four_channel_npy(tmp_path, capsys):
    data = _npy_folder(tmp_path / "bands")
    run = tmp_path / "run"
    rc = main(["train", str(data), "--backbone", TINY, "--out", str(run), "--steps", "8", "--batch-size", "8",
               "--image-size", "32", "--strategy", "full", "--lr", "3e-3", "--quiet"])
    assert rc == 0
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["in_chans"] == 4 and cfg["chans_init"] == "auto"
    train = [r["item"] for r in csv.DictReader(open(run / "splits.csv")) if r["split"] == "train"]
    x = np.stack([np.moveaxis(np.load(data / p), -1, 0).reshape(4, -1) for p in train], 1).reshape(4, -1)
    assert np.allclose(cfg["chan_mean"], x.mean(1), rtol=1e-6)
    assert np.allclose(cfg["chan_std"], x.std(1), rtol=1e-5)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["n_test"] == 4 and 0.0 <= metrics["accuracy"] <= 1.0
    capsys.readouterr()

    from transferkit.engine.run import load_run
    model, _ = load_run(run)
    assert find_first_conv(model.backbone)[1].in_channels == 4
    assert model.spec.preprocess.mean == tuple(cfg["chan_mean"])

    assert main(["evaluate", str(run), str(data), "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["n"] == 20 and sum(map(sum, m["confusion_matrix"])) == 20
    assert main(["predict", str(run), str(data / "hi"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 10 and all(r["input"].endswith(".npy") for r in rows)

    np.save(tmp_path / "three.npy", np.zeros((24, 24, 3), dtype=np.float32))
    assert main(["predict", str(run), str(tmp_path / "three.npy")]) == 2
    assert "3 channels, but the model reads 4" in capsys.readouterr().err


def test_gray_png_with_in_chans_1_uses_data_statistics(tmp_path):
    from PIL import Image
    from transferkit.engine.input_kind import settle_inputs
    rng = np.random.default_rng(0)
    vals = []
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(5):
            px = rng.integers(0, 256, size=(8, 8), dtype=np.uint8)
            Image.fromarray(px, "L").save(tmp_path / cls / f"{i}.png")
            vals.append(px)
    cfg = TrainConfig(data=str(tmp_path), backbone=TINY, in_chans=1, val_fraction=0.0001, test_fraction=0.0001)
    cfg = settle_inputs(cfg)  # a new config: the one given is frozen
    assert cfg.in_chans == 1 and len(cfg.chan_mean) == 1
    assert 0.3 < cfg.chan_mean[0] < 0.7  # luminance in [0, 1] of uniform noise
    plain = TrainConfig(data=str(tmp_path), backbone=TINY)
    plain = settle_inputs(plain)
    assert plain.in_chans is None and plain.chan_mean is None  # RGB pictures: nothing changes


def _tone_folder(root, n=8):
    from scipy.io import wavfile
    rng = np.random.default_rng(0)
    sr = 8000
    t = np.arange(int(0.25 * sr)) / sr
    for cls, f in (("low", 400.0), ("high", 2400.0)):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            x = 0.5 * np.sin(2 * np.pi * (f + rng.uniform(-30, 30)) * t) + 0.05 * rng.normal(size=t.size)
            wavfile.write(root / cls / f"{cls}{i}.wav", sr, (x * 32767).astype(np.int16))
    return root


def test_train_on_wav_tones_through_a_spectrogram(tmp_path, capsys):
    data = _tone_folder(tmp_path / "tones")
    run = tmp_path / "run"
    rc = main(["train", str(data), "--backbone", TINY, "--out", str(run), "--steps", "6", "--batch-size", "8",
               "--image-size", "32", "--spectrogram", "sr=16000,n_mels=32", "--quiet"])
    assert rc == 0
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["spectrogram"] == "sr=16000,n_fft=512,hop=128,n_mels=32,fmin=0.0,fmax=0.0"
    assert cfg["in_chans"] == 1 and cfg["tta"] is False and len(cfg["chan_mean"]) == 1
    assert cfg["chan_mean"][0] < 0  # dB of a mostly quiet power spectrum
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["accuracy"] == 1.0  # two tones 2 kHz apart: the head fit separates them
    capsys.readouterr()
    assert main(["predict", str(run), str(data / "high" / "high0.wav"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["label"] == "high"
