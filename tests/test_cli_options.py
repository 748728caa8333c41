"""The CLI explains itself and checks every value before it writes: help from TrainConfig's metadata,
range/choice/syntax errors with exit code 2 and no files, the same errors for the library, fast --help,
and recipes shipped in the package."""

import argparse
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from transferkit.cli import main
from transferkit.cli.choose import _compare_parser, _rank_parser
from transferkit.cli.core import PARSERS
from transferkit.config import ConfigError, TrainConfig, load_recipe, make_config, shipped_recipes

REPO = Path(__file__).resolve().parents[1]


def _subparser(name: str) -> argparse.ArgumentParser:
    return PARSERS[name]()


@pytest.mark.parametrize("parser", ["train", "compare", "rank", "evaluate", "predict"])
def test_every_flag_has_a_description_and_a_default(parser):
    p = {"compare": _compare_parser, "rank": _rank_parser}.get(parser, lambda: _subparser(parser))()
    flags = [a for a in p._actions if a.option_strings and a.dest != "help" and a.help != argparse.SUPPRESS]
    assert len(flags) >= (30 if parser in ("train", "compare") else 2)
    for a in flags:
        assert a.help and len(a.help.split("(default:")[0].strip()) >= 8, f"{a.option_strings} has no description"
        assert "(default:" in a.help or "(required" in a.help, f"{a.option_strings} names no default"


def test_help_is_generated_from_the_config_metadata():
    p = _subparser("train")
    helps = {a.dest: a.help for a in p._actions}
    for f in dataclasses.fields(TrainConfig):
        if f.name == "data":
            continue
        assert f.metadata.get("help"), f"TrainConfig.{f.name} has no help metadata"
        assert helps[f.name].startswith(f.metadata["help"])
    assert "(default: 32; allowed: 1 <= integer <= 65536)" in helps["batch_size"]
    assert "allowed: adamw, sgd" in helps["optimizer"]
    assert "(default: all; allowed: integer >= 1, or all)" in helps["shots"]


@pytest.mark.parametrize("flag,value,words", [
    ("--batch-size", "0", "batch_size"), ("--steps", "0", "steps"), ("--shots", "0", "shots"),
    ("--image-size", "1", "image_size"), ("--lr", "0", "lr"), ("--lr", "nan", "finite"),
    ("--warmup", "1", "warmup"), ("--seed", "-1", "seed"), ("--epochs", "2.5", "integer"),
    ("--bn", "bogus", "auto, frozen, adapt, eval"), ("--optimizer", "adam", "did you mean 'adamw'"),
    ("--metric", "acc", "loss, accuracy, macro_f1"), ("--precision", "fp8", "precision"),
    ("--strategy", "partial:x", "strategy"), ("--strategy", "ful", "did you mean 'full'"),
    ("--reg", "l2sp:-1", "reg"), ("--backbone", "nokind", "backbone"), ("--val-fraction", "0.9", "< 1"),
])
def test_bad_values_exit_2_and_write_nothing(tmp_path, image_folder, capsys, flag, value, words):
    out = tmp_path / "run"
    before = sorted(p.name for p in image_folder.rglob("*"))
    rc = main(["train", str(image_folder), "--backbone", "timm:test_resnet@random", "--steps", "2",
               "--out", str(out), "--quiet", flag, value])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("transferkit: error:") and words in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    assert sorted(p.name for p in image_folder.rglob("*")) == before


def test_the_library_gives_the_same_errors(tmp_path):
    from transferkit.train import train
    with pytest.raises(ConfigError, match="batch_size"):
        make_config(data="x", out=str(tmp_path / "r"), batch_size=0)
    with pytest.raises(ConfigError, match="'bn'.*auto, frozen"):
        train(TrainConfig(data="x", out=str(tmp_path / "r"), bn="bogus"))
    with pytest.raises(ConfigError, match="true or false"):
        make_config(augment="maybe")
    assert not (tmp_path / "r").exists()
    assert make_config(shots="5", lr="3e-4", augment="no").shots == 5


def test_compare_and_rank_check_values_before_work(tmp_path, image_folder, capsys):
    assert main(["compare", str(image_folder), "--out", str(tmp_path / "c"), "--batch-size", "0"]) == 2
    assert "batch_size" in capsys.readouterr().err and not (tmp_path / "c").exists()
    assert main(["rank", str(image_folder), "--backbone", "timm:test_resnet@random", "--image-size", "1"]) == 2
    assert "image_size" in capsys.readouterr().err


def test_help_does_not_import_torch():
    code = ("import sys\nfrom transferkit.cli import main\n"
            "for c in ('train', 'compare', 'rank', 'predict', 'adapt', 'bridge', 'embed', 'export'):\n"
            "    try:\n        main([c, '--help'])\n    except SystemExit:\n        pass\n"
            "assert 'torch' not in sys.modules, 'torch imported by --help'\nprint('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                       env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("ok")


def test_recipes_ship_in_the_package_and_load_by_name():
    names = shipped_recipes()
    assert {"two_phase", "linear_probe", "text_lora"} <= set(names)
    assert (REPO / "transferkit" / "recipes" / "two_phase.yaml").is_file()
    assert load_recipe("two_phase")["strategy"] == "two_phase"
    assert load_recipe("two_phase.yaml") == load_recipe("two_phase")
    for name in names:  # every shipped recipe is a valid configuration
        make_config(load_recipe(name), data="x", out="y")
    with pytest.raises(ConfigError, match="did you mean 'two_phase'"):
        load_recipe("two_phse")
