"""The server's model for dense runs: `predict_images([PIL images], names)` -> one row per image, through
the same code as `transferkit predict` for the run's task (dense/segment.py, dense/anomaly.py,
detection/predict.py), so a served answer is the command's answer.

    segment  {"mask_png": base64 index PNG (palette colours, 0 = background, at the image's size),
              "classes": {class: share of the pixels}}
    detect   {"boxes": [{"label", "score", "box": [x1, y1, x2, y2]}], best score first, in the
              image's pixels, scores >= 0.05 (the detector's floor, as `predict` writes them)}
    anomaly  {"score", "label": good|defect, "is_anomalous", "threshold" (the run's, recorded at
              training), "heatmap_png": base64 RGB PNG at the image's size, 0 blue .. 2 x threshold red}

Every row also has "input", "task", "width", "height". Calls are serialised by a lock (one model, one
device), like engine.Predictor. The answers come from the task module's `predictor(run_dir)`, the
function `transferkit predict` and the notebook API's Model.predict run too.
"""

from __future__ import annotations

import base64
import io
import json
import threading
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..config import DENSE_TASKS
from ..store.runfolder import run_task


def png_base64(im: Image.Image) -> str:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


class DensePredictor:
    """A dense run for the server: the task module's `predictor(run_dir)` (what `transferkit predict`
    and the notebook API's Model.predict run), its answers turned into JSON rows."""

    modality = "image"

    def __init__(self, run_dir: str | Path):
        from ..dense import task_module
        from ..dense.runs import open_run
        self.run_dir = Path(run_dir)
        self.task = run_task(self.run_dir)
        detect = self.task == "detect"
        self.cfg, self.src = open_run(self.run_dir, self.task, needs=("detector.safetensors", "detector.json")
                                      if detect else ("model.safetensors",))
        self.classes, self._run = task_module(self.task).predictor(self.run_dir)
        self.classes = list(self.classes)
        self._lock = threading.RLock()
        self.extra: dict = {}
        if detect:
            spec = json.loads((self.run_dir / "detector.json").read_text(encoding="utf-8"))["spec"]
            self.pre = {"size": spec["image_size"]}
        else:
            self.pre = {"size": self.src["image_size"], "mean": self.src["mean"], "std": self.src["std"]}
        if self.task == "segment":
            from ..dense.segment import palette
            pal = palette(len(self.classes))
            self.extra["palette"] = [pal[3 * k:3 * k + 3] for k in range(len(self.classes))]
        if self.task == "anomaly":
            from ..store.checkpoint import read_safetensors_metadata
            self.extra["threshold"] = float(read_safetensors_metadata(self.run_dir / "model.safetensors")["threshold"])

    def info(self) -> dict:
        return {"task": self.task, "classes": self.classes, "modality": "image",
                "source": {"id": self.cfg.backbone, **({"arch": self.src["arch"]} if "arch" in self.src else {})},
                "preprocess": self.pre, "strategy": self.cfg.strategy, "tta": False, "tta_views": 0, **self.extra}

    def predict_images(self, images: list, names: list[str] | None = None, top_k: int = 5) -> list[dict]:
        images = [im.convert("RGB") for im in images]
        names = names or [f"image{i}" for i in range(len(images))]
        with self._lock, torch.no_grad():
            got = self._run(images)
        return [{"input": n, "task": self.task, "width": im.width, "height": im.height, **self._row(g, im)}
                for n, im, g in zip(names, images, got)]

    def _row(self, got: dict, im) -> dict:
        if self.task == "segment":
            from ..dense.segment import mask_image
            return {"mask_png": png_base64(mask_image(got["mask"], len(self.classes))), "classes": got["classes"]}
        if self.task == "anomaly":
            from ..dense.anomaly import heat_colours
            heat = heat_colours(got["map"], got["threshold"], im.size).astype(np.uint8)
            return {"score": got["score"], "label": got["label"], "is_anomalous": got["label"] == "defect",
                    "threshold": got["threshold"], "heatmap_png": png_base64(Image.fromarray(heat, "RGB"))}
        # rounded as `transferkit predict` writes them (detection/predict.py prediction_rows)
        return {"boxes": [{"label": label, "score": round(float(s), 5), "box": [round(v, 2) for v in b]}
                          for b, s, label in zip(got["boxes"].tolist(), got["scores"].tolist(), got["labels"])]}


def load_predictor(run_dir: str | Path):
    """The server's model for a run: a DensePredictor for segment/detect/anomaly runs, else
    engine.Predictor (classification)."""
    if run_task(run_dir) in DENSE_TASKS:
        return DensePredictor(run_dir)
    from ..engine.predictor import Predictor
    return Predictor(run_dir)
