"""The notebook API: `transferkit.fit(data, ...)` trains and returns a `Model`; `transferkit.load(RUN)`
opens a finished run. Same engine, same defaults, same checks and the same run directory as
`transferkit train`.

    model = transferkit.fit(pairs, shots=10, out="runs/x")   # the CLI's defaults: strategy auto
    model.predict([img, "b.jpg", array])   # DataFrame: input, label, probability, top
    model.predict_proba(images)            # [N, classes] array, columns in model.classes order
    model.embed(images)                    # [N, D] features of the fine-tuned backbone
    model.module                           # the torch module
    model.evaluate(test_pairs)             # metrics dict, as `transferkit evaluate --json`

Dense runs (`task="segment" | "detect" | "anomaly"`, or inferred from DATA's layout) are Models too:
`predict` gives arrays per image: segment {'mask': uint8 [H, W] class indices, 'classes'}, detect
{'boxes': [N, 4] x1 y1 x2 y2, 'scores', 'labels'}, anomaly {'score', 'label', 'map': [H, W], 'threshold'},
each at the image's own size; `evaluate(PATH)` gives the task's metrics.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from ..config import load_recipe, make_config
from ..data.materialise import is_in_memory
from .inputs import absolute, as_numpy, as_path, device, is_array, shown_input, split_inputs, to_pil
from .words import api_errors, api_words  # noqa: F401 (api_words: public)

# options besides data/val/test/out that name files or folders: recorded absolute (when they name
# something that exists), so that the run works from any directory
PATH_OPTIONS = ("unlabelled", "class_text", "bridge", "cache_dir")


class Model:
    """A finished run: its classes, metrics and configuration, and the model (loaded on first use)."""

    def __init__(self, run_dir: str | Path):
        self._shown = str(run_dir)  # as given, for repr
        self.run_dir = absolute(run_dir)
        from .. import dense
        from ..config import read_config
        self.task = dense.run_task(self.run_dir)
        done = "metrics.json" if dense.is_dense(self.task) else "model.safetensors"
        if not (self.run_dir / done).is_file():
            raise FileNotFoundError(f"{self._shown} is not a finished transferkit run (no {done}); "
                                    "train one with transferkit.fit(data, out=...)")
        self.config = read_config(self.run_dir / "config.yaml")
        self._loaded = None

    def __repr__(self) -> str:
        key = "accuracy" if self.task == "classify" else self._dense().SUMMARY[0]
        value = self.metrics.get(key)
        return (f"Model({self._shown!r}, "
                + ("" if self.task == "classify" else f"task={self.task!r}, ")
                + f"backbone={self.config.backbone!r}, strategy={self.config.strategy!r}, classes={len(self.classes)}"
                + (f", test {key}={value:.4f})" if isinstance(value, float) else ")"))

    def _dense(self):
        from .. import dense
        return dense.task_module(self.task)

    @property
    def metrics(self) -> dict:
        """The run's metrics.json (test split), or {} if it has none."""
        p = self.run_dir / "metrics.json"
        return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else {}

    def _model(self):
        if self._loaded is None:
            with api_errors():
                if self.task != "classify":  # (classes, fn(paths) -> rows of arrays): the task's predictor
                    self._loaded = self._dense().predictor(self.run_dir)
                else:
                    from ..engine.run import load_run
                    self._loaded = load_run(self.run_dir)
        return self._loaded

    @property
    def module(self):
        """The trained torch module, in eval mode on the device the run predicts on (for classification
        the very module `predict` uses: change it and predictions change). Classification:
        a `TransferModel` (`.backbone`: inputs -> pooled features, `.head`: features -> logits,
        `.class_names`); segment: the segmenter; detect: the detector; anomaly: the feature network."""
        if self.task == "classify":
            return self._model()[0]
        if self.task == "detect":
            from ..detection.model import load_detector
            return load_detector(self.run_dir)[0].eval()
        return self._dense().load_run(self.run_dir)[0]

    @property
    def classes(self) -> list[str]:
        if self.task != "classify":
            return list(self._model()[0])
        return list(self._model()[0].class_names)

    @property
    def modality(self) -> str:
        return "image" if self.task != "classify" else self._model()[0].spec.modality

    def predict(self, inputs: Any, *, top_k: int = 1, batch_size: int = 64, tta: bool | None = None):
        """Labels for one input or many, as a pandas DataFrame with one row per input: `input`,
        `label`, `probability` and `top` (the `top_k` best as (label, probability) pairs), and
        `error` when an input could not be read.

        Inputs: image paths, PIL images, numpy arrays (H x W or H x W x C, uint8 0-255 or float
        0-1) and torch tensors (C x H x W, as torchvision gives them) for image runs; strings for
        text runs. A list, tuple or Series is many inputs, and so is a 4-D array or tensor (a
        batch). `tta`: None = as the run was trained. Dense runs give a dict of arrays per input
        (a list for many), see the module's docstring."""
        from ..data.splits import Example
        from ..engine.run import predict_items
        single, xs = split_inputs(inputs, self.modality)
        model, fn = self._model()
        with api_errors(), tempfile.TemporaryDirectory(prefix="transferkit-predict-") as tmp:
            paths = [self._as_input(x, i, Path(tmp)) for i, x in enumerate(xs)]
            if self.task != "classify":
                rows = fn([Path(p) for p in paths])  # the dense task's predictor: arrays per image
                for i, (row, x) in enumerate(zip(rows, xs)):
                    row["input"] = shown_input(x, i)
                return rows[0] if single else rows
            rows = predict_items(model, fn, [Example(p, "") for p in paths], top_k=top_k,
                                 batch_size=batch_size, tta=tta)
        import pandas as pd
        table = pd.DataFrame({
            "input": [shown_input(x, i) for i, x in enumerate(xs)],
            "label": [r["label"] for r in rows],
            "probability": [r["probability"] for r in rows],
            "top": [[(t["label"], t["probability"]) for t in r["top"]] for r in rows]})
        if any(r.get("error") for r in rows):
            table["error"] = [r.get("error") for r in rows]
        return table

    def predict_proba(self, inputs: Any, *, batch_size: int = 64, tta: bool | None = None):
        """Class probabilities as a float32 numpy array [N, len(classes)], columns in the order of
        `model.classes` (one row for one input); the inputs `predict` takes. An input that cannot
        be read raises `DataError`."""
        import numpy as np
        from ..infer.predict import predict_probs
        from ..infer.tta import views_of
        model, cfg = self._classifier("predict_proba")
        with api_errors(), tempfile.TemporaryDirectory(prefix="transferkit-predict-") as tmp:
            loader = self._loader(inputs, Path(tmp), batch_size)
            probs, _ = predict_probs(model, loader, device(), tta=cfg.tta if tta is None else tta,
                                     views=views_of(cfg, tta))
        return np.asarray(probs, dtype=np.float32)

    def embed(self, inputs: Any, *, batch_size: int = 64):
        """The fine-tuned backbone's pooled features (what the head reads) as a float32 numpy array
        [N, D], one row per input; the inputs `predict` takes. For the source model's frozen
        features of a whole folder, use `transferkit embed`."""
        import numpy as np
        import torch
        from ..infer.loaders import to_device
        model, _ = self._classifier("embed")
        feats = []
        with api_errors(), tempfile.TemporaryDirectory(prefix="transferkit-embed-") as tmp, torch.no_grad():
            model.eval()
            for x, _ in self._loader(inputs, Path(tmp), batch_size):
                feats.append(model.forward_features(to_device(x, device())).float().cpu())
        return torch.cat(feats).numpy().astype(np.float32)

    def _classifier(self, what: str):
        if self.task != "classify":
            raise TypeError(f"{what} is for classification runs; this is a {self.task} run: "
                            "predict gives its arrays, module gives its network")
        return self._model()

    def _loader(self, inputs: Any, tmp: Path, batch_size: int):
        from ..data import DataError
        from ..data.splits import Example
        from ..infer.loaders import eval_loader, make_dataset
        model, cfg = self._model()
        _, xs = split_inputs(inputs, self.modality)
        items = [Example(self._as_input(x, i, tmp), "") for i, x in enumerate(xs)]
        if self.modality == "image":
            from ..data.images import check_image
            bad = next(((e.x, r) for e in items if (r := check_image(Path(e.x)))), None)
            if bad:
                raise DataError(f"{bad[0]}: {bad[1]}")
        ds = make_dataset(model, items, train=False, augment=False, image_size=cfg.image_size, seed=0)
        return eval_loader(model, ds, batch_size)

    def _as_input(self, x: Any, i: int, tmp: Path) -> str:
        if self.modality == "text":
            if not isinstance(x, str):
                raise TypeError(f"a text model predicts on strings, got {type(x).__name__}")
            return x
        if isinstance(x, (str, Path)):
            return str(x)
        if hasattr(x, "save") and hasattr(x, "mode"):  # a PIL image: the engine reads files
            path = tmp / f"{i:06d}.png"
            x.save(path, format="PNG")
            return str(path)
        if is_array(x):
            cfg = self.config
            if cfg.chan_mean is not None:  # the run reads arrays (.npy), normalised by its own statistics
                import numpy as np
                path = tmp / f"{i:06d}.npy"
                np.save(path, as_numpy(x))
                return str(path)
            path = tmp / f"{i:06d}.png"
            to_pil(x).save(path, format="PNG")
            return str(path)
        raise TypeError(f"an image model predicts on image paths, PIL images, numpy arrays or torch "
                        f"tensors, got {type(x).__name__}")

    def evaluate(self, data: Any = None, *, batch_size: int = 64, tta: bool | None = None) -> dict:
        """Metrics on labelled data (a path, (x, label) pairs or a DataFrame); without data, the
        run's own test-split metrics."""
        if data is None:
            return self.metrics
        with api_errors():
            if self.task != "classify":
                if is_in_memory(data):
                    raise TypeError(f"a {self.task} run evaluates on a folder in its layout "
                                    f"({self._dense().LAYOUT}), not on {type(data).__name__}")
                return self._dense().evaluate(self.run_dir, str(data), log=lambda *a, **k: None)
            from ..engine.run import evaluate_loaded
            model, cfg = self._model()
            with tempfile.TemporaryDirectory(prefix="transferkit-evaluate-") as tmp:
                path = as_path(data, Path(tmp), "evaluate", cfg.text_col, cfg.label_col)
                metrics = evaluate_loaded(model, cfg, path, batch_size=batch_size, tta=tta,
                                          run_dir=self.run_dir)[0]
        if is_in_memory(data):
            metrics["data"] = f"<{type(data).__name__} of {metrics['n']} items>"
        return metrics

    def report(self) -> Path:
        """The path of the run's report.html (open it in a browser, or IPython.display.IFrame)."""
        return self.run_dir / "report.html"


