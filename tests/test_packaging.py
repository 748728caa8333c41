"""Packaging hygiene: recipes in the wheel and usable by name, outputs that respect the umask, and the
library versions recorded in every run."""

import json
import os
import shutil
import stat
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

from transferkit.cli import main
from transferkit.store import checkpoint as ck

REPO = Path(__file__).resolve().parents[1]
TINY = "timm:test_resnet@random"


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_atomic_writes_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        ck.atomic_write_text(tmp_path / "a.txt", "x")
        ck.atomic_replace_dir(lambda d: (d / "f.json").write_text("{}"), tmp_path / "last")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "a.txt") == 0o640
    assert _mode(tmp_path / "last") == 0o750
    assert _mode(tmp_path / "last" / "checksums.json") == 0o640


def test_run_by_recipe_name_readable_by_colleagues_with_versions(tmp_path, image_folder, umask_022, capsys):
    out = tmp_path / "run"
    rc = main(["train", str(image_folder), "--config", "linear_probe", "--backbone", TINY,
               "--image-size", "32", "--out", str(out), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    cfg = (out / "config.yaml").read_text()
    assert "strategy: linear_probe" in cfg
    files = [p for p in out.rglob("*")]
    assert len(files) >= 8
    for p in files:
        assert _mode(p) == (0o755 if p.is_dir() else 0o644), f"{p} is {oct(_mode(p))}"
    env = json.loads((out / "environment.json").read_text())
    import accelerate
    import timm
    import torch
    import transformers
    import transferkit
    assert env["python"] == sys.version.split()[0]
    assert env["libraries"]["torch"] == metadata.version("torch") and torch.__version__.startswith(env["libraries"]["torch"].split("+")[0])
    assert env["libraries"]["timm"] == timm.__version__
    assert env["libraries"]["transformers"] == transformers.__version__
    assert env["libraries"]["accelerate"] == accelerate.__version__
    assert env["libraries"]["transferkit"] == transferkit.__version__
    from transferkit.allocator import allocator_state
    assert env["allocator"] == allocator_state() != "library defaults (not set by transferkit in this process)"


def test_wheel_ships_the_recipes(tmp_path):
    # build from a copy: setuptools writes build/ and *.egg-info beside the sources
    src = tmp_path / "src"
    shutil.copytree(REPO / "transferkit", src / "transferkit",
                    ignore=shutil.ignore_patterns("__pycache__", "demo_data"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(tmp_path), str(src)], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PIP_NO_INDEX": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    wheel = next(tmp_path.glob("transferkit-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {Path(n).stem for n in names if n.startswith("transferkit/recipes/") and n.endswith(".yaml")}
    assert {"two_phase", "linear_probe", "full", "text_lora"} <= shipped
    assert "transferkit/ship/page.html" in names  # the page `transferkit serve` shows at /
