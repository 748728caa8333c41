"""The feature cache: cached rows equal fresh ones, a changed file is recomputed, a half-written
shard is never read, random preprocessing is never cached, and `train`/`cache` use it end to end."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import COLOURS, PER_CLASS

from transferkit.cli import main
from transferkit.data import read_items
from transferkit.data import feature_cache as fc
from transferkit.infer.features import features_by_view, frozen_features
from transferkit.models import load_backbone

TINY = "timm:test_resnet@random"
N = len(COLOURS) * PER_CLASS


@pytest.fixture
def setup(image_folder):
    torch.manual_seed(0)
    bb = load_backbone(TINY)
    items, _ = read_items(image_folder, "image")
    return bb, items, sorted(COLOURS)


class _Counter:
    """Counts the images that go through the backbone."""

    def __init__(self, module):
        self.n = 0
        module.register_forward_hook(lambda m, inp, out: setattr(self, "n", self.n + out.shape[0]))


def _feats(bb, items, classes, cache, flip=False):
    return frozen_features(bb, items, classes, image_size=32, batch_size=8, flip=flip, cache=cache)


def test_cached_features_equal_fresh_ones(setup, tmp_path):
    bb, items, classes = setup
    fresh, labels, fresh_flip = _feats(bb, items, classes, None, flip=True)
    cache = fc.FeatureCache(tmp_path / "c")
    count = _Counter(bb.module)
    cold, cold_y, cold_flip = _feats(bb, items, classes, cache, flip=True)
    assert count.n == 2 * N  # plain and mirrored, once each
    warm, warm_y, warm_flip = _feats(bb, items, classes, cache, flip=True)
    assert count.n == 2 * N  # nothing went through the backbone the second time
    assert cache.stats.hits == 2 * N
    torch.testing.assert_close(cold, fresh, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cold_flip, fresh_flip, atol=1e-5, rtol=1e-5)
    assert torch.equal(warm, cold) and torch.equal(warm_flip, cold_flip)
    assert torch.equal(warm_y, labels) and torch.equal(cold_y, labels)
    assert not torch.allclose(fresh, fresh_flip)  # the views are really different features
    # a subset in another order is served from the cache, row for row
    sub = items[::-3]
    part, _, _ = _feats(bb, sub, classes, cache)
    assert count.n == 2 * N
    assert torch.equal(part, cold[list(range(N))[::-3]])


def test_changed_file_is_computed_again(setup, tmp_path):
    bb, items, classes = setup
    cache = fc.FeatureCache(tmp_path / "c")
    before, _, _ = _feats(bb, items, classes, cache)
    count = _Counter(bb.module)
    target = Path(items[5].x)
    # new pixels, same size on disk is not required: the key holds size and mtime
    from PIL import Image
    Image.fromarray(np.full((32, 32, 3), 255, np.uint8)).save(target)
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    after, _, _ = _feats(bb, items, classes, cache)
    assert count.n == 1  # only the changed image
    fresh, _, _ = _feats(bb, items, classes, None)
    torch.testing.assert_close(after, fresh, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(after[5], before[5], atol=1e-3)
    others = [i for i in range(N) if i != 5]
    assert torch.equal(after[others], before[others])
    # touching alone (same bytes, new mtime) is a new key too
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    _feats(bb, items, classes, cache)
    assert count.n == 1 + 1 + N  # the fresh pass above counted N, the touched file 1


def test_interrupted_write_is_never_read(setup, tmp_path, monkeypatch):
    bb, items, classes = setup
    fresh, _, _ = _feats(bb, items, classes, None)
    root = tmp_path / "c"
    real_save = np.save

    def crash_half_way(f, arr, *a, **k):
        import io
        buf = io.BytesIO()
        real_save(buf, arr)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])  # half the file, then the process dies
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "save", crash_half_way)
    with pytest.raises(KeyboardInterrupt):
        _feats(bb, items, classes, fc.FeatureCache(root))
    monkeypatch.setattr(np, "save", real_save)
    assert not list(root.rglob("*.npy"))  # the temporary file was removed, nothing was renamed in

    # a shard whose record was never committed (killed between the two renames) is not read
    real_write = fc._atomic_write

    def die_before_record(path, write):
        if path.suffix == ".json" and path.name != "meta.json":
            raise KeyboardInterrupt
        real_write(path, write)

    monkeypatch.setattr(fc, "_atomic_write", die_before_record)
    with pytest.raises(KeyboardInterrupt):
        _feats(bb, items, classes, fc.FeatureCache(root))
    monkeypatch.setattr(fc, "_atomic_write", real_write)
    assert len(list(root.rglob("*.npy"))) == 1 and not [p for p in root.rglob("*.json") if p.name != "meta.json"]
    cache = fc.FeatureCache(root)
    got, _, _ = _feats(bb, items, classes, cache)
    assert cache.stats.hits == 0 and cache.stats.misses == N
    torch.testing.assert_close(got, fresh, atol=1e-5, rtol=1e-5)

    # a committed shard truncated afterwards (a damaged disk) is ignored and recomputed
    committed = [p.with_suffix(".npy") for p in root.rglob("*.json") if p.name != "meta.json"]
    assert len(committed) == 1
    data = committed[0].read_bytes()
    committed[0].write_bytes(data[: len(data) - 100])
    cache = fc.FeatureCache(root)
    got, _, _ = _feats(bb, items, classes, cache)
    assert cache.stats.hits == 0 and cache.stats.ignored_shards >= 1
    torch.testing.assert_close(got, fresh, atol=1e-5, rtol=1e-5)


def test_random_preprocessing_is_not_cached(setup, tmp_path):
    from torch.utils.data import DataLoader

    from transferkit.data import ImageDataset, build_transforms
    bb, items, classes = setup
    train_tf, eval_tf = build_transforms(bb.preprocess, 32, augment=True)
    assert fc.preprocess_key(ImageDataset(items, {}, train_tf)) is None
    assert fc.preprocess_key(ImageDataset(items, {}, eval_tf))["kind"] == "image"
    cache = fc.FeatureCache(tmp_path / "c")
    loader = DataLoader(ImageDataset(items, {c: i for i, c in enumerate(classes)}, train_tf), batch_size=8)
    features_by_view(bb.module, loader, "cpu", cache=cache)
    assert not (tmp_path / "c").exists()


def test_weights_and_image_size_are_part_of_the_key(setup, tmp_path):
    bb, items, classes = setup
    cache = fc.FeatureCache(tmp_path / "c")
    a, _, _ = _feats(bb, items, classes, cache)
    b, _, _ = frozen_features(bb, items, classes, image_size=48, batch_size=8, cache=cache)
    with torch.no_grad():
        next(bb.module.parameters()).add_(0.5)
    c, _, _ = _feats(bb, items, classes, cache)
    assert cache.stats.hits == 0  # three different feature spaces
    assert len(cache.info()["spaces"]) == 3
    assert not torch.allclose(a, b) and not torch.allclose(a, c)


def _train(data, out, *extra):
    return main(["train", str(data), "--backbone", TINY, "--image-size", "32", "--batch-size", "8",
                 "--strategy", "linear_probe", "--out", str(out), "--quiet", *extra])


def test_train_and_cache_command_end_to_end(image_folder, tmp_path, capsys, monkeypatch):
    cache_dir = tmp_path / "cache"
    monkeypatch.setenv("TRANSFERKIT_CACHE", str(cache_dir))
    assert _train(image_folder, tmp_path / "r1") == 0
    shards = sorted(cache_dir.rglob("*.npy"))
    assert len(shards) >= 2  # the plain and the mirrored view of the head fit's images
    assert _train(image_folder, tmp_path / "r2") == 0
    assert sorted(cache_dir.rglob("*.npy")) == shards  # the second run only read
    monkeypatch.setenv("TRANSFERKIT_CACHE", str(tmp_path / "unused"))
    monkeypatch.setenv("TRANSFERKIT_NO_CACHE", "1")
    assert _train(image_folder, tmp_path / "r3") == 0
    assert not (tmp_path / "unused").exists()
    m = [json.loads((tmp_path / r / "metrics.json").read_text()) for r in ("r1", "r2", "r3")]
    assert m[0]["accuracy"] == m[1]["accuracy"] == m[2]["accuracy"]
    assert m[0]["nll"] == pytest.approx(m[2]["nll"], abs=1e-4)
    capsys.readouterr()

    assert main(["cache", "info", "--cache-dir", str(cache_dir), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    rows = sorted(s["rows"] for s in info["spaces"])
    assert len(rows) == 2 and rows[0] >= m[0]["n_train"]  # two views, every training image in each
    foreign = cache_dir / "notes.txt"
    foreign.write_text("mine")
    assert main(["cache", "clear", "--cache-dir", str(cache_dir)]) == 0
    assert not (cache_dir / "features").exists() and foreign.read_text() == "mine"


def test_cache_flags_of_train_and_compare(image_folder, tmp_path, monkeypatch):
    """--no-cache writes nothing into --cache-dir; without it the run's features land there (and not
    in $TRANSFERKIT_CACHE); compare takes the same flags."""
    env = tmp_path / "env_cache"
    monkeypatch.setenv("TRANSFERKIT_CACHE", str(env))
    monkeypatch.delenv("TRANSFERKIT_NO_CACHE", raising=False)
    mine = tmp_path / "mine"
    assert _train(image_folder, tmp_path / "r1", "--no-cache", "--cache-dir", str(mine)) == 0
    assert not mine.exists() or not list(mine.rglob("*"))
    assert _train(image_folder, tmp_path / "r2", "--cache-dir", str(mine)) == 0
    assert len(list(mine.rglob("*.npy"))) >= 2 and not env.exists()
    m1, m2 = (json.loads((tmp_path / r / "metrics.json").read_text()) for r in ("r1", "r2"))
    assert m1["accuracy"] == m2["accuracy"]

    cmp_cache = tmp_path / "cmp_cache"
    args = ["compare", str(image_folder), "--backbone", TINY, "--image-size", "32", "--batch-size", "8",
            "--strategies", "linear_probe", "--shots", "all", "--seeds", "1", "--quiet",
            "--cache-dir", str(cmp_cache)]
    assert main([*args, "--no-cache", "--out", str(tmp_path / "c1")]) == 0
    assert not cmp_cache.exists() or not list(cmp_cache.rglob("*"))
    assert main([*args, "--out", str(tmp_path / "c2")]) == 0
    assert list(cmp_cache.rglob("*.npy")) and not env.exists()