def fit(data: Any = None, backbone: str | None = None, strategy: str | None = None, *,
        out: str | Path | None = None, val: Any = None, test: Any = None, config: str | None = None,
        overwrite: bool = False, resume: bool = False, quiet: bool = False, **options: Any) -> Model:
    """Fine-tune `backbone` on `data` and return the finished run as a `Model`.

    data, val, test: a path (folder of class folders, CSV/TSV/JSONL), a list of (x, label) pairs
    (x: PIL image, image path, numpy array or tensor as `Model.predict` reads them, or text) or a
    pandas DataFrame (`text`/`path` and `label` columns).
    Data given as objects is written to OUT.data/ (or next to a temporary run) as CSV files, so
    the run's config.yaml names real files; every path the run records is absolute.
    `config`: a recipe name or path; `options`: any TrainConfig field (`shots=10`, `steps=200`,
    `lr=3e-4`, ...), checked as the CLI checks them. Defaults are the CLI's (`transferkit train`):
    backbone bundled:efficientnet_lite0, strategy auto (probe or LP-FT, chosen on held-out labels;
    a dense task's own default for segment/detect/anomaly).

    overwrite=True: train again into an `out` that holds a run. resume=True: continue the
    interrupted run in `out` as it was configured (then data and training options are not needed;
    only runtime options such as `stop_after` apply).

    Dense tasks: `task="segment" | "detect" | "anomaly"` (or DATA's layout says it): `data` is the
    folder in the task's layout (and `test` one in the same layout, or a path of it).
    """
    with api_errors():
        return _fit(data, backbone, strategy, out=out, val=val, test=test, config=config,
                    overwrite=overwrite, resume=resume, quiet=quiet, options=options)


