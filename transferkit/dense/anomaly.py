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
import torch.nn.functional as F
from PIL import Image

from ..config import ConfigError, TrainConfig
from ..data.pictures import IMAGE_EXTS
from ..data.splits import DataError
from ..store import checkpoint as ck
from . import DenseResult, encoder, runs
from .metrics import auroc, f1_at
from .segment_data import load_image

NAME = "anomaly"
LAYOUT = "train/good/ (test/good, test/<defect>/, ground_truth/<defect>/<stem>_mask.png)"
SUMMARY = ("image_auroc", "pixel_auroc", "f1", "threshold", "n_train", "n_test")
REDUCTIONS = (8, 16)
DEFAULT_SIZE = 224
CORESET_SHARE, CORESET_CAP, PROJECTION = 0.1, 20_000, 128
SIGMA, QUANTILE = 4.0, 0.99


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


class PatchFeatures(torch.nn.Module):
    """Locally averaged stride-8/16 features on the stride-8 grid: [B, C8 + C16, H/8, W/8]."""

    def __init__(self, extractor: torch.nn.Module):
        super().__init__()
        self.extractor = extractor

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = [F.avg_pool2d(f, 3, stride=1, padding=1) for f in self.extractor(x)]
        grid = maps[0].shape[-2:]
        return torch.cat([maps[0]] + [F.interpolate(m, size=grid, mode="bilinear", align_corners=False)
                                      for m in maps[1:]], 1)


def embed(net: PatchFeatures, paths: list[Path], size: int, mean, std, device, batch: int = 16) -> torch.Tensor:
    out = []
    for i in range(0, len(paths), batch):
        x = torch.stack([load_image(p, size, mean, std) for p in paths[i:i + batch]]).to(device)
        out.append(net(x).float().cpu())
    return torch.cat(out)


def _patches(maps: torch.Tensor) -> torch.Tensor:
    return maps.permute(0, 2, 3, 1).reshape(-1, maps.shape[1])


def coreset(patches: torch.Tensor, n_keep: int, seed: int, device="cpu") -> torch.Tensor:
    """Indices of a greedy k-center coreset (distances on a seeded Gaussian random projection).
    n_keep passes over all patches: on the accelerator when there is one."""
    n = patches.shape[0]
    if n_keep >= n:
        return torch.arange(n)
    g = torch.Generator().manual_seed(seed)
    z = patches
    if patches.shape[1] > PROJECTION:
        z = patches @ torch.randn(patches.shape[1], PROJECTION, generator=g) / PROJECTION ** 0.5
    z = z.to(device)
    picked = [int(torch.randint(n, (1,), generator=g))]
    dist = (z - z[picked[0]]).norm(dim=1)
    for _ in range(n_keep - 1):
        i = int(dist.argmax())
        picked.append(i)
        dist = torch.minimum(dist, (z - z[i]).norm(dim=1))
    return torch.tensor(picked)


def build_bank(maps: torch.Tensor, seed: int, device="cpu") -> torch.Tensor:
    patches = _patches(maps)
    n_keep = max(1, min(CORESET_CAP, int(round(patches.shape[0] * CORESET_SHARE))))
    return patches[coreset(patches, n_keep, seed, device)].contiguous()


def score_maps(maps: torch.Tensor, bank: torch.Tensor, size: int, device="cpu") -> np.ndarray:
    """[N, size, size] anomaly maps: nearest-bank-patch distance, upsampled, Gaussian-smoothed."""
    from scipy.ndimage import gaussian_filter
    n, c, h, w = maps.shape
    bank = bank.to(device)
    q = _patches(maps).to(device)
    d = torch.cat([torch.cdist(q[i:i + 4096], bank).min(1).values for i in range(0, len(q), 4096)])
    grid = d.reshape(n, 1, h, w).cpu()
    up = F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=False)[:, 0].numpy()
    return np.stack([gaussian_filter(m, sigma=SIGMA) for m in up])


