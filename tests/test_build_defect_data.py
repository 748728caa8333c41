"""scripts/build_defect_data.py: defects change exactly the pixels their mask marks, and a build writes the
MVTec AD layout that `train --task anomaly` reads (that part needs Debian's openarena-081-textures)."""

import importlib.util
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "build_defect_data.py"


@pytest.fixture(scope="module")
def builder():
    spec = importlib.util.spec_from_file_location("build_defect_data", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _texture(seed: int, size: int = 96) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(60, 200, (size, size, 3), dtype=np.uint8))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scratch_changes_exactly_its_mask(builder, seed):
    base = _texture(seed)
    out, mask = builder.add_scratch(base, random.Random(seed))
    changed = (np.asarray(out) != np.asarray(base)).any(-1)
    marked = mask > 0
    assert set(np.unique(mask)) <= {0, 255} and marked.sum() > 20
    assert not (changed & ~marked).any()                   # nothing outside the mask moved
    assert changed[marked].mean() > 0.95                   # the mask is the scratch (bar pixels of equal colour)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_foreign_blob_changes_exactly_its_mask(builder, seed):
    base, foreign = _texture(seed), Image.new("RGB", (128, 128), (10, 250, 10))
    out, mask = builder.add_foreign(base, foreign, random.Random(seed))
    changed = (np.asarray(out) != np.asarray(base)).any(-1)
    marked = mask > 0
    assert set(np.unique(mask)) <= {0, 255} and marked.sum() > 20
    assert (changed == marked).all()
    assert (np.asarray(out)[marked] == (10, 250, 10)).all()


@pytest.mark.skipif(not Path("/usr/share/games/openarena/baseoa/pak4-textures.pk3").is_file(),
                    reason="needs the Debian package openarena-081-textures")
def test_build_writes_the_mvtec_layout_seeded(builder, tmp_path):
    args = ["--textures", "sand", "--train", "2", "--test-good", "1", "--test-defect", "2", "--size", "48"]
    assert builder.main([str(tmp_path / "a"), *args]) == 0
    assert builder.main([str(tmp_path / "b"), *args]) == 0
    root = tmp_path / "a" / "sand"
    assert len(list((root / "train/good").glob("*.png"))) == 2
    assert len(list((root / "test/good").glob("*.png"))) == 1
    for defect in builder.DEFECTS:
        images = sorted((root / "test" / defect).glob("*.png"))
        assert len(images) == 2
        for img in images:
            mask = np.asarray(Image.open(root / "ground_truth" / defect / f"{img.stem}_mask.png"))
            assert mask.shape == (48, 48) and mask.max() == 255
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    assert builder.main([str(tmp_path / "a"), *args]) == 2          # never writes into a non-empty folder