def _fit(data, backbone, strategy, *, out, val, test, config, overwrite, resume, quiet, options) -> Model:
    from .. import dense
    from ..store.runfolder import check_out_dir
    from ..train import train
    if resume:
        return _resume(out, quiet, options)
    if data is None:
        raise TypeError("fit needs data: a path, a list of (x, label) pairs or a DataFrame")
    task = options.get("task", "auto")
    if task == "auto" and not is_in_memory(data):
        task = dense.infer_task(str(data)) or "classify"
    if dense.is_dense(task):
        if any(is_in_memory(v) for v in (data, val, test)):
            raise TypeError(f"a {task} run reads a folder in its layout ({dense.task_module(task).LAYOUT}); "
                            "pass its path")
        options["task"] = task
    run = absolute(out) if out is not None else Path(tempfile.mkdtemp(prefix="transferkit-")) / "run"
    recipe = load_recipe(config) if config else {}
    recipe = dense.with_task_defaults(recipe, task, None)  # detect: batches of 8 unless given
    for k in PATH_OPTIONS:
        if isinstance(options.get(k), (str, Path)) and Path(options[k]).expanduser().exists():
            options[k] = str(absolute(options[k]))
    chosen = {"backbone": backbone, "strategy": strategy, "overwrite": overwrite or None}  # None: the CLI's default
    text_col = options.get("text_col", recipe.get("text_col", "text"))
    label_col = options.get("label_col", recipe.get("label_col", "label"))
    given = {"data": data, "val": val, "test": test}
    first = {k: None if v is None or is_in_memory(v) else str(absolute(v)) for k, v in given.items()}
    check_out_dir(make_config(recipe, out=str(run), **first, **chosen, **options))  # before anything is written
    dest = run.with_name(run.name + ".data")
    paths = {k: as_path(v, dest, k, text_col, label_col) for k, v in given.items()}
    cfg = make_config(recipe, out=str(run), **paths, **chosen, **options)
    result = train(cfg, quiet=quiet)
    if result.interrupted:
        raise RuntimeError(f"training stopped early (stop_after); continue it with "
                           f"transferkit.fit(out='{out or run}', resume=True)")
    return Model(out if out is not None else run)


