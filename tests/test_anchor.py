"""The L2-SP anchor survives checkpoint + resume, by both paths, and tampering is refused."""

import json

import timm
import torch
from conftest import write_image_folder
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from transferkit.cli import main
from transferkit.config import read_config
from transferkit.engine.build import build_model, verify_anchor

TINY = "timm:test_resnet@random"


def _train(data, run, backbone, *extra):
    return main(["train", str(data), "--backbone", backbone, "--image-size", "32", "--batch-size", "8",
                 "--steps", "6", "--strategy", "full", "--reg", "l2sp:0.1", "--out", str(run), "--quiet",
                 *extra])


def _anchor_after_resume(run):
    cfg = read_config(run / "config.yaml")
    assert json.loads((run / "source.json").read_text())["weights_hash"].startswith("sha256:")
    with open(run / "splits.csv") as f:
        labels = sorted({line.rsplit(",", 1)[1].strip() for line in f.readlines()[1:]})
    torch.manual_seed(cfg.seed)  # as fit() does before building, so @random sources match
    model, derived = build_model(cfg, labels)
    return verify_anchor(run, cfg, model, derived)


def test_stored_anchor_is_identical_after_resume_and_tampering_is_refused(tmp_path, capsys):
    data = write_image_folder(tmp_path / "images")
    run = tmp_path / "run"
    assert _train(data, run, TINY, "--store-anchor", "--stop-after", "2") == 0
    stored = load_file(str(run / "anchor.safetensors"))
    assert stored and all(k.startswith("backbone.") for k in stored)
    # the stored anchor is the source as loaded, not the weights after two steps
    last = load_file(str(run / "last" / "model.safetensors"))
    assert any(not torch.equal(stored[k], last[k]) for k in stored)

    used = _anchor_after_resume(run)
    assert set(used) == set(stored) and all(torch.equal(used[k], stored[k]) for k in stored)
    assert _train(data, run, TINY, "--resume", str(run)) == 0
    after = load_file(str(run / "anchor.safetensors"))
    assert all(torch.equal(after[k], stored[k]) for k in stored)

    # a second run, stopped, whose stored anchor is then edited: resume refuses
    run2 = tmp_path / "run2"
    assert _train(data, run2, TINY, "--store-anchor", "--stop-after", "2") == 0
    path = run2 / "anchor.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    key = sorted(tensors)[0]
    tensors[key] = tensors[key] + 0.01
    save_file(tensors, str(path), metadata=meta)
    capsys.readouterr()
    assert main(["train", "--resume", str(run2), "--quiet"]) == 2
    assert "modified" in capsys.readouterr().err


def test_rederived_anchor_is_verified_against_the_recorded_hash(tmp_path, capsys):
    data = write_image_folder(tmp_path / "images")
    weights = tmp_path / "src.safetensors"
    torch.manual_seed(0)
    src = timm.create_model("test_resnet", pretrained=False, num_classes=0)
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(weights),
              metadata={"arch": "test_resnet"})
    run = tmp_path / "run"
    assert _train(data, run, f"file:{weights}", "--stop-after", "2") == 0
    assert not (run / "anchor.safetensors").exists()
    used = _anchor_after_resume(run)
    expected = {f"backbone.{k}": v for k, v in src.state_dict().items() if f"backbone.{k}" in used}
    assert set(used) == set(expected) and all(torch.equal(used[k], expected[k]) for k in used)

    # the weights file changes under the stopped run: the anchor can no longer be re-derived
    state = load_file(str(weights))
    key = next(k for k in state if k.endswith("weight") and state[k].ndim > 1)
    state[key] = state[key] * 1.01
    save_file(state, str(weights), metadata={"arch": "test_resnet"})
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    assert "cannot be re-derived" in capsys.readouterr().err
