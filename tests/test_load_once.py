"""A run reads its data once and builds each model once (issue 22): `train` loads the Task once and
hands it to every choice and to the run; `--strategy auto` builds each fold's model once (the fold
is scored with the model it trained; the model built to check the configuration before anything is
written is the first fold's), and the configuration is frozen: what a run settles makes a new one."""

import dataclasses
import json

import numpy as np
import pytest
from conftest import write_image_folder

TINY = "timm:test_resnet@random"


@pytest.fixture
def counts(monkeypatch):
    import transferkit.data as data
    import transferkit.engine.build as build
    seen = {"loads": 0, "builds": 0}
    real_load, real_backbone = data.load_task, build.load_backbone

    def load_task(*a, **k):
        seen["loads"] += 1
        return real_load(*a, **k)

    def load_backbone(*a, **k):  # every model build loads its backbone once (engine.build.build_model)
        seen["builds"] += 1
        return real_backbone(*a, **k)
    monkeypatch.setattr(data, "load_task", load_task)
    monkeypatch.setattr(build, "load_backbone", load_backbone)
    return seen


def _train(cfg):
    from transferkit.train import train
    before = cfg.to_dict()
    result = train(cfg, quiet=True)
    assert cfg.to_dict() == before  # the config given is the config after the run
    return result


def test_auto_loads_once_and_builds_each_fold_model_once(tmp_path, monkeypatch, counts):
    from transferkit.choose.auto import FT_FOLDS
    from transferkit.config import make_config
    monkeypatch.setattr("transferkit.models.parse_source", lambda s: ("timm", "test_resnet", True))
    data = write_image_folder(tmp_path / "images")
    cfg = make_config(None, data=str(data), backbone=TINY, out=str(tmp_path / "run"), shots=4,
                      image_size=32, batch_size=8, steps=3)
    result = _train(cfg)
    choice = json.loads((tmp_path / "run" / "auto" / "choice.json").read_text())
    assert choice["finetune_cv"]["folds"] == FT_FOLDS and choice["multi_probe_cv"] is not None
    candidates = 2  # LP-FT (its probe included) and the multi-stage probe, each on every fold
    assert counts == {"loads": 1, "builds": FT_FOLDS * candidates + 1}  # + the final run
    assert result.metrics["n_test"] > 0

    # with a validation split auto goes straight to LP-FT: the model built to check is the one trained
    counts.update(loads=0, builds=0)
    _train(dataclasses.replace(cfg, out=str(tmp_path / "val"), shots=None, val_fraction=0.2))
    assert counts == {"loads": 1, "builds": 1}


def test_config_is_frozen_and_arrays_are_read_once(tmp_path, counts):
    from transferkit.config import make_config
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (tmp_path / "bands" / cls).mkdir(parents=True)
        for i in range(6):
            np.save(tmp_path / "bands" / cls / f"{i}.npy", rng.normal(size=(16, 16, 4)).astype(np.float32))
    cfg = make_config(None, data=str(tmp_path / "bands"), backbone=TINY, out=str(tmp_path / "run"),
                      strategy="linear_probe", image_size=32)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.in_chans = 4
    result = _train(cfg)
    assert counts == {"loads": 1, "builds": 1}
    from transferkit.config import read_config
    saved = read_config(result.run_dir / "config.yaml")  # settled from the data once, and recorded
    assert saved.in_chans == 4 and len(saved.chan_mean) == 4 and cfg.in_chans is None