def _resume(out, quiet: bool, options: dict) -> Model:
    from ..config import read_config
    from ..engine.resume import RUNTIME_OPTIONS
    from ..train import train
    if out is None:
        raise TypeError("resume=True continues the run in out: pass out='RUN_DIR'")
    run = absolute(out)
    recorded = read_config(run / "config.yaml") if (run / "config.yaml").is_file() else None
    changed = sorted(k for k, v in options.items() if k not in RUNTIME_OPTIONS and recorded is not None
                     and getattr(recorded, k, v) != v)
    if changed:
        raise TypeError(f"resume=True continues the run as it was configured; {', '.join(changed)} "
                        f"differ from its config.yaml (only {', '.join(RUNTIME_OPTIONS)} may change); "
                        "pass overwrite=True instead to train it again")
    cfg = make_config({}, out=str(run), **{k: v for k, v in options.items() if k in RUNTIME_OPTIONS})
    result = train(cfg, resume=True, quiet=quiet)
    if result.interrupted:
        raise RuntimeError(f"training stopped early (stop_after); continue it with "
                           f"transferkit.fit(out='{out}', resume=True)")
    return Model(out)


def load(run_dir: str | Path) -> Model:
    """Open a finished run directory (from `fit` or `transferkit train`)."""
    with api_errors():
        return Model(run_dir)
