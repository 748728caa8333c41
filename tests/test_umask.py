"""Every file transferkit writes has the permissions the umask gives any file: safetensors'
save_file and mkstemp create 0600 files, mkdtemp 0700 folders, and a colleague in the group could
not open the model, the report or the cache (the issue's `model.safetensors` written 0600)."""

import os
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from transferkit.cli import main
from transferkit.store.checkpoint import follow_umask

TINY = "timm:test_resnet@random"


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _modes(root: Path) -> dict[str, int]:
    out = {str(root): stat.S_IMODE(root.stat().st_mode)}
    for p in root.rglob("*"):
        if not p.is_symlink():
            out[str(p.relative_to(root))] = stat.S_IMODE(p.stat().st_mode)
    return out


def _wrong(root: Path) -> dict[str, str]:
    return {k: oct(m) for k, m in _modes(root).items()
            if m != (0o755 if (root / k).is_dir() or k == str(root) else 0o644)}


def test_follow_umask_fixes_private_writers(tmp_path, umask_022):
    save_file({"w": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
    assert stat.S_IMODE((tmp_path / "model.safetensors").stat().st_mode) == 0o600  # what the writer makes
    os.chmod(tmp_path, 0o700)
    follow_umask(tmp_path)
    assert _wrong(tmp_path) == {}


def test_every_file_of_a_run_and_its_outputs_follows_the_umask(tmp_path, umask_022):
    from conftest import write_image_folder
    data = write_image_folder(tmp_path / "images", per_class=16)
    run, cache = tmp_path / "run", tmp_path / "cache"
    # two_phase with a validation split: head fit through the feature cache, lp_model, WiSE-FT, last/
    assert main(["train", str(data), "--backbone", TINY, "--image-size", "32", "--batch-size", "8",
                 "--steps", "2", "--strategy", "two_phase", "--val-fraction", "0.25", "--cache-dir", str(cache),
                 "--checkpoint-every", "1", "--out", str(run), "--quiet"]) == 0
    assert (run / "model.safetensors").is_file() and (run / "report.html").is_file()
    images = [str(p) for p in sorted(data.rglob("*.png"))[:3]]
    assert main(["predict", str(run), *images, "--out", str(tmp_path / "outs" / "p.csv")]) != 0  # no folder
    (tmp_path / "outs").mkdir()
    assert main(["predict", str(run), *images, "--out", str(tmp_path / "outs" / "p.csv")]) == 0
    assert main(["predict", str(run), *images, "--out", str(tmp_path / "outs" / "p.jsonl")]) == 0
    assert main(["evaluate", str(run), str(data), "--out", str(tmp_path / "outs" / "ev")]) == 0
    assert main(["embed", str(data), "--backbone", TINY, "--image-size", "32",
                 "--out", str(tmp_path / "outs" / "e.safetensors")]) == 0
    assert any(p.is_file() for p in cache.rglob("*")), "the run should have written the feature cache"
    assert {str(r): _wrong(r) for r in (run, tmp_path / "outs", cache)} == {str(r): {} for r in
                                                                          (run, tmp_path / "outs", cache)}


def test_exports_follow_the_umask(tmp_path, umask_022):
    """timm's and hf's writers (save_file, save_pretrained) and the staging folder (mkdtemp) make
    private files; an export is a folder to hand on, so it follows the umask like a run."""
    from conftest import write_image_folder
    data = write_image_folder(tmp_path / "images", per_class=6)
    run = tmp_path / "run"
    assert main(["train", str(data), "--backbone", TINY, "--image-size", "32", "--batch-size", "8",
                 "--steps", "1", "--strategy", "full", "--val-fraction", "0", "--out", str(run), "--quiet"]) == 0
    out = tmp_path / "exported"
    assert main(["export", str(run), "--format", "timm", "--out", str(out)]) == 0
    assert (out / "model.safetensors").is_file()
    assert _wrong(out) == {}