def leave_out_threshold(maps: torch.Tensor, size: int, seed: int, device) -> tuple[float, dict]:
    """The QUANTILE of the normals' image scores, each image scored by a bank without its fold."""
    n = maps.shape[0]
    k = min(5, n)
    if k < 2:
        raise DataError("anomaly training needs at least 2 normal images in train/good (one to score while "
                        "the others form the bank)")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    scores = np.zeros(n)
    for f in range(k):
        held = order[f::k]
        keep = torch.tensor([i for i in range(n) if i not in set(held.tolist())])
        scores[held.numpy()] = score_maps(maps[held], build_bank(maps[keep], seed + f, device), size, device).max(axis=(1, 2))
    t = float(np.quantile(scores, QUANTILE))
    return t, {"threshold": t, "threshold_rule": f"{QUANTILE} quantile of the {n} training normals' image "
               f"scores, each scored against a bank built without its fold ({k}-fold); no test labels used",
               "train_scores_leave_out": [round(float(s), 5) for s in scores]}


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def train(cfg: TrainConfig, *, resume: bool = False, log=print, progress: bool = True) -> DenseResult:
    if resume:  # a memory bank is built in one pass: a run either finished or has to start again
        run = Path(cfg.out).expanduser()
        if (run / "metrics.json").is_file() and (run / "last").is_dir():
            log(f"{run} already finished; nothing to resume")
            return DenseResult(run, ck.read_json(run / "metrics.json"), summary=SUMMARY)
        raise ConfigError(f"{run}: an anomaly run builds its memory bank in one pass and has no steps to "
                          f"resume; train it again with --out {cfg.out} --overwrite")
    root = Path(cfg.data).expanduser()
    normals = train_images(root)
    if cfg.shots:
        rng = np.random.default_rng(cfg.seed)
        normals = sorted(rng.permutation(np.array(normals, dtype=object))[:cfg.shots].tolist())
    tests = test_items(Path(cfg.test).expanduser() if cfg.test else root)
    bb = encoder.source_backbone(cfg)
    size = runs.image_size(cfg, DEFAULT_SIZE, max(REDUCTIONS))
    extractor, channels = encoder.feature_extractor(bb.source.arch, REDUCTIONS)
    if bb.source.pretrained:
        encoder.copy_source_weights(extractor, bb.module, cfg.backbone, log)
    else:
        log(f"features: random initialisation ({cfg.backbone})")
    device = _device()
    net = PatchFeatures(extractor.eval()).to(device)
    pre = bb.preprocess
    run = runs.start_run(cfg, NAME, runs.source_record(bb, size, {"reductions": list(REDUCTIONS),
                                                                    "channels": channels}), log)
    log(f"anomaly: {len(normals)} normal training images, {len(tests)} test images; features at strides "
        f"{REDUCTIONS} of {bb.source.arch} at {size}px")
    maps = embed(net, normals, size, pre.mean, pre.std, device)
    bank = build_bank(maps, cfg.seed, device)
    threshold, how = leave_out_threshold(maps, size, cfg.seed, device)
    tensors = {"memory_bank": bank, **{f"encoder.{k}": v for k, v in extractor.state_dict().items()}}
    ck.atomic_save_tensors(run / "model.safetensors", tensors, {"threshold": repr(threshold)})
    metrics = {"task": NAME, "n_train": len(normals), "bank_size": int(bank.shape[0]),
               "patches": int(maps.shape[0] * maps.shape[2] * maps.shape[3]), "image_size": size, **how}
    scored, maps = _score_test(net, bank, tests, size, pre.mean, pre.std, threshold, device)
    metrics.update(scored)
    ck.atomic_write_json(run / "metrics.json", metrics)
    _report(run, metrics, tests, maps, threshold, size)
    _mark_done(run)
    log(f"wrote {run}/model.safetensors (memory bank of {bank.shape[0]} patches), metrics.json, report.html")
    return DenseResult(run, metrics, summary=SUMMARY)


def _mark_done(run: Path) -> None:
    """last/ with a finished run state, as a classification run leaves it: the folder now holds a run,
    so a new `train --out` here is refused unless --overwrite (store/runfolder.py)."""
    from ..engine.run_state import RunState
    ck.atomic_replace_dir(lambda tmp: ck.atomic_write_json(tmp / "state.json",
                                                           {"run_state": RunState(done=True).__dict__}),
                          run / "last")


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
    load_state_dict_checked(extractor, {k[len("encoder."):]: v for k, v in tensors.items()
                                        if k.startswith("encoder.")}, str(weights))
    threshold = float(ck.read_safetensors_metadata(weights)["threshold"])
    return PatchFeatures(extractor.eval()).to(_device()), tensors["memory_bank"], threshold, src


def evaluate(run_dir, data, *, log=print) -> dict:
    net, bank, threshold, src = load_run(run_dir)
    items = test_items(Path(data).expanduser())
    scored, _ = _score_test(net, bank, items, src["image_size"], src["mean"], src["std"], threshold, _device())
    return {"task": NAME, "threshold": threshold, **scored}


def predict(run_dir, inputs: list[str], output: str | None, *, log=print) -> list[dict]:
    """Per input: image score, good/defect at the run's threshold, and (with --output) a heat map."""
    from .segment import input_images, output_stems
    net, bank, threshold, src = load_run(run_dir)
    paths = input_images(inputs)
    stems = output_stems(paths)
    out = runs.free_output_dir(output, [f"{s}_heatmap.png" for s in stems]) if output else None
    maps = score_maps(embed(net, paths, src["image_size"], src["mean"], src["std"], _device()), bank,
                      src["image_size"], _device())
    rows = []
    for p, stem, m in zip(paths, stems, maps):
        score = float(m.max())
        row = {"input": str(p), "score": round(score, 6), "label": "defect" if score >= threshold else "good"}
        if out is not None:
            row["heatmap"] = str(_write_heatmap(p, m, threshold, out / f"{stem}_heatmap.png"))
        rows.append(row)
    return rows


def _write_heatmap(image: Path, amap: np.ndarray, threshold: float, path: Path) -> Path:
    """The map over the image, coloured from 0 (blue) to 2 x threshold (red), at the image's size."""
    from matplotlib import colormaps
    from ..data.images import open_rgb
    im = open_rgb(str(image))
    scaled = np.clip(amap / max(2 * threshold, 1e-12), 0, 1)
    heat = Image.fromarray((scaled * 255).astype(np.uint8), "L").resize(im.size, Image.BILINEAR)
    colour = colormaps["jet"](np.asarray(heat) / 255.0)[..., :3] * 255
    blend = 0.5 * np.asarray(im, dtype=np.float32) + 0.5 * colour
    Image.fromarray(blend.astype(np.uint8), "RGB").save(path)
    return path
