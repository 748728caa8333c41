"""Task `anomaly`: defects found as distance to normal patches (PatchCore-style), on frozen features.

Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022. Here:

  features  the source encoder's stride-8 and stride-16 maps, each averaged over its 3x3 neighbourhood,
            the stride-16 map upsampled onto the stride-8 grid, concatenated: one vector per patch;
  bank      the patches of the training normals (DATA/train/good), greedily subsampled to a coreset
            (k-center: each pick is the patch farthest from those already picked, on a seeded random
            projection) of CORESET_SHARE of them, at most CORESET_CAP;
  score     s(patch) = min_m ||patch - m||_2 over the bank (k = 1); the map is upsampled to the input
            size and smoothed (Gaussian, sigma 4 px); the image score is the map's maximum.

The defect threshold is chosen without test labels: the 0.99 quantile of the training normals' image
scores, each scored against a bank built without its fold (K-fold). Data: the MVTec AD layout
(DATA/train/good, DATA/test/good, DATA/test/<defect>, DATA/ground_truth/<defect>/<stem>_mask.png).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..config import TrainConfig
from ..data.pictures import IMAGE_EXTS
from ..data.splits import DataError
from ..engine import interrupt
from ..store import checkpoint as ck
from . import DenseResult, encoder, runs
from .metrics import auroc, f1_at
from .patchcore import (CORESET_CAP, CORESET_SHARE, PROJECTION, QUANTILE, SIGMA,  # noqa: F401 (the names of old)
                        PatchFeatures, build_bank, coreset, embed, fold_scores, folds, leave_out_threshold,
                        score_maps, threshold_from)

NAME = "anomaly"
LAYOUT = "train/good/ (test/good, test/<defect>/, ground_truth/<defect>/<stem>_mask.png)"
SUMMARY = ("image_auroc", "pixel_auroc", "f1", "threshold", "n_train", "n_test")
REDUCTIONS = (8, 16)
DEFAULT_SIZE = 224


@dataclass
class TestItem:
    image: Path
    defect: str            # "good" or the defect folder's name
    mask: Path | None      # ground truth, None where the data set has none

    @property
    def label(self) -> int:
        return int(self.defect != "good")


def looks_like(path: Path) -> bool:
    return (path / "train" / "good").is_dir()


def _images(folder: Path) -> list[Path]:
    return [p for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")
            and p.suffix.lower() in IMAGE_EXTS]


def train_images(root: Path) -> list[Path]:
    good = root / "train" / "good"
    if not good.is_dir():
        raise DataError(f"{good} is missing: anomaly data is {LAYOUT}")
    found = _images(good)
    if not found:
        raise DataError(f"{good} holds no images; put the defect-free training images there")
    return found


def test_items(root: Path) -> list[TestItem]:
    """DATA/test/<good|defect>/* with their masks; a defect folder that has ground truth must have a
    mask for each of its images, of the image's size."""
    test = root / "test"
    if not test.is_dir():
        raise DataError(f"{test} is missing: anomaly test data is {LAYOUT}")
    items = []
    for d in sorted(p for p in test.iterdir() if p.is_dir() and not p.name.startswith(".")):
        truth = root / "ground_truth" / d.name
        for img in _images(d):
            mask = None
            if d.name != "good" and truth.is_dir():
                mask = truth / f"{img.stem}_mask.png"
                if not mask.is_file():
                    raise DataError(f"{img} has no ground truth: {mask} is missing; add it or remove {truth}")
                with Image.open(img) as a, Image.open(mask) as b:
                    if a.size != b.size:
                        raise DataError(f"{mask} is {b.size[0]}x{b.size[1]} but its image {img} is "
                                        f"{a.size[0]}x{a.size[1]}; a mask must have its image's size")
            items.append(TestItem(img, d.name, mask))
    if not items:
        raise DataError(f"{test} holds no images (expected test/good/ and test/<defect>/ folders)")
    return items


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def train(cfg: TrainConfig, *, resume: bool = False, log=print, progress: bool = True) -> DenseResult:
    """Steps (what --stop-after N counts, and what RUN/last/ is saved after): 1, the memory bank; then
    one per fold of the threshold; then the test scores, metrics.json and report.html. A resume
    continues from the last step saved, to the bank, threshold and metrics of an unstopped run."""
    from ..engine.run_state import RunState
    run, state, last = Path(cfg.out).expanduser(), RunState(), None
    if resume:
        from ..engine.resume import resume_point
        cfg, state, last = resume_point(run, cfg, log)
        if state.done:
            return DenseResult(run, ck.read_json(run / "metrics.json"), state, summary=SUMMARY)
    root = Path(cfg.data).expanduser()
    normals = train_images(root)
    if cfg.shots:
        rng = np.random.default_rng(cfg.seed)
        normals = sorted(rng.permutation(np.array(normals, dtype=object))[:cfg.shots].tolist())
    tests = test_items(Path(cfg.test).expanduser() if cfg.test else root)
    split = folds(len(normals), cfg.seed)  # too few normals stop here, before the run folder is made
    bb = encoder.source_backbone(cfg)
    size = runs.image_size(cfg, DEFAULT_SIZE, max(REDUCTIONS))
    torch.manual_seed(cfg.seed)  # an @random encoder: the same weights for a seed
    extractor, channels = encoder.feature_extractor(bb.source.arch, REDUCTIONS)
    if bb.source.pretrained:
        encoder.copy_source_weights(extractor, bb.module, cfg.backbone, log)
    else:
        log(f"features: random initialisation ({cfg.backbone})")
    files = {"train": [(str(p), "good") for p in normals],
             "test": [(str(it.image), it.defect) for it in tests] + [(str(it.mask), "mask") for it in tests if it.mask]}
    if resume:
        runs.check_data(run, cfg, ["good", "defect"], files, log)
    else:
        run = runs.start_run(cfg, NAME, runs.source_record(bb, size, {"reductions": list(REDUCTIONS),
                                                                        "channels": channels}), log)
        runs.record_data(run, ["good", "defect"], files)
    bank, scores = None, np.zeros(len(normals))
    if last is not None:
        saved = ck.load_tensors(last / "model.safetensors")
        from ..models.sources import load_state_dict_checked
        load_state_dict_checked(extractor, _encoder_part(saved), str(last))
        bank = saved["memory_bank"]
        scores = np.array(ck.read_json(last / "state.json")["fold_scores"])
        log(f"resuming {run} at step {state.global_step}")
    device = _device()
    net = PatchFeatures(extractor.eval()).to(device)
    pre = bb.preprocess
    log(f"anomaly: {len(normals)} normal training images, {len(tests)} test images; features at strides "
        f"{REDUCTIONS} of {bb.source.arch} at {size}px")
    maps = embed(net, normals, size, pre.mean, pre.std, device)
    tensors = lambda: {"memory_bank": bank, **{f"encoder.{k}": v for k, v in extractor.state_dict().items()}}  # noqa: E731
    with interrupt.stop_on_signals():
        while state.global_step < 1 + len(split):
            if state.global_step == 0:
                bank = build_bank(maps, cfg.seed, device)
            else:
                f = state.global_step - 1
                scores[split[f].numpy()] = fold_scores(maps, split[f], f, size, cfg.seed, device)
            state.global_step += 1
            state.step = state.global_step
            stop = interrupt.requested() or (cfg.stop_after and state.global_step >= cfg.stop_after)
            _save_step(run, tensors(), state, scores)
            if stop and state.global_step < 1 + len(split):
                return DenseResult(run, None, state, interrupted=True, signal=interrupt.requested(), summary=SUMMARY)
    threshold, how = threshold_from(scores, len(split))
    ck.atomic_save_tensors(run / "model.safetensors", tensors(), {"threshold": repr(threshold)})
    metrics = {"task": NAME, "n_train": len(normals), "bank_size": int(bank.shape[0]),
               "patches": int(maps.shape[0] * maps.shape[2] * maps.shape[3]), "image_size": size, **how}
    scored, maps = _score_test(net, bank, tests, size, pre.mean, pre.std, threshold, device)
    metrics.update(scored)
    ck.atomic_write_json(run / "metrics.json", metrics)
    _report(run, metrics, tests, maps, threshold, size)
    state.done = True
    _save_step(run, None, state, scores)
    log(f"wrote {run}/model.safetensors (memory bank of {bank.shape[0]} patches), metrics.json, report.html")
    return DenseResult(run, metrics, state, summary=SUMMARY)


def _encoder_part(tensors: dict) -> dict:
    return {k[len("encoder."):]: v for k, v in tensors.items() if k.startswith("encoder.")}


def _save_step(run: Path, tensors: dict | None, state, scores: np.ndarray) -> None:
    """RUN/last/: the bank and encoder so far (model.safetensors), the run state and the folds'
    scores so far; a finished run's last/ keeps its state only. Swapped in whole (store/checkpoint.py)."""
    def build(tmp: Path) -> None:
        if tensors is not None:
            ck.atomic_save_tensors(tmp / "model.safetensors", tensors)
        ck.atomic_write_json(tmp / "state.json", {"run_state": state.__dict__,
                                                  "fold_scores": [float(x) for x in scores]})
    ck.atomic_replace_dir(build, run / "last")


def _report(run: Path, metrics: dict, items: list[TestItem], maps: np.ndarray, threshold: float, size: int) -> None:
    """report.html: heat maps, the images furthest on the wrong side of the threshold first."""
    from matplotlib import colormaps

    from .report import write_report
    cards = []
    for it, m in zip(items, maps):
        score = float(m.max())
        margin = (score - threshold) if it.label == 0 else (threshold - score)
        with Image.open(it.image) as im:
            raw = np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.float32)
        heat = colormaps["jet"](np.clip(m / max(2 * threshold, 1e-12), 0, 1))[..., :3] * 255
        truth = _mask(it, size)[..., None] * np.array([255.0, 60.0, 60.0])
        cards.append({"name": f"{it.defect}/{it.image.name}", "badness": margin / max(threshold, 1e-12),
                      "caption": f"score {score:.4g} (threshold {threshold:.4g}): "
                                 f"{'defect' if score >= threshold else 'good'}, truth {it.defect}",
                      "images": [("anomaly map", 0.5 * raw + 0.5 * heat),
                                 ("truth", np.where(truth > 0, 0.5 * raw + 0.5 * truth, raw))]})
    write_report(run, f"anomaly run {run.name}", metrics, cards)


def _score_test(net, bank, items: list[TestItem], size, mean, std, threshold, device) -> tuple[dict, np.ndarray]:
    maps = score_maps(embed(net, [it.image for it in items], size, mean, std, device), bank, size, device)
    scores = maps.max(axis=(1, 2))
    labels = np.array([it.label for it in items])
    out = {"n_test": len(items), "image_auroc": auroc(labels, scores)}
    has_truth = any(it.mask is not None for it in items)
    if has_truth:  # good images are defect-free everywhere; defect images without a mask are left out
        keep = [i for i, it in enumerate(items) if it.mask is not None or it.label == 0]
        truth = np.stack([_mask(items[i], size) for i in keep])
        out["pixel_auroc"] = auroc(truth.reshape(-1), maps[keep].reshape(-1))
    else:
        out["pixel_auroc"] = None
    out.update(f1_at(labels, scores, threshold))
    out["per_defect_auroc"] = {d: auroc(labels[[it.defect in ("good", d) for it in items]],
                                        scores[[it.defect in ("good", d) for it in items]])
                               for d in sorted({it.defect for it in items} - {"good"})}
    return out, maps


def _mask(item: TestItem, size: int) -> np.ndarray:
    if item.mask is None:
        return np.zeros((size, size), np.uint8)
    with Image.open(item.mask) as m:
        return (np.asarray(m.convert("L").resize((size, size), Image.NEAREST)) > 0).astype(np.uint8)


def load_run(run_dir):
    """(feature net on the device, memory bank, threshold, source.json) of an anomaly run."""
    from ..models.sources import load_state_dict_checked
    _, src = runs.open_run(run_dir, NAME)
    weights = Path(run_dir) / "model.safetensors"
    tensors = ck.load_tensors(weights)
    extractor, _ = encoder.feature_extractor(src["arch"], tuple(src["reductions"]))
    load_state_dict_checked(extractor, _encoder_part(tensors), str(weights))
    threshold = float(ck.read_safetensors_metadata(weights)["threshold"])
    return PatchFeatures(extractor.eval()).to(_device()), tensors["memory_bank"], threshold, src


def evaluate(run_dir, data, *, log=print) -> dict:
    net, bank, threshold, src = load_run(run_dir)
    items = test_items(Path(data).expanduser())
    scored, _ = _score_test(net, bank, items, src["image_size"], src["mean"], src["std"], threshold, _device())
    return {"task": NAME, "threshold": threshold, **scored}


def predictor(run_dir):
    """(classes, fn): fn(images) -> per image {"score", "label" (good/defect at the run's threshold),
    "map": float32 [H, W] anomaly map at the image's own size, "threshold"} (Model.predict; the
    server's model). `images`: paths, or RGB PIL images already decoded (the server's uploads)."""
    net, bank, threshold, src = load_run(run_dir)

    def run(paths: list) -> list[dict]:
        maps = score_maps(embed(net, paths, src["image_size"], src["mean"], src["std"], _device()), bank,
                          src["image_size"], _device())
        rows = []
        for p, m in zip(paths, maps):
            if isinstance(p, Image.Image):
                own = p.size
            else:
                with Image.open(p) as im:
                    own = im.size
            score = float(m.max())
            rows.append({"score": round(score, 6), "label": "defect" if score >= threshold else "good",
                         "threshold": threshold,
                         "map": np.asarray(Image.fromarray(m.astype(np.float32), "F").resize(own, Image.BILINEAR))})
        return rows
    return ["good", "defect"], run


def predict(run_dir, inputs: list[str], output: str | None, *, log=print) -> list[dict]:
    """Per input: image score, good/defect at the run's threshold, and (with --out) a heat map."""
    from .segment import input_images, output_stems
    _, run = predictor(run_dir)
    paths = input_images(inputs)
    stems = output_stems(paths)
    out = runs.free_output_dir(output, [f"{s}_heatmap.png" for s in stems]) if output else None
    rows = []
    for p, stem, got in zip(paths, stems, run(paths)):
        row = {"input": str(p), "score": got["score"], "label": got["label"]}
        if out is not None:
            row["heatmap"] = str(_write_heatmap(p, got["map"], got["threshold"], out / f"{stem}_heatmap.png"))
        rows.append(row)
    return rows


def _write_heatmap(image: Path, amap: np.ndarray, threshold: float, path: Path) -> Path:
    """The map over the image, coloured from 0 (blue) to 2 x threshold (red), at the image's size."""
    from ..data.images import open_rgb
    im = open_rgb(str(image))
    blend = 0.5 * np.asarray(im, dtype=np.float32) + 0.5 * heat_colours(amap, threshold, im.size)
    Image.fromarray(blend.astype(np.uint8), "RGB").save(path)
    return path


def heat_colours(amap: np.ndarray, threshold: float, size: tuple[int, int]) -> np.ndarray:
    """The map as colours [H, W, 3] (0..255) at `size` (W, H): 0 blue to 2 x threshold red (jet)."""
    from matplotlib import colormaps
    scaled = np.clip(amap / max(2 * threshold, 1e-12), 0, 1)
    heat = Image.fromarray((scaled * 255).astype(np.uint8), "L").resize(size, Image.BILINEAR)
    return colormaps["jet"](np.asarray(heat) / 255.0)[..., :3] * 255
