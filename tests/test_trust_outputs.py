"""transferkit deletes or replaces only what it wrote, and text from the data (class names, file
names, labels) stays data in plots and in CSV files (issue 19, items 5 and 8)."""

import json

import numpy as np
import pytest

from transferkit.cli import main
from transferkit.data import feature_cache as fc


def _store(cache: fc.FeatureCache, view: str = "plain") -> str:
    ns, parts = fc.namespace("w" * 8, "Mod", {"kind": "text", "max_length": 8}, view, "cpu")
    cache.store(ns, parts, ["text:a", "text:b"], np.ones((2, 3), dtype=np.float32))
    return ns


def test_cache_clear_leaves_a_features_folder_transferkit_never_wrote(tmp_path, capsys):
    mine = tmp_path / "project" / "features"
    (mine / "sub").mkdir(parents=True)
    (mine / "notes.txt").write_text("mine")
    (mine / "sub" / "x.npy").write_bytes(b"not ours")
    fake = mine / ("0" * 24)  # our naming, but its meta.json does not hash to its name
    fake.mkdir()
    (fake / "meta.json").write_text(json.dumps({"format": 1, "transferkit": "0"}))
    before = sorted(p.relative_to(mine) for p in mine.rglob("*"))
    assert main(["cache", "clear", "--cache-dir", str(tmp_path / "project")]) == 0
    out = capsys.readouterr().out
    assert sorted(p.relative_to(mine) for p in mine.rglob("*")) == before
    assert "cleared 0.0 MB" in out and "notes.txt" in out and "sub" in out and "0" * 24 in out


def test_cache_clear_removes_only_its_own_feature_spaces(tmp_path, capsys):
    root = tmp_path / "cache"
    cache = fc.FeatureCache(root)
    ours = _store(cache)
    older = _store(cache, "flip")
    assert (root / "features" / fc.MARKER).is_file()
    (root / "features" / "keep.txt").write_text("mine")
    # a file of the user's inside a feature space makes that folder not ours as a whole
    (root / "features" / older / "README").write_text("mine")
    assert main(["cache", "clear", "--cache-dir", str(root), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["removed"] == 1 and r["freed_bytes"] > 0
    assert sorted(r["kept"]) == sorted([str(root / "features" / older), str(root / "features" / "keep.txt")])
    assert not (root / "features" / ours).exists()
    assert (root / "features" / older / "README").read_text() == "mine"
    assert (root / "features" / "keep.txt").read_text() == "mine"


def test_cache_clear_recognises_entries_of_older_versions_without_the_marker(tmp_path, capsys):
    root = tmp_path / "cache"
    cache = fc.FeatureCache(root)
    _store(cache)
    _store(cache, "flip")
    (root / "features" / fc.MARKER).unlink()  # what a transferkit before the marker left
    (root / "notes.txt").write_text("mine")
    assert main(["cache", "clear", "--cache-dir", str(root)]) == 0
    assert "2 feature spaces" in capsys.readouterr().out
    assert not (root / "features").exists() and (root / "notes.txt").read_text() == "mine"
    # and the cache still works afterwards
    _store(cache)
    assert cache.info()["spaces"][0]["rows"] == 2
