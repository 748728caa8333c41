"""Detection: the three data formats read back to the same items, bad annotations are refused by
name, mAP on hand-made boxes, a tiny detector trains, predictions are valid COCO results."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transferkit.data.splits import DataError
from transferkit.detection.coco import coco_document, write_coco
from transferkit.detection.formats import DetectionItem, DetectionSet
from transferkit.detection.read import looks_like, read_detection
from transferkit.detection.voc import write_voc
from transferkit.detection.yolo import write_yolo

SIZE = 64
SQUARES = {"red": (220, 40, 40), "blue": (40, 60, 220)}


def make_images(folder: Path, n: int = 8, seed: int = 0) -> DetectionSet:
    """n noisy 64x64 grey images with one or two coloured squares each; the boxes are exact."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    classes = list(SQUARES)
    items = []
    for i in range(n):
        px = np.clip(rng.normal(128, 20, size=(SIZE, SIZE, 3)), 0, 255)
        boxes, labels = [], []
        for k in range(1 + i % 2):
            side = int(rng.integers(14, 24))
            x = int(rng.integers(0, SIZE - side)) if k == 0 else int(rng.integers(0, 8))
            y = int(rng.integers(0, SIZE // 2 - side // 2)) if k == 0 else SIZE - side
            c = int(rng.integers(0, len(classes)))
            px[y:y + side, x:x + side] = SQUARES[classes[c]]
            boxes.append([float(x), float(y), float(x + side), float(y + side)])
            labels.append(c)
        path = folder / f"img_{i:02d}.png"
        Image.fromarray(px.astype(np.uint8), "RGB").save(path)
        items.append(DetectionItem(str(path), SIZE, SIZE, boxes, labels, image_id=i + 1))
    return DetectionSet(items, classes, "made")


def coco_set(root: Path, n: int = 8) -> DetectionSet:
    ds = make_images(root / "images", n)
    write_coco(ds, root)
    return ds


def yolo_set(root: Path, n: int = 8) -> DetectionSet:
    ds = make_images(root / "images", n)
    write_yolo(ds, root)
    return ds


def voc_set(root: Path, n: int = 8) -> DetectionSet:
    ds = make_images(root / "JPEGImages", n)
    write_voc(ds, root)
    return ds


def _same(a: DetectionSet, b: DetectionSet) -> None:
    assert b.classes == a.classes
    assert [Path(i.image).name for i in b.items] == [Path(i.image).name for i in a.items]
    for x, y in zip(a.items, b.items):
        assert (y.width, y.height) == (x.width, x.height)
        assert y.labels == x.labels
        np.testing.assert_allclose(np.array(y.boxes), np.array(x.boxes), atol=1e-5)


# ------------------------------------------------------------------------------------ formats

@pytest.mark.parametrize("fmt,make", [("coco", coco_set), ("yolo", yolo_set), ("voc", voc_set)])
def test_each_format_reads_back_the_items_it_was_written_from(tmp_path, fmt, make):
    made = make(tmp_path / fmt)
    assert looks_like(tmp_path / fmt) == fmt
    got = read_detection(tmp_path / fmt)
    assert got.format == fmt
    _same(made, got)


def test_coco_keeps_its_own_category_ids_and_an_explicit_annotations_file(tmp_path):
    made = make_images(tmp_path / "d" / "images", 4)
    made.category_ids = [7, 3]          # 'red' is id 7, 'blue' id 3: classes come out in id order
    doc = coco_document(made, tmp_path / "d" / "images")
    (tmp_path / "elsewhere.json").write_text(json.dumps(doc))
    got = read_detection(tmp_path / "d", annotations=tmp_path / "elsewhere.json")
    assert got.classes == ["blue", "red"] and got.category_ids == [3, 7]
    assert [[got.classes[c] for c in i.labels] for i in got.items] == \
           [[made.classes[c] for c in i.labels] for i in made.items]


def test_a_folder_in_no_known_format_is_refused_naming_the_three_layouts(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(DataError, match="COCO .*YOLO .*Pascal VOC"):
        read_detection(tmp_path / "x")


def _coco_doc(root):
    return json.loads((root / "annotations.json").read_text())


def _rewrite(root, doc):
    (root / "annotations.json").write_text(json.dumps(doc))


def test_coco_box_outside_the_image_is_an_error_naming_file_and_annotation(tmp_path):
    root = tmp_path / "c"
    coco_set(root, 3)
    doc = _coco_doc(root)
    doc["annotations"][1]["bbox"] = [50, 10, 20, 10]        # x2 = 70 > 64 + 1
    _rewrite(root, doc)
    with pytest.raises(DataError, match=r"annotations\.json: annotations\[1\].*outside the 64x64 image"):
        read_detection(root)


def test_a_box_within_one_pixel_of_the_edge_is_clipped_not_refused(tmp_path):
    root = tmp_path / "c"
    coco_set(root, 3)
    doc = _coco_doc(root)
    doc["annotations"][0]["bbox"] = [-0.5, 2, 65, 10]       # 0.5 px beyond left and right
    _rewrite(root, doc)
    assert read_detection(root).items[0].boxes[0] == [0.0, 2.0, 64.0, 12.0]


def test_coco_zero_size_box_unknown_category_and_missing_image_are_errors(tmp_path):
    root = tmp_path / "c"
    coco_set(root, 3)
    good = _coco_doc(root)
    doc = json.loads(json.dumps(good))
    doc["annotations"][0]["bbox"] = [5, 5, 0, 8]
    _rewrite(root, doc)
    with pytest.raises(DataError, match=r"annotations\.json: annotations\[0\].*zero or negative width"):
        read_detection(root)
    doc = json.loads(json.dumps(good))
    doc["annotations"][0]["category_id"] = 99
    _rewrite(root, doc)
    with pytest.raises(DataError, match=r"annotations\.json: annotations\[0\].*category_id 99"):
        read_detection(root)
    _rewrite(root, good)
    (root / "images" / "img_01.png").unlink()
    with pytest.raises(DataError, match=r"annotations\.json: images\[1\].*img_01\.png not found"):
        read_detection(root)


def test_empty_coco_and_voc_annotation_files_are_errors_naming_the_file(tmp_path):
    root = tmp_path / "c"
    coco_set(root, 2)
    (root / "annotations.json").write_text("")
    with pytest.raises(DataError, match=r"annotations\.json is empty"):
        read_detection(root)
    root = tmp_path / "v"
    voc_set(root, 2)
    (root / "Annotations" / "img_01.xml").write_text("  \n")
    with pytest.raises(DataError, match=r"img_01\.xml is empty"):
        read_detection(root)


def test_yolo_class_beyond_names_and_bad_line_name_the_label_file_and_line(tmp_path):
    root = tmp_path / "y"
    yolo_set(root, 2)
    lab = root / "labels" / "img_01.txt"
    lines = lab.read_text().splitlines()
    lab.write_text(lines[0] + "\n" + "2 0.5 0.5 0.2 0.2\n")
    with pytest.raises(DataError, match=r"img_01\.txt:2: class index 2 but .*data\.yaml names 2 classes"):
        read_detection(root)
    lab.write_text("0 0.5 0.5 0.0 0.2\n")
    with pytest.raises(DataError, match=r"img_01\.txt:1: .*zero or negative width"):
        read_detection(root)
    lab.write_text("0 0.9 0.5 0.4 0.2\n")                  # right edge at 1.1 x 64 = 70 px
    with pytest.raises(DataError, match=r"img_01\.txt:1: .*outside the 64x64 image"):
        read_detection(root)
    lab.write_text("0 32 32 10 10\n")
    with pytest.raises(DataError, match=r"img_01\.txt:1: .*look like pixels"):
        read_detection(root)


def test_yolo_empty_label_file_is_a_background_image_but_no_boxes_at_all_is_an_error(tmp_path):
    root = tmp_path / "y"
    yolo_set(root, 3)
    (root / "labels" / "img_00.txt").write_text("")
    ds = read_detection(root)
    assert ds.items[0].boxes == [] and len(ds.items) == 3
    assert any("background" in n for n in ds.notes)
    for f in (root / "labels").glob("*.txt"):
        f.write_text("")
    with pytest.raises(DataError, match="not one box"):
        read_detection(root)


def test_voc_dtd_and_entities_are_refused_and_unknown_image_named(tmp_path):
    root = tmp_path / "v"
    voc_set(root, 2)
    f = root / "Annotations" / "img_00.xml"
    body = f.read_text()
    f.write_text('<?xml version="1.0"?>\n<!DOCTYPE annotation [<!ENTITY lol "lol">]>\n'
                 + body.split("?>", 1)[-1])
    with pytest.raises(DataError, match=r"img_00\.xml declares a DTD or entities"):
        read_detection(root)
    f.write_text(body.replace("<xmax>", "<xmax>9").replace("</xmax>", "</xmax>"))
    with pytest.raises(DataError, match=r"img_00\.xml: object 1 .*outside the 64x64 image"):
        read_detection(root)
    f.write_text(body)
    (root / "JPEGImages" / "img_01.png").unlink()
    with pytest.raises(DataError, match=r"img_01\.xml: image .*img_01\.png not found"):
        read_detection(root)


# ------------------------------------------------------------------------------------ metrics

def _pred(boxes, labels, scores=None):
    import torch
    b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    return {"boxes": b, "labels": torch.tensor(labels, dtype=torch.int64),
            "scores": torch.tensor(scores if scores is not None else [0.9] * len(labels), dtype=torch.float32)}


def test_a_perfect_prediction_scores_map_one_for_every_class():
    from transferkit.detection.metrics import detection_metrics
    items = [DetectionItem("a.png", 200, 200, [[10, 10, 60, 60], [100, 120, 180, 190]], [0, 1], 1),
             DetectionItem("b.png", 200, 200, [[30, 40, 90, 80]], [1], 2)]
    preds = [_pred(it.boxes, it.labels) for it in items]
    m = detection_metrics(preds, items, ["cat", "dog", "owl"])
    assert (m["map"], m["map_50"], m["map_75"]) == (1.0, 1.0, 1.0)
    assert m["per_class"] == {"cat": 1.0, "dog": 1.0, "owl": None}     # owl: no box, no AP


def test_a_box_at_iou_072_counts_at_thresholds_050_to_070_only():
    from transferkit.detection.metrics import detection_metrics
    items = [DetectionItem("a.png", 200, 200, [[0, 0, 100, 100]], [0], 1)]
    # same left/top/right, 72 of 100 rows: IoU 0.72 -> a hit at IoU 0.50, 0.55, 0.60, 0.65, 0.70 (5 of 10)
    m = detection_metrics([_pred([[0, 0, 100, 72]], [0])], items, ["cat"])
    assert m["map_50"] == pytest.approx(1.0) and m["map_75"] == pytest.approx(0.0)
    assert m["map"] == pytest.approx(0.5, abs=1e-6)
    # the right box ranked below a false one on the same image: precision 1/2 at full recall
    m = detection_metrics([_pred([[120, 120, 180, 180], [0, 0, 100, 100]], [0, 0], [0.9, 0.8])],
                          items, ["cat"])
    assert m["map_50"] == pytest.approx(0.5, abs=0.01)


# ------------------------------------------------------------------------------ model and loop

def test_hflip_moves_the_boxes_with_the_pixels():
    import torch
    from transferkit.detection.train import hflip
    img = torch.zeros(3, 16, 20, dtype=torch.uint8)
    img[:, 2:6, 1:4] = 255                                  # x 1..3, y 2..5 -> box [1, 2, 4, 6]
    f_img, f_box = hflip(img, torch.tensor([[1.0, 2.0, 4.0, 6.0]]))
    assert f_box.tolist() == [[16.0, 2.0, 19.0, 6.0]]
    ys, xs = torch.nonzero(f_img[0], as_tuple=True)
    assert (xs.min().item(), xs.max().item() + 1, ys.min().item(), ys.max().item() + 1) == (16, 19, 2, 6)


def test_bundled_weights_reach_the_features_only_body_and_a_missing_tensor_is_loud():
    import timm
    import torch
    from transferkit.detection.model import features_body, load_features_checked
    from transferkit.models.hub import SourceError
    from transferkit.models.sources import load_backbone
    body = features_body("bundled:efficientnet_lite0", (1, 2, 3, 4))
    full = load_backbone("bundled:efficientnet_lite0").module
    assert body.feature_info.channels() == [24, 40, 112, 320]
    for name in ("conv_stem.weight", "blocks.6.0.conv_pwl.weight", "blocks.3.1.bn1.running_var"):
        assert torch.equal(body.state_dict()[name], full.state_dict()[name])
    state = dict(full.state_dict())
    del state["blocks.2.0.conv_dw.weight"]
    fresh = timm.create_model("tf_efficientnet_lite0", features_only=True, out_indices=(1, 2, 3, 4))
    with pytest.raises(SourceError, match=r"missing \(1\): blocks\.2\.0\.conv_dw\.weight"):
        load_features_checked(fresh, state, "x.pth")


def test_levels_follow_the_architecture_strides_4_to_32_and_the_spec_records_them():
    import torch

    from transferkit.detection.model import build_detector
    # ConvNeXt numbers its stride-4..32 levels 0-3, ResNets and EfficientNets 1-4 (0 is stride 2)
    model = build_detector("timm:convnext_atto@random", 3, image_size=64, fpn_channels=64)
    assert model.spec.out_indices == (0, 1, 2, 3)
    assert model.backbone.strides == [4, 8, 16, 32, 64, 128]
    model.eval()
    with torch.no_grad():
        assert model([torch.rand(3, 64, 64)])[0]["boxes"].shape[1] == 4


@pytest.mark.parametrize("arch,terms", [("retinanet", {"classification", "bbox_regression"}),
                                        ("fasterrcnn", {"loss_classifier", "loss_box_reg", "loss_objectness",
                                                        "loss_rpn_box_reg"})])
def test_retinanet_and_faster_rcnn_take_a_step_and_answer_in_data_classes(tmp_path, arch, terms):
    from transferkit.detection.model import build_detector
    from transferkit.detection.predict import predict
    from transferkit.detection.train import TrainConfig, train_detector
    ds = make_images(tmp_path / "images", 2)
    model = build_detector("timm:resnet10t@random", 2, arch, image_size=64, fpn_channels=64)
    fit = train_detector(model, ds.items, TrainConfig(steps=1, batch_size=2))
    assert set(fit.parts[0]) == terms and np.isfinite(fit.losses[0])
    (p,) = predict(model, ds.items[:1])
    assert p["boxes"].shape[1] == 4 and all(0 <= c < 2 for c in p["labels"].tolist())


def test_freeze_backbone_trains_only_fpn_and_heads_and_batchnorm_statistics_stay(tmp_path):
    import torch

    from transferkit.detection.model import build_detector
    from transferkit.detection.train import TrainConfig, train_detector
    ds = make_images(tmp_path / "images", 4)
    for freeze in (True, False):
        model = build_detector("timm:resnet10t@random", 2, image_size=64, fpn_channels=64, freeze_backbone=freeze)
        body0 = {k: v.clone() for k, v in model.backbone.body.state_dict().items()}
        fpn0 = {k: v.clone() for k, v in model.backbone.fpn.state_dict().items()}
        train_detector(model, ds.items, TrainConfig(steps=2, batch_size=2))
        body = model.backbone.body.state_dict()
        moved = [k for k in body0 if not torch.equal(body0[k], body[k])]
        assert any(not torch.equal(fpn0[k], v) for k, v in model.backbone.fpn.state_dict().items())
        # frozen BatchNorm (the default) keeps the source statistics in both cases
        assert not [k for k in moved if "running_" in k]
        assert (moved == []) == freeze, moved[:3]


def test_the_same_seed_gives_the_same_losses_and_another_seed_does_not(tmp_path):
    from transferkit.detection.model import build_detector
    from transferkit.detection.train import TrainConfig, train_detector
    ds = make_images(tmp_path / "images", 4)

    def losses(seed):
        import torch
        torch.manual_seed(0)   # the same initial weights; the loop's seed drives order and flips
        model = build_detector("timm:resnet10t@random", 2, image_size=64, fpn_channels=64)
        return train_detector(model, ds.items, TrainConfig(steps=3, batch_size=2, seed=seed)).losses

    a = losses(0)
    assert losses(0) == a and losses(1) != a


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A random-init lite0 FCOS at 64 px trained 20 steps on 8 made images (seeded)."""
    from transferkit.detection.model import build_detector
    from transferkit.detection.train import TrainConfig, train_detector
    root = tmp_path_factory.mktemp("det")
    ds = coco_set(root, 8)
    model = build_detector("bundled:efficientnet_lite0@random", len(ds.classes), "fcos",
                           image_size=64, fpn_channels=64)
    fit = train_detector(model, ds.items, TrainConfig(steps=20, batch_size=4, lr=3e-3, seed=0))
    return root, read_detection(root), fit


def test_a_tiny_detector_trains_and_its_loss_falls(trained):
    _, _, fit = trained
    assert len(fit.losses) == 20 and all(np.isfinite(fit.losses))
    first, last = np.mean(fit.losses[:3]), np.mean(fit.losses[-3:])
    assert last < 0.75 * first, (first, last)
    assert set(fit.parts[0]) == {"classification", "bbox_regression", "bbox_ctrness"}


def test_predictions_are_coco_results_that_load_against_the_ground_truth(trained, tmp_path):
    from faster_coco_eval import COCO

    from transferkit.detection.metrics import evaluate_detector
    from transferkit.detection.predict import coco_results
    root, ds, fit = trained
    metrics, preds = evaluate_detector(fit.model, ds.items, ds.classes)
    assert set(metrics) >= {"map", "map_50", "map_75", "per_class"} and set(metrics["per_class"]) == set(ds.classes)
    results = coco_results(preds, ds.items, ds.category_ids)
    assert results and set(results[0]) == {"image_id", "category_id", "bbox", "score"}
    (tmp_path / "results.json").write_text(json.dumps(results))
    gt = COCO(str(root / "annotations.json"))
    dt = gt.loadRes(str(tmp_path / "results.json"))
    assert len(dt.getAnnIds()) == len(results)
    assert set(dt.getImgIds()) <= set(gt.getImgIds())


def test_predict_maps_boxes_back_to_each_images_own_pixels_and_rows_rank_by_score(tmp_path):
    import torch
    from torch import nn

    from transferkit.detection.model import DetectorSpec
    from transferkit.detection.predict import predict, prediction_rows

    class Fixed(nn.Module):        # answers the same boxes, in the 32x32 model frame, for any image
        spec = DetectorSpec("none", 2, image_size=32)

        def forward(self, images):
            assert all(tuple(im.shape) == (3, 32, 32) for im in images)
            return [{"boxes": torch.tensor([[8.0, 8.0, 16.0, 16.0], [0.0, 0.0, 32.0, 32.0]]),
                     "scores": torch.tensor([0.3, 0.8]), "labels": torch.tensor([1, 2])} for _ in images]

    Image.new("RGB", (64, 128)).save(tmp_path / "tall.png")
    item = DetectionItem(str(tmp_path / "tall.png"), 64, 128, [], [], 1)
    (p,) = predict(Fixed(), [item])
    assert p["boxes"].tolist() == [[16.0, 32.0, 32.0, 64.0], [0.0, 0.0, 64.0, 128.0]]
    assert p["labels"].tolist() == [0, 1]                  # the model's label 1 is class 0
    rows = prediction_rows([p], [item], ["cat", "dog"], root=tmp_path)
    assert [(r["image"], r["label"], r["score"]) for r in rows] == [("tall.png", "dog", 0.8), ("tall.png", "cat", 0.3)]
    assert (rows[1]["x1"], rows[1]["y1"], rows[1]["x2"], rows[1]["y2"]) == (16.0, 32.0, 32.0, 64.0)


def test_a_saved_detector_loads_back_and_predicts_the_same(trained, tmp_path):
    import torch

    from transferkit.detection.model import load_detector, save_detector
    from transferkit.detection.predict import predict
    _, ds, fit = trained
    save_detector(fit.model, ds.classes, tmp_path / "run")
    model, classes = load_detector(tmp_path / "run")
    assert classes == ds.classes and model.spec == fit.model.spec
    a, b = predict(fit.model, ds.items[:2]), predict(model, ds.items[:2])
    for x, y in zip(a, b):
        assert torch.allclose(x["boxes"], y["boxes"]) and torch.equal(x["labels"], y["labels"])


# ------------------------------------------------------------------------------------ run folder

def test_a_detector_on_file_weights_loads_back_after_the_file_is_gone(tmp_path):
    import timm
    import torch
    from safetensors.torch import save_file

    from transferkit.detection.model import build_detector, load_detector, save_detector
    torch.manual_seed(0)
    weights = tmp_path / "mine.safetensors"
    state = timm.create_model("resnet10t").state_dict()
    save_file(state, str(weights), metadata={"arch": "resnet10t"})
    model = build_detector(f"file:{weights}", 2, image_size=64, fpn_channels=64)
    assert torch.equal(model.backbone.body.state_dict()["layer4.0.conv2.weight"], state["layer4.0.conv2.weight"])
    save_detector(model, ["a", "b"], tmp_path / "run")
    weights.unlink()
    again, _ = load_detector(tmp_path / "run")
    assert again.spec.timm_arch == "resnet10t"
    assert torch.equal(again.backbone.body.state_dict()["layer4.0.conv2.weight"], state["layer4.0.conv2.weight"])


def test_train_run_writes_a_run_folder_that_evaluate_and_predict_read(tmp_path):
    import csv as _csv

    from transferkit.detection.run import evaluate_run, predict_run, train_run
    from transferkit.detection.train import TrainConfig
    data = tmp_path / "voc"
    voc_set(data, 6)
    run = tmp_path / "run"
    run.mkdir()
    lines = []
    metrics = train_run(data, run, source="bundled:efficientnet_lite0@random", image_size=64,
                        config=TrainConfig(steps=4, batch_size=2, seed=1), log=lines.append)
    split = json.loads((run / "split.json").read_text())
    assert len(split["test"]) == 1 and len(split["train"]) == 5 and not set(split["test"]) & set(split["train"])
    assert json.loads((run / "metrics.json").read_text())["map"] == metrics["map"]
    assert len(json.loads((run / "history.json").read_text())["loss"]) == 4
    assert any(ln.startswith("detect: voc data, 2 classes, 5 training images") for ln in lines)
    again = evaluate_run(run, data)
    assert set(again["per_class"]) == {"red", "blue"} and again["images"] == 6
    rows = predict_run(run, [str(data / "JPEGImages")], tmp_path / "out")
    text = (tmp_path / "out" / "predictions.csv").read_text()
    assert text.splitlines()[0] == "image,label,score,x1,y1,x2,y2"
    assert len(list(_csv.DictReader(text.splitlines()))) == len(rows)
    assert len(json.loads((tmp_path / "out" / "predictions.json").read_text())) == len(rows)
    with pytest.raises(FileExistsError, match="already holds predictions.csv"):
        predict_run(run, [str(data / "JPEGImages")], tmp_path / "out")
