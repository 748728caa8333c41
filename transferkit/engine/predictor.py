"""A loaded run kept in memory for many predictions (the server's model): in-memory images and
strings in, top-k labels out, through the same transforms, batching and probabilities as
`transferkit predict` (`engine.run`)."""

from __future__ import annotations

import threading
from pathlib import Path

import torch

from ..data import Example
from ..infer.loaders import collate_for, make_dataset
from ..infer.predict import predict_probs
from ..infer.predictions import default_device, topk_rows
from .run import load_run
from ..infer.tta import combine, view_tensor, views_of


def preprocess_of(model, cfg) -> dict:
    """The preprocessing a run's model expects, with the run's own image size."""
    pre = model.spec.preprocess.to_dict()
    if model.spec.modality == "image" and cfg.image_size:
        pre["size"] = int(cfg.image_size)
    return pre


class Predictor:
    """`predict_images([PIL images])` / `predict_texts([strings])` -> rows of top-k labels.

    Calls are serialised by a lock: one model, one device, and fast tokenizers are not re-entrant.
    The image transforms run under it too: a view's random crop is seeded through torch's global
    generator (infer/tta.py `view_tensor`), which concurrent requests would otherwise reseed under
    each other's feet (the same image posted from 20 threads got up to 11 different answers).
    """

    def __init__(self, run_dir: str | Path):
        self.model, self.cfg = load_run(run_dir)
        self.run_dir = Path(run_dir)
        self.modality = self.model.spec.modality
        self.classes = list(self.model.class_names)
        self._lock = threading.RLock()
        if self.modality == "image":
            ds = make_dataset(self.model, [], train=False, augment=False,
                              image_size=self.cfg.image_size, seed=0)
            self.transform = ds.transform
            self.view_transform = getattr(ds, "view_transform", None)
        self.views = views_of(self.cfg) if getattr(self, "view_transform", None) is not None else 0

    def info(self) -> dict:
        return {"classes": self.classes, "modality": self.modality,
                "source": self.model.spec.source.to_dict(), "preprocess": preprocess_of(self.model, self.cfg),
                "strategy": self.cfg.strategy, "tta": bool(self.cfg.tta and self.modality == "image"),
                "tta_views": self.views}

    def predict_images(self, images: list, names: list[str] | None = None, top_k: int = 5) -> list[dict]:
        images = [im.convert("RGB") for im in images]
        with self._lock:
            x = torch.stack([self.transform(im) for im in images])
            views = [torch.stack([view_tensor(im, j, self.view_transform) for im in images])
                     for j in range(self.views)]
            return self._predict([x], names or [f"image{i}" for i in range(len(images))], top_k, views)

    def predict_texts(self, texts: list[str], top_k: int = 5) -> list[dict]:
        collate = collate_for(self.model)
        with self._lock:  # the tokenizer too
            batch, _ = collate([(t, -1) for t in texts])
        return self._predict([batch], texts, top_k)

    def _predict(self, batches: list, names: list[str], top_k: int, views: list | None = None) -> list[dict]:
        loader = [(b, torch.full((len(names),), -1)) for b in batches]
        with self._lock:
            probs, _ = predict_probs(self.model, loader, default_device(), tta=self.cfg.tta)
            if views and self.cfg.tta:  # as predict_probs(views=K) does for files (infer/tta.py)
                with torch.no_grad():
                    self.model.eval()
                    extra = [self.model(v.to(default_device())).float().softmax(-1).cpu() for v in views]
                probs = combine(torch.from_numpy(probs), True, extra).numpy()
        return topk_rows([Example(n, "") for n in names], torch.from_numpy(probs), self.classes, top_k)
