"""Bounded work for any input (issue 19): extreme aspect ratios, YAML alias bombs, text lengths past
the model's positions, channel statistics; each refused by name or clamped with a message."""

import json
import re
import shutil

import pytest
from conftest import COLOURS, write_image_folder
from PIL import Image

from test_bad_inputs import N, _err, _train
from transferkit.cli import main


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("bounds")
    data = write_image_folder(root / "images")
    out = root / "run"
    assert _train(data, out, "--quiet") == 0
    return out, data


# ----------------------------------------------------------------------------- aspect ratio

def test_a_pixel_strip_is_an_error_row_in_predict_and_skipped_in_evaluate(run, tmp_path, capsys):
    out, data = run
    folder = tmp_path / "in"
    folder.mkdir()
    good = shutil.copy(sorted(data.rglob("*.png"))[0], folder / "a.png")
    strip = folder / "b_strip.png"
    Image.new("RGB", (100_000, 1), (200, 30, 30)).save(strip)  # a few hundred bytes
    assert main(["predict", str(out), str(folder), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["input"] for r in rows] == [str(good), str(strip)]
    assert rows[0]["label"] in COLOURS and "error" not in rows[0]
    assert rows[1]["label"] is None and "100000x1 pixels" in rows[1]["error"]
    assert "aspect ratio over 100:1" in rows[1]["error"]
    shutil.copy(strip, data / "red" / "zz_strip.png")
    try:
        assert main(["evaluate", str(out), str(data), "--json"]) == 0
        m = json.loads(capsys.readouterr().out)
        assert m["n"] == N and len(m["skipped"]) == 1 and "zz_strip.png" in m["skipped"][0]
    finally:
        (data / "red" / "zz_strip.png").unlink()


def test_the_eval_resize_is_bounded_and_unchanged_up_to_four_to_one():
    """An image within the 100:1 limit reaches the resize bounded: what reaches the centre crop is at
    most 4 x (size / crop_pct)^2 pixels whatever the aspect ratio; images up to 4:1 (all the centre
    crop did not already cut to a square) get exactly the pixels they got before the bound."""
    import torch
    from torchvision.transforms import v2 as T

    from transferkit.data import build_transforms
    from transferkit.models.backbone import ImagePreprocess
    pre = ImagePreprocess(size=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bilinear")
    _, eval_tf = build_transforms(pre, augment=False)
    for wh in [(4000, 50), (50, 4000), (4000, 41)]:
        im = Image.new("RGB", wh, (10, 20, 30))
        for step in eval_tf.transforms:
            if isinstance(step, T.CenterCrop):
                break
            im = step(im)
        assert im.width * im.height <= 4 * 256 * 256 + 256, (wh, im.size)
        assert eval_tf(Image.new("RGB", wh, (10, 20, 30))).shape == (3, 224, 224)

    _, eval_tf = build_transforms(pre, image_size=32, augment=False)
    unbounded = T.Compose([T.Resize(37, interpolation=T.InterpolationMode.BILINEAR), T.CenterCrop(32), T.ToImage(),
                           T.ToDtype(torch.float32, scale=True), T.Normalize([0.5] * 3, [0.5] * 3)])
    g = torch.Generator().manual_seed(0)
    for wh in [(32, 32), (100, 40), (40, 160), (200, 50)]:
        im = Image.fromarray(torch.randint(0, 255, (wh[1], wh[0], 3), generator=g, dtype=torch.uint8).numpy())
        assert torch.equal(eval_tf(im), unbounded(im)), wh


def test_a_compressed_tiff_over_the_bomb_limit_is_refused_by_its_header(tmp_path, monkeypatch):
    """A zlib TIFF is not bounded by its file size: its shape is checked as Pillow checks images."""
    import numpy as np
    import tifffile

    from transferkit.data.images import check_image
    path = tmp_path / "zeros.tif"
    tifffile.imwrite(path, np.zeros((64, 64, 3), np.uint8), compression="zlib")
    assert check_image(path) is None
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 12,288 values > 3 x 1000
    reason = check_image(path)
    assert reason and "TIFF of shape (64, 64, 3): 12,288 values" in reason and "decompression bomb" in reason


# ------------------------------------------------------------------------- YAML alias bombs

LAUGHS = "\n".join(["chan_mean: [&a [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5],"]
                   + [f"  &{b} [{', '.join([f'*{a}'] * 9)}]," for a, b in zip("abcdefgh", "bcdefghi")]
                   + ["  *i]", ""])


def test_yaml_alias_bombs_are_refused_before_any_value_is_read(run, tmp_path, capsys):
    out, data = run
    recipe = tmp_path / "laughs.yaml"
    recipe.write_text(LAUGHS)
    assert len(LAUGHS) < 1000
    assert _train(data, tmp_path / "r", "--config", str(recipe)) == 2
    err = _err(capsys)
    assert str(recipe) in err and "uses YAML anchors/aliases (line 1: &a)" in err
    assert not (tmp_path / "r").exists()
    run_copy = tmp_path / "run"
    shutil.copytree(out, run_copy)
    (run_copy / "config.yaml").write_text(LAUGHS)
    for argv in (["predict", str(run_copy), str(sorted(data.rglob("*.png"))[0])],
                 ["evaluate", str(run_copy), str(data)],
                 ["train", "--resume", str(run_copy), "--quiet"]):
        assert main(argv) == 2
        err = _err(capsys)
        assert f"{run_copy / 'config.yaml'} uses YAML anchors/aliases" in err


def test_an_adapt_run_yaml_with_aliases_is_a_config_error(tmp_path):
    from transferkit.adaptation.config import read_adapt_config
    from transferkit.config import ConfigError
    (tmp_path / "adapt.yaml").write_text(LAUGHS)
    with pytest.raises(ConfigError, match=r"adapt.yaml uses YAML anchors/aliases \(line 1: &a\)"):
        read_adapt_config(tmp_path / "adapt.yaml")


def test_plain_yaml_refuses_an_anchor_or_alias_anywhere_and_reads_the_rest():
    from transferkit.plain_yaml import AliasesRefused, load_plain_yaml
    assert load_plain_yaml("a: [1, 2]\nb: {c: 'x & y *z'}\n") == {"a": [1, 2], "b": {"c": "x & y *z"}}
    for text, needle in [("a: &x 1\n", "line 1: &x"), ("a: 1\nb: [2, *y]\n", "line 2: *y"),
                         ("base: &b {lr: 1}\nrun:\n  <<: *b\n", "line 1: &b")]:
        with pytest.raises(AliasesRefused, match=needle.replace("*", r"\*")):
            load_plain_yaml(text)


# ------------------------------------------------------------------------ text max length

def test_max_length_past_the_positions_is_clamped_with_a_warning(tiny_bert_dir, tmp_path, capsys):
    """The tiny BERT has 64 positions: --max-length 1000 on texts of 100 tokens indexed past its
    position table (a traceback); now it is clamped to 64, said once, and recorded in the run."""
    import csv
    words = {"animals": "cat dog bird fish", "weather": "rain snow wind sun", "colours": "red green blue black"}
    rows = [(" ".join([w.split()[i % 4] for i in range(n)]), label)
            for label, w in words.items() for n in (3, 4, 5, 6, 100)]
    data = tmp_path / "texts.csv"
    with open(data, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("text", "label"), *rows])
    out = tmp_path / "run"
    assert main(["train", str(data), "--backbone", f"hf:{tiny_bert_dir}", "--max-length", "1000",
                 "--batch-size", "8", "--steps", "2", "--strategy", "full", "--out", str(out), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "transferkit: warning: --max-length 1000 clamped to 64 (the model's max positions" in err
    import yaml
    assert yaml.safe_load((out / "config.yaml").read_text())["max_length"] == 64
    assert main(["predict", str(out), " ".join(["cat"] * 200), "--json"]) == 0
    cap = capsys.readouterr()
    assert json.loads(cap.out)[0]["label"] in words and "clamped" not in cap.err


# ----------------------------------------------------------------------- channel statistics

@pytest.mark.parametrize("flags,needle", [
    (["--chan-mean", "nan,0.5,0.5", "--chan-std", "1,1,1"], "'chan_mean' (--chan-mean) must be finite numbers, got nan"),
    (["--chan-mean", "0.5,inf,0.5", "--chan-std", "1,1,1"], "'chan_mean' (--chan-mean) must be finite numbers, got inf"),
    (["--chan-mean", "0.5,0.5,0.5", "--chan-std", "0.2,0,0.2"], "'chan_std' (--chan-std) must be finite numbers above 0"),
    (["--chan-mean", "0.5,0.5,0.5", "--chan-std", "0.2,-1,0.2"], "must be finite numbers above 0 (inputs are divided by them), got -1.0"),
    (["--chan-mean", "0.5,0.5,0.5"], "'chan_mean' (--chan-mean) is given without 'chan_std' (--chan-std)"),
    (["--chan-mean", "0.5,0.5,0.5", "--chan-std", "0.2,0.2"], "has 3 values and 'chan_std' (--chan-std) 2"),
    (["--chan-mean", "0.5", "--chan-std", "0.2"],
     "has 1 value(s) but the data has 3 channels (RGB image files): give 3 values, one per channel or --in-chans 1"),
    (["--chan-mean", "0.5,0.5", "--chan-std", "0.2,0.2", "--in-chans", "1"], "has 2 value(s) for 1 input channels"),
])
def test_bad_channel_statistics_are_refused_by_name_before_anything_is_written(run, tmp_path, capsys, flags, needle):
    _, data = run
    out = tmp_path / "r"
    assert _train(data, out, *flags, "--quiet") == 2
    assert needle in _err(capsys)
    assert not out.exists()


def test_channel_statistics_must_match_the_channels_of_arrays(tmp_path, capsys):
    import numpy as np
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / "bands" / c).mkdir(parents=True)
        for i in range(6):
            np.save(tmp_path / "bands" / c / f"{i}.npy", rng.normal(size=(4, 16, 16)).astype(np.float32))
    out = tmp_path / "r"
    assert _train(tmp_path / "bands", out, "--array-layout", "chw", "--chan-mean", "0,0", "--chan-std", "1,1",
                  "--quiet") == 2
    err = _err(capsys)
    assert re.search(r"has 2 value\(s\) but the data has 4 channels \(arrays, \d\.npy\): give 4 values", err)
    assert not out.exists()
    # the right count trains, and the run records it
    assert _train(tmp_path / "bands", out, "--array-layout", "chw", "--chan-mean", "0,0,0,0.5",
                  "--chan-std", "1,1,1,2", "--quiet", steps=1) == 0
    import yaml
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["in_chans"] == 4 and cfg["chan_mean"] == [0, 0, 0, 0.5] and cfg["chan_std"] == [1, 1, 1, 2]
