"""benchmarks/datasets.py: the Animal-MNIST set is read from its pip package's files, without
duplicates across the written folder, and its pickles may hold arrays only."""

import gzip
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import datasets as bench  # noqa: E402


def _fake_package(root: Path, images, labels) -> None:
    """A stand-in for the installed animal_mnist package: its two gzipped pickles."""
    pkg = root / "animal_mnist"
    data = pkg / "data" / "Animal_MNIST"
    data.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    with gzip.open(data / "animal_data_version_3.gz", "wb") as f:
        pickle.dump(images, f)
    with gzip.open(data / "animal_label_version_3.gz", "wb") as f:
        pickle.dump(labels, f)


@pytest.fixture
def fake_site(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, "animal_mnist", raising=False)
    return site


def test_animals_drops_duplicates_and_caps_per_class(fake_site, tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(40, 28, 28), dtype=np.uint8)
    labels = np.repeat(np.arange(10), 4)
    images[1] = images[0]  # an exact copy within class 0
    _fake_package(fake_site, images, labels)
    out = bench.animals_folder(tmp_path / "out", per_class=3, size=32)
    assert out is not None and (out / ".complete").is_file()
    counts = {d.name: len(list(d.glob("*.png"))) for d in out.iterdir() if d.is_dir()}
    assert counts == {name: 3 for name in bench.ANIMALS}  # at most per_class
    again = bench.animals_folder(tmp_path / "all", per_class=4, size=32)
    bears = {int(p.stem) for p in (again / "bear").glob("*.png")}
    assert bears == {0, 2, 3}  # the copy (index 1) is not written
    assert len(list((again / "zebra").glob("*.png"))) == 4


def test_animals_refuses_a_pickle_that_is_not_an_array(fake_site, tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("ran",))

    _fake_package(fake_site, Payload(), np.zeros(1, dtype=np.int64))
    with pytest.raises(pickle.UnpicklingError, match="not a numpy array"):
        bench.animals_folder(tmp_path / "out")


def test_animals_without_the_package_is_skipped_with_a_message(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    assert bench.animals_folder(tmp_path / "out") is None
    assert "pip install --no-deps animal-mnist" in capsys.readouterr().err
