"""Test-time augmentation with augmented views (`--tta-views`, infer/tta.py): the default is
recorded in the run, the probabilities are the plain average the docs promise, an image's views
do not depend on where it sits in a batch, and evaluate/predict score as the training run did."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from transferkit.cli import main
from transferkit.infer.loaders import eval_loader, make_dataset
from transferkit.infer.predict import predict_probs
from transferkit.engine.run import evaluate_run, load_run, predict_run
from transferkit.infer.tta import view_tensor

TINY = "timm:test_resnet@random"


def _train(data: Path, out: Path, *extra: str) -> Path:
    assert main(["train", str(data), "--backbone", TINY, "--image-size", "32", "--batch-size", "8",
                 "--steps", "2", "--strategy", "full", "--out", str(out), "--quiet", *extra]) == 0
    return out


def _views(run: Path):
    return yaml.safe_load((run / "config.yaml").read_text())["tta_views"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from conftest import write_image_folder
    root = tmp_path_factory.mktemp("tta")
    return _train(write_image_folder(root / "images"), root / "run")


def test_default_is_recorded_and_flags_win(run, image_folder):
    from transferkit.config import make_config
    from transferkit.data import read_items
    from transferkit.infer.tta import resolve_views
    assert _views(run) == 4  # images at <= 20 labels per class, recorded for evaluate/predict
    items = read_items(image_folder, "image")[0]
    views = lambda **kw: resolve_views(make_config(None, data=str(image_folder), **kw), items, "image")  # noqa: E731
    assert views() == 4
    assert views(tta_views=2) == 2
    assert views(tta=False) == 0 and views(tta=False, tta_views=2) == 0
    assert views(augment=False) == 0  # no few-label augmentation, no augmented views
    assert resolve_views(make_config(None, data="x.csv"), items, "text") == 0
    many = [e for e in items for _ in range(3)]  # 36 per class: not few labels
    assert resolve_views(make_config(None), many, "image") == 0


def test_probabilities_are_the_average_of_the_views(run):
    model, cfg = load_run(run)
    from transferkit.data import read_items
    items = read_items(cfg.data, "image")[0][:5]
    ds = make_dataset(model, items, train=False, augment=False, image_size=cfg.image_size, seed=0)
    got, _ = predict_probs(model, eval_loader(model, ds, 4), "cpu", tta=True, views=3)
    plain, _ = predict_probs(model, eval_loader(model, ds, 4), "cpu", tta=True, views=0)
    assert np.abs(got - plain).max() > 1e-4  # the views are not a no-op
    model.eval()
    with torch.no_grad():
        x = torch.stack([ds[i][0] for i in range(len(items))])
        parts = [model(x).softmax(-1), model(torch.flip(x, dims=[3])).softmax(-1)]
        for j in range(3):
            v = torch.stack([view_tensor(ds._image(i), j, ds.view_transform) for i in range(len(items))])
            parts.append(model(v).softmax(-1))
    np.testing.assert_allclose(got, torch.stack(parts).mean(0).numpy(), atol=1e-5)


def test_an_image_gets_the_same_views_alone_or_in_a_batch(run, image_folder):
    files = sorted(str(p) for p in Path(image_folder).rglob("*.png"))[:4]
    together = predict_run(run, files, top_k=3)
    alone = predict_run(run, [files[2]], top_k=3)[0]
    assert together[2]["top"] == alone["top"]


def test_evaluate_scores_the_test_split_as_training_did(run):
    metrics = json.loads((run / "metrics.json").read_text())
    import csv as csvlib
    with open(run / "splits.csv") as f:
        test = [r for r in csvlib.DictReader(f) if r["split"] == "test"]
    csv = run.parent / "test_items.csv"
    data = Path(yaml.safe_load((run / "config.yaml").read_text())["data"])
    csv.write_text("path,label\n" + "".join(f"{data / r['item']},{r['label']}\n" for r in test))
    again = evaluate_run(run, csv)
    assert again["accuracy"] == pytest.approx(metrics["accuracy"], abs=1e-9)
    assert again["nll"] == pytest.approx(metrics["nll"], abs=1e-5)


def test_heads_that_never_saw_an_augmented_image_get_no_augmented_copies(image_folder, tmp_path):
    # the multi-stage probe fits on plain and mirrored features only: augmented test copies would be
    # inputs unlike any it was fitted on (it lost 3 points with them on the digits benchmark)
    run = tmp_path / "mp"
    assert main(["train", str(image_folder), "--backbone", TINY, "--image-size", "32", "--strategy",
                 "multi_probe", "--out", str(run), "--quiet"]) == 0
    assert _views(run) == 0
    assert _views(_train(image_folder, tmp_path / "mp2", "--strategy", "multi_probe", "--tta-views", "3")) == 3
