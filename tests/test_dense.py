"""Dense tasks (transferkit/dense): segmentation and anomaly detection on tiny synthetic sets.

Segmentation: noisy grey images with one red square (class 1) and its mask. Anomaly: a sine texture
(the normals) and the same texture with a pasted green patch (the defects, with masks). A tiny
random timm encoder keeps every run a few seconds on one core; the weight copy from a source is
checked separately on a file: source.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from transferkit.cli import main
from transferkit.dense import infer_task, resolve_task
from transferkit.dense.metrics import auroc, confusion, f1_at, segmentation_metrics

TINY = "timm:test_efficientnet@random"
SEG = ["--backbone", TINY, "--image-size", "32", "--batch-size", "4", "--lr", "0.01", "--quiet"]


def write_segmentation(root: Path, n: int = 12, size: int = 32, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("background\nsquare\n")
    for i in range(n):
        img = np.clip(rng.normal(90, 20, (size, size, 3)), 0, 255)
        mask = np.zeros((size, size), np.uint8)
        s = int(rng.integers(8, 14))
        y, x = rng.integers(0, size - s, 2)
        img[y:y + s, x:x + s] = np.clip(rng.normal((220, 40, 40), 15, (s, s, 3)), 0, 255)
        mask[y:y + s, x:x + s] = 1
        Image.fromarray(img.astype(np.uint8)).save(root / "images" / f"im{i:02d}.png")
        Image.fromarray(mask, "L").save(root / "masks" / f"im{i:02d}.png")
    return root


def _texture(rng, size):
    xx = np.mgrid[:size, :size][1]
    base = 128 + 50 * np.sin(xx * 0.8 + rng.uniform(0, 6.28))
    return np.repeat(base[..., None], 3, 2) + rng.normal(0, 10, (size, size, 3))


def write_mvtec(root: Path, size: int = 64, n_train: int = 10, n_test: int = 6, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for d in ("train/good", "test/good", "test/patch", "ground_truth/patch"):
        (root / d).mkdir(parents=True)
    save = lambda a, p: Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(p)  # noqa: E731
    for i in range(n_train):
        save(_texture(rng, size), root / "train/good" / f"{i:03d}.png")
    for i in range(n_test):
        save(_texture(rng, size), root / "test/good" / f"{i:03d}.png")
        img, mask = _texture(rng, size), np.zeros((size, size), np.uint8)
        y, x = rng.integers(4, size - 16, 2)
        img[y:y + 12, x:x + 12] = rng.normal((30, 200, 60), 10, (12, 12, 3))
        mask[y:y + 12, x:x + 12] = 255
        save(img, root / "test/patch" / f"{i:03d}.png")
        Image.fromarray(mask, "L").save(root / "ground_truth/patch" / f"{i:03d}_mask.png")
    return root


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("transferkit: error: "), err
    assert "Traceback" not in "\n".join(err)
    return err[-1]


# ------------------------------------------------------------------------------------ metrics by hand

def test_segmentation_metrics_by_hand():
    target = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [0, 0, 0, 1]])
    cm = confusion(pred, target, 3)
    assert cm.tolist() == [[3, 1, 0], [1, 3, 0], [0, 0, 0]]
    m = segmentation_metrics(cm, ["bg", "a", "b"])
    # class 0: tp 3, union 3+1+1 = 5; class 1 the same; class 2 appears nowhere: no IoU, left out
    assert m["per_class_iou"] == {"bg": pytest.approx(0.6), "a": pytest.approx(0.6), "b": None}
    assert m["miou"] == pytest.approx(0.6)
    assert m["dice"] == pytest.approx(2 * 3 / (4 + 4))
    assert m["pixel_accuracy"] == pytest.approx(6 / 8)
    # a class predicted but absent from the truth counts, with IoU 0
    m2 = segmentation_metrics(confusion(torch.tensor([2, 0]), torch.tensor([0, 0]), 3), ["bg", "a", "b"])
    assert m2["per_class_iou"] == {"bg": pytest.approx(0.5), "a": None, "b": 0.0}
    assert m2["miou"] == pytest.approx(0.25)


def test_anomaly_scores_by_hand():
    labels, scores = [0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]
    assert auroc(labels, scores) == pytest.approx(0.75)  # 3 of the 4 (defect, good) pairs ranked right
    assert auroc([0, 0], [0.1, 0.2]) is None
    r = f1_at(labels, scores, 0.38)  # calls 0.4 (wrong) and 0.8 (right)
    assert (r["precision"], r["recall"], r["f1"]) == (0.5, 0.5, 0.5)


# ------------------------------------------------------------------------------------ layout and errors

def test_task_is_inferred_from_the_layout_and_said(tmp_path, image_folder):
    seg, mv = write_segmentation(tmp_path / "seg"), write_mvtec(tmp_path / "mv", n_train=2, n_test=1)
    said = []
    from transferkit.config import make_config
    assert resolve_task(make_config(data=str(seg), out="x"), log=said.append) == "segment"
    assert resolve_task(make_config(data=str(mv), out="x"), log=said.append) == "anomaly"
    assert "task: segment (inferred from the layout" in said[0] and "--task" in said[0]
    assert "task: anomaly" in said[1]
    assert infer_task(str(image_folder)) is None  # class folders: classification, nothing said
    assert resolve_task(make_config(data=str(image_folder), out="x"), log=said.append) == "classify"
    assert len(said) == 2
    # the explicit flag wins over the layout
    assert resolve_task(make_config(data=str(seg), out="x", task="classify"), log=said.append) == "classify"


def test_detect_on_a_folder_without_boxes_names_the_layouts_it_reads(tmp_path, capsys):
    data = write_segmentation(tmp_path / "seg", n=2)
    assert main(["train", str(data), "--task", "detect", "--out", str(tmp_path / "run")]) == 2
    line = _err(capsys)
    assert "COCO" in line and "YOLO" in line
    assert not (tmp_path / "run").exists()


def _break(data: Path, how: str) -> str:
    """Spoil a segmentation folder one way; returns the file the error must name."""
    if how == "value":
        Image.fromarray(np.full((32, 32), 3, np.uint8), "L").save(data / "masks" / "im01.png")
        return "im01.png"
    if how == "size":
        Image.fromarray(np.zeros((16, 32), np.uint8), "L").save(data / "masks" / "im02.png")
        return "im02.png"
    if how == "no_mask":
        (data / "masks" / "im03.png").unlink()
        return "im03.png"
    if how == "no_image":
        (data / "images" / "im04.png").unlink()
        return "im04.png"
    (data / "classes.txt").write_text("\n")
    return "classes.txt"


@pytest.mark.parametrize("how,words", [("value", "beyond the 2 classes"), ("size", "must have its image's size"),
                                       ("no_mask", "has no mask"), ("no_image", "mask with no image"),
                                       ("empty", "is empty")])
def test_bad_annotations_are_one_line_errors_naming_the_file(tmp_path, capsys, how, words):
    data = write_segmentation(tmp_path / "seg", n=6)
    name = _break(data, how)
    assert main(["train", str(data), *SEG, "--out", str(tmp_path / "run")]) == 2
    line = _err(capsys)
    assert name in line and words in line, line
    assert not (tmp_path / "run").exists()  # refused before the run folder is claimed


# ------------------------------------------------------------------------------------ end to end

def test_segment_train_evaluate_predict(tmp_path, capsys):
    data, run = write_segmentation(tmp_path / "seg"), tmp_path / "run"
    assert main(["train", str(data), *SEG, "--steps", "16", "--out", str(run)]) == 0
    meta = json.loads((run / "run.json").read_text())
    assert meta["task"] == "segment"
    for name in ("config.yaml", "source.json", "splits.csv", "model.safetensors", "metrics.json", "last"):
        assert (run / name).exists(), name
    m = json.loads((run / "metrics.json").read_text())
    assert set(m) >= {"miou", "per_class_iou", "dice", "pixel_accuracy"}
    assert m["n_test"] == 2 and m["miou"] > m["all_background_miou"] + 0.1, m
    page = (run / "report.html").read_text()
    assert "worst first (2 of 2)" in page and page.count("<img") == 4  # prediction + truth per test image
    capsys.readouterr()
    assert main(["evaluate", str(run), str(data), "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["n"] == 12 and ev["per_class_iou"]["square"] > 0.2, ev
    out = tmp_path / "pred"
    assert main(["predict", str(run), str(data / "images" / "im00.png"), str(data / "images" / "im05.png"),
                 "--output", str(out), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [Path(r["mask"]).name for r in rows] == ["im00_mask.png", "im05_mask.png"]
    mask = np.asarray(Image.open(out / "im00_mask.png"))
    assert mask.shape == (32, 32) and set(np.unique(mask)) <= {0, 1}
    truth = np.asarray(Image.open(data / "masks" / "im00.png"))
    assert (mask == truth).mean() > 0.8
    assert Image.open(out / "im00_overlay.png").mode == "RGB"
    # the files are never replaced
    assert main(["predict", str(run), str(data / "images" / "im00.png"), "--output", str(out)]) == 2
    assert "im00_mask.png" in _err(capsys)
    assert main(["evaluate", str(run), str(data), "--out", str(tmp_path / "ev")]) == 0
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["miou"] == pytest.approx(ev["miou"])
    # commands that read classifiers say what this run is instead of failing on its weights
    assert main(["export", str(run), "--format", "timm", "--out", str(tmp_path / "exp")]) == 2
    assert "is a segment run" in _err(capsys)


def test_a_stopped_segment_run_resumes_to_the_same_weights(tmp_path):
    from safetensors.torch import load_file
    data = write_segmentation(tmp_path / "seg")
    args = [str(data), *SEG, "--steps", "8"]
    assert main(["train", *args, "--out", str(tmp_path / "whole")]) == 0
    assert main(["train", *args, "--out", str(tmp_path / "cut"), "--stop-after", "5"]) == 0
    assert not (tmp_path / "cut" / "metrics.json").exists()
    state = json.loads((tmp_path / "cut" / "last" / "state.json").read_text())
    assert state["run_state"]["global_step"] == 5 and "optimizer" in state  # mid phase 2
    assert main(["train", "--resume", str(tmp_path / "cut"), "--quiet"]) == 0
    a = load_file(str(tmp_path / "whole" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    m_a = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    m_b = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert m_a["history"] == m_b["history"]


def test_anomaly_train_evaluate_predict(tmp_path, capsys):
    data, run = write_mvtec(tmp_path / "mv"), tmp_path / "run"
    assert main(["train", str(data), "--backbone", TINY, "--image-size", "64", "--out", str(run), "--quiet"]) == 0
    assert json.loads((run / "run.json").read_text())["task"] == "anomaly"
    m = json.loads((run / "metrics.json").read_text())
    assert m["image_auroc"] > 0.8 and m["pixel_auroc"] > 0.8, m
    assert "no test labels" in m["threshold_rule"] and m["threshold"] > 0
    page = (run / "report.html").read_text()
    assert "worst first (12 of 12)" in page and "threshold" in page
    from transferkit.store.checkpoint import load_tensors
    bank = load_tensors(run / "model.safetensors")["memory_bank"]
    assert bank.shape[0] == m["bank_size"] == round(0.1 * m["patches"])
    capsys.readouterr()
    assert main(["evaluate", str(run), str(data), "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["image_auroc"] == pytest.approx(m["image_auroc"])
    out = tmp_path / "pred"
    assert main(["predict", str(run), str(data / "test" / "patch" / "000.png"),
                 str(data / "test" / "good" / "000.png"), "--output", str(out), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["score"] > rows[1]["score"]
    assert {r["label"] for r in rows} <= {"good", "defect"}
    assert (out / "patch_000_heatmap.png").is_file() and (out / "good_000_heatmap.png").is_file()
    # a finished anomaly run is a run: a new train there is refused unless --overwrite
    again = ["train", str(data), "--backbone", TINY, "--image-size", "64", "--out", str(run), "--quiet"]
    assert main(again) == 2
    assert "already holds a run" in _err(capsys)
    assert main([*again, "--overwrite"]) == 0
    assert json.loads((run / "metrics.json").read_text())["image_auroc"] == pytest.approx(m["image_auroc"])


# ------------------------------------------------------------------------------------ source weights

def test_the_encoder_gets_the_source_weights_checked(tmp_path):
    import timm
    from safetensors.torch import save_file

    from transferkit.dense.encoder import build_segmenter, copy_source_weights, segmenter_encoder
    from transferkit.models.hub import SourceError
    from transferkit.models.sources import load_backbone
    torch.manual_seed(3)
    ref = timm.create_model("test_efficientnet").state_dict()
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in ref.items()}, str(path), metadata={"arch": "test_efficientnet"})
    bb = load_backbone(f"file:{path}")
    seg = build_segmenter(bb.source.arch, "fpn", 2)
    said = []
    report = copy_source_weights(segmenter_encoder(seg), bb.module, "file", log=said.append)
    enc = segmenter_encoder(seg).state_dict()
    assert report["missing"] == [] and report["loaded"] == len(enc)
    assert all(torch.equal(enc[k], ref[k]) for k in enc)
    assert "0 missing" in said[0] and "conv_head" in said[0]
    other = load_backbone("timm:test_resnet@random")
    with pytest.raises(SourceError, match="missing"):
        copy_source_weights(segmenter_encoder(seg), other.module, "timm:test_resnet")
    unet = build_segmenter(bb.source.arch, "unet", 3)  # --decoder unet: same encoder names, 3 classes out
    copy_source_weights(segmenter_encoder(unet), bb.module, "file", log=said.append)
    assert unet.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 3, 32, 32)


def test_l2sp_holds_the_segment_encoder_near_the_source(tmp_path, capsys):
    import timm
    from safetensors.torch import load_file, save_file
    torch.manual_seed(5)
    ref = timm.create_model("test_efficientnet").state_dict()
    weights = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in ref.items()}, str(weights), metadata={"arch": "test_efficientnet"})
    data = write_segmentation(tmp_path / "seg", n=6)
    args = [str(data), *SEG[2:], "--backbone", f"file:{weights}", "--strategy", "full", "--steps", "4",
            "--backbone-lr-mult", "1"]

    def moved(out, *extra):
        assert main(["train", *args, "--out", str(tmp_path / out), *extra]) == 0
        got = load_file(str(tmp_path / out / "model.safetensors"))
        conv = [k for k in ref if k.endswith("weight") and ref[k].ndim == 4]
        return sum(float((got[f"encoder.model.{k}"] - ref[k]).pow(2).sum()) for k in conv
                   if f"encoder.model.{k}" in got) ** 0.5

    free, held = moved("free"), moved("held", "--reg", "l2sp:1000")
    assert 0 < held < 0.6 * free, (held, free)
    assert "L2SP(alpha=1000.0" in json.loads((tmp_path / "held" / "metrics.json").read_text())["reg"]
    assert main(["train", str(data), *SEG, "--reg", "l2sp:1", "--out", str(tmp_path / "r")]) == 2
    assert "@random" in _err(capsys)


def test_segment_splits_are_seeded_and_shots_count_images(tmp_path):
    from transferkit.dense.segment_data import load_dataset, split
    from transferkit.data.splits import DataError
    items, classes = load_dataset(write_segmentation(tmp_path / "seg", n=16))
    kw = dict(test_items=None, val_items=None, test_fraction=0.25, val_fraction=None)
    a = split(items, seed=1, shots=4, **kw)
    # 4 test; 4 shots of the 12 left, and no validation share: at N labels none is spent on choosing
    assert [len(s) for s in a] == [4, 0, 4]
    # asked for, a validation share is held out from the images beyond the N shots
    assert [len(s) for s in split(items, seed=1, shots=4, **{**kw, "val_fraction": 0.2})] == [4, 2, 4]
    assert a == split(items, seed=1, shots=4, **kw)
    assert a != split(items, seed=2, shots=4, **kw)
    names = [{str(it.image) for it in s} for s in a]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    other, _ = load_dataset(write_segmentation(tmp_path / "test", n=5, seed=9))
    tr, va, te = split(items, seed=1, shots=None, **{**kw, "test_items": other})
    assert te == other and len(tr) + len(va) == 16  # --test DIR: nothing of DATA is held out for testing
    with pytest.raises(DataError, match="--shots 20"):
        split(items, seed=1, shots=20, **kw)


def test_segmentation_metrics_agree_with_torchmetrics():
    from torchmetrics.functional.classification import multiclass_accuracy, multiclass_jaccard_index
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 4, (3, 16, 16), generator=g)
    pred = torch.where(torch.rand(3, 16, 16, generator=g) < 0.6, target, torch.randint(0, 4, (3, 16, 16), generator=g))
    m = segmentation_metrics(confusion(pred, target, 4), ["a", "b", "c", "d"])
    per_class = multiclass_jaccard_index(pred, target, num_classes=4, average="none")
    assert [m["per_class_iou"][c] for c in "abcd"] == pytest.approx(per_class.tolist(), abs=1e-6)
    assert m["miou"] == pytest.approx(float(per_class.mean()), abs=1e-6)
    assert m["pixel_accuracy"] == pytest.approx(float(multiclass_accuracy(pred, target, num_classes=4,
                                                                          average="micro")), abs=1e-6)


def test_coreset_picks_the_farthest_patches():
    from transferkit.dense.anomaly import coreset
    g = torch.Generator().manual_seed(0)
    big = torch.randn(100, 8, generator=g) * 0.1          # one dense cluster at 0
    far = torch.cat([torch.full((2, 8), 10.0), torch.full((2, 8), -10.0)]) + torch.randn(4, 8, generator=g) * 0.1
    picked = coreset(torch.cat([big, far]), 3, seed=1).tolist()
    # k-center: whatever the start, the 3 picks cover the 3 clusters; a random 3 of 104 almost never would
    assert sorted(0 if i < 100 else (1 if i < 102 else 2) for i in picked) == [0, 1, 2]
    assert coreset(torch.cat([big, far]), 200, seed=1).tolist() == list(range(104))


@pytest.mark.parametrize("how,words", [("missing", "has no ground truth"), ("size", "must have its image's size"),
                                       ("no_normals", "holds no images")])
def test_bad_anomaly_data_is_a_one_line_error_naming_the_file(tmp_path, capsys, how, words):
    data = write_mvtec(tmp_path / "mv", n_train=2, n_test=2)
    if how == "missing":
        name = "001_mask.png"
        (data / "ground_truth" / "patch" / name).unlink()
    elif how == "size":
        name = "000_mask.png"
        Image.fromarray(np.zeros((10, 10), np.uint8), "L").save(data / "ground_truth" / "patch" / name)
    else:
        name = "train/good"
        for p in (data / "train" / "good").iterdir():
            p.unlink()
    assert main(["train", str(data), "--backbone", TINY, "--out", str(tmp_path / "run")]) == 2
    line = _err(capsys)
    assert name in line and words in line, line
    assert not (tmp_path / "run").exists()


def test_a_signal_stops_a_segment_run_with_a_checkpoint_and_the_resume_command(tmp_path, capsys, monkeypatch):
    import signal

    from transferkit.dense import segment_fit
    from transferkit.engine.run_state import RunState
    data, run = write_segmentation(tmp_path / "seg", n=6), tmp_path / "run"
    # SIGTERM "arrives" during step 3: the loop finishes the step, writes last/ and returns
    monkeypatch.setattr(segment_fit.interrupt, "requested",
                        lambda: signal.SIGTERM if a_state[0].global_step >= 3 else None)
    a_state = [RunState()]
    real_fit = segment_fit.fit_phases

    def spy(run_, cfg, model, phases, data_, state, *rest):
        a_state[0] = state
        return real_fit(run_, cfg, model, phases, data_, state, *rest)
    monkeypatch.setattr("transferkit.dense.segment.fit_phases", spy)
    assert main(["train", str(data), *SEG, "--steps", "8", "--out", str(run)]) == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert f"continue with: transferkit train --resume {run}" in err and "SIGTERM" in err
    saved = json.loads((run / "last" / "state.json").read_text())["run_state"]
    assert saved["global_step"] == 3 and not (run / "metrics.json").exists()
