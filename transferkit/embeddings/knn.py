"""`transferkit knn`: nearest class mean and k-NN on frozen features, from the labels of DATA's
training split (the same split and shots as `transferkit train` with this seed), scored on its test
split. The methods and their equations: `transferkit.models.prototypes`."""

from __future__ import annotations

import time
from pathlib import Path

from ..data import load_task
from ..data.feature_cache import FeatureCache
from ..infer.features import frozen_features
from ..models.prototypes import knn_scores, nearest_centroid
from .embed import device, load_source


def knn_classify(data: str | Path, backbone, *, shots: int | None = None, k: int = 5, seed: int = 0,
                 val: str | None = None, test: str | None = None, val_fraction: float = 0.2,
                 test_fraction: float = 0.2, image_size: int | None = None, batch_size: int = 64,
                 cache: FeatureCache | None = None, text_col: str = "text", label_col: str = "label",
                 pooling: str | None = None, max_length: int | None = None) -> dict:
    """Test metrics of nearest class mean and k-NN, and every test prediction.

    The support set is the training split (N `shots` per class if given); validation items are not
    used (there is nothing to tune but k)."""
    from ..report.metrics import classification_metrics
    if k < 1:
        raise ValueError(f"--k must be at least 1, got {k}")
    t0 = time.time()
    task = load_task(data, val=val, test=test, shots=shots, seed=seed, val_fraction=val_fraction,
                     test_fraction=test_fraction, text_col=text_col, label_col=label_col)
    if not task.test:
        raise ValueError(f"{data}: no test items to score; pass --test DATA or a --test-fraction above 0")
    bb = load_source(backbone, pooling=pooling, max_length=max_length, seed=seed)
    if bb.modality != task.modality:
        raise ValueError(f"{bb.source.id} is a {bb.modality} model but {data} holds {task.modality} data")
    feats, labels, _ = frozen_features(bb, task.train + task.test, task.classes, image_size=image_size,
                                       batch_size=batch_size, device=device(), cache=cache)
    n = len(task.train)
    tr, ytr, te, yte = feats[:n], labels[:n], feats[n:], labels[n:]
    c = len(task.classes)
    scores = {"nearest_centroid": (10.0 * nearest_centroid(tr, ytr, te, c)).softmax(-1),
              f"knn_{k}": knn_scores(tr, ytr, te, c, k=k)}
    result = {"source": bb.source.id, "k": k, "shots": shots, "seed": seed, "n_train": n,
              "n_test": len(task.test), "classes": task.classes, "methods": {}}
    for name, probs in scores.items():
        m = classification_metrics(yte.numpy(), probs.double().numpy(), task.classes)
        result["methods"][name] = {key: m[key] for key in ("accuracy", "macro_f1", "per_class",
                                                           "confusion_matrix") if key in m}
    result["predictions"] = [
        {"item": ex.ref or ex.x, "label": ex.label,
         **{name: task.classes[int(p.argmax())] for name, p in ((nm, s[i]) for nm, s in scores.items())}}
        for i, ex in enumerate(task.test)]
    result["seconds"] = round(time.time() - t0, 2)
    return result

