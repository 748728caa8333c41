"""Exploration on development seeds: the engine's probe on raw pooled features against the same probe
on features rescaled to one length (`--feature-norm`, models/heads.py NormLinear), both measured
against benchmarks/fewshot.py's strong probe on identical views.

`extract` runs the strong probe of fewshot.py on one (data set, shots, seed) cell and keeps the exact
training and test views it fitted and scored (so every row below sees the same numbers), in an .npz.
`table` then fits, per cell, the engine's L-BFGS probe (engine/headfit.py) to convergence on raw and
on rescaled views, C chosen by the strong probe's own folds and tie-break (C = 1 at one label), and
writes the paired differences from the strong probe in points. The strong probe is scikit-learn at
its default tolerance: it stops early (about 20 iterations at one label), which regularises; the
converged raw probe was below it at one label per class on clip art.

    python benchmarks/explore_feature_norm.py extract clipart 1 0 --out DIR   # per cell (dev seeds 0-5)
    python benchmarks/explore_feature_norm.py table DIR/*.npz --out benchmarks/results/feature_norm_dev
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def extract(ds: str, shots: int, seed: int, out: Path) -> None:
    import tempfile

    import torch
    from sklearn.linear_model import LogisticRegression

    import fewshot
    from datasets import image_datasets
    from transferkit.data import load_task
    torch.set_num_threads(1)
    tmp = tempfile.mkdtemp(prefix="tk-fnorm-")
    data = image_datasets(tmp, [ds])
    job = {"dataset": ds, "data": str(data[ds]), "shots": shots, "seed": seed, "image_size": 64,
           "backbone": "bundled:efficientnet_lite0", "tmp": tmp, "threads": 1, "test_fraction": 0.5}
    task = load_task(job["data"], shots=shots, seed=seed, val_fraction=0.0, test_fraction=0.5)
    seen = {"proba": []}
    fit, proba = LogisticRegression.fit, LogisticRegression.predict_proba

    def spy_fit(self, X, y):  # the last fit is the final one, on every training view
        seen["X"], seen["y"] = X, y
        return fit(self, X, y)

    def spy_proba(self, X):
        seen["proba"].append(X)
        return proba(self, X)
    LogisticRegression.fit, LogisticRegression.predict_proba = spy_fit, spy_proba
    strong = fewshot._strong_probe(task, job)
    LogisticRegression.fit, LogisticRegression.predict_proba = fit, proba
    n_test = len(task.test)
    test = np.stack([a for a in seen["proba"] if a.shape[0] == n_test][-int(strong["test_views"]):])
    y_test = np.array([task.classes.index(e.label) for e in task.test])
    check = fit(LogisticRegression(C=strong["C"], max_iter=3000), seen["X"], seen["y"])
    assert abs((check.classes_[np.mean([proba(check, v) for v in test], 0).argmax(1)] == y_test).mean()
               - strong["accuracy"]) < 1e-9, "the kept views do not reproduce the strong probe"
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / f"feat_{ds}_{shots}_{seed}.npz", X=seen["X"], y=seen["y"], Xte=test, yte=y_test,
             strong=strong["accuracy"], C=strong["C"], train_views=strong["train_views"])


def table(files: list[str], out: Path) -> None:
    import torch
    from sklearn.model_selection import StratifiedKFold

    from transferkit.engine.headfit import C_GRID, fit_linear_head
    torch.set_num_threads(1)

    def fitted(views, y, C, K):
        head = torch.nn.Linear(views.shape[-1], K).double()
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.zeros_(head.bias)
        fit_linear_head(head, torch.tensor(views.reshape(-1, views.shape[-1])), torch.tensor(np.tile(y, len(views))), C)
        return head

    def accuracy(head, views, y):
        with torch.no_grad():
            p = torch.stack([head(torch.tensor(v)).softmax(-1) for v in views]).mean(0)
        return float((p.argmax(1).numpy() == y).mean())
    rows = []
    for f in sorted(files):
        d = np.load(f)
        ds, shots, seed = Path(f).stem.split("_")[1:]
        V = int(d["train_views"])
        n = len(d["y"]) // V
        y, train, test, y_test = d["y"][:n], d["X"].reshape(V, n, -1), d["Xte"], d["yte"]
        K = int(y.max()) + 1
        radius = float(np.linalg.norm(train[0], axis=-1).mean())
        rescale = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True) * radius  # noqa: E731
        counts = np.bincount(y)
        k = int(min(5, counts.min()))
        row = {"dataset": ds, "shots": int(shots), "seed": int(seed), "strong_probe": float(d["strong"])}
        for name, (a, b) in {"raw": (train, test), "rescaled": (rescale(train), rescale(test))}.items():
            C = 1.0
            if k >= 2:  # the strong probe's folds, held-out views and tie-break
                folds = list(StratifiedKFold(n_splits=k, shuffle=True, random_state=int(seed)).split(y, y))
                cv = {c: np.mean([accuracy(fitted(a[:, tr], y[tr], c, K), a[:2, te], y[te]) for tr, te in folds])
                      for c in C_GRID}
                C = max(cv, key=lambda c: (cv[c], -abs(np.log(c))))
            row[name], row[f"{name}_C"] = accuracy(fitted(a, y, C, K), b, y_test), C
        rows.append(row)
        print(json.dumps(row), flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines = ["# The probe on raw and on rescaled features (development seeds)", "",
             f"`python benchmarks/explore_feature_norm.py table ... --out {out}` on cells extracted with "
             "`explore_feature_norm.py extract` (image size 64, EfficientNet-Lite0, test half 0.5).", "",
             "Paired difference from fewshot.py's strong probe in points, per seed; their mean. Both rows: "
             "the engine's L-BFGS probe fitted to convergence on the strong probe's own views, C by its folds.", "",
             "| cell | raw | rescaled |", "|---|---|---|"]
    for key in sorted({(r["dataset"], r["shots"]) for r in rows}):
        sel = [r for r in rows if (r["dataset"], r["shots"]) == key]
        cells = []
        for name in ("raw", "rescaled"):
            ds_ = [100 * (r[name] - r["strong_probe"]) for r in sel]
            cells.append(" ".join(f"{x:+.1f}" for x in ds_) + f"; **{np.mean(ds_):+.2f}**")
        seeds = ",".join(str(r["seed"]) for r in sel)
        lines.append(f"| {key[0]} {key[1]} labels/class (seeds {seeds}) | {cells[0]} | {cells[1]} |")
    Path(f"{out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("extract")
    e.add_argument("dataset")
    e.add_argument("shots", type=int)
    e.add_argument("seed", type=int)
    e.add_argument("--out", type=Path, required=True)
    t = sub.add_parser("table")
    t.add_argument("files", nargs="+")
    t.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    if a.cmd == "extract":
        extract(a.dataset, a.shots, a.seed, a.out)
    else:
        table(a.files, a.out)


if __name__ == "__main__":
    main()
