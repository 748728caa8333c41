"""The notebook API: `transferkit.fit(data, ...)` trains and returns a `Model`; `transferkit.load(RUN)`
opens a finished run. Same engine, same checks and the same run directory as `transferkit train`.

    model = transferkit.fit(pairs, backbone="bundled:efficientnet_lite0", shots=10, out="runs/x")
    model.predict(image)            # {'label': ..., 'probability': ..., 'top': [...]}
    model.evaluate(test_pairs)      # metrics dict, as `transferkit evaluate --json`
    model.report()                  # path of report.html

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

from .config import load_recipe, make_config
from .data.materialise import is_in_memory, materialise


class Model:
    """A finished run: its classes, metrics and configuration, and the model (loaded on first use)."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        from . import dense
        from .config import read_config
        self.task = dense.run_task(self.run_dir)
        done = "metrics.json" if dense.is_dense(self.task) else "model.safetensors"
        if not (self.run_dir / done).is_file():
            raise FileNotFoundError(f"{self.run_dir} is not a finished transferkit run (no {done})")
        self.config = read_config(self.run_dir / "config.yaml")
        self._loaded = None

    def __repr__(self) -> str:
        key = "accuracy" if self.task == "classify" else self._dense().SUMMARY[0]
        value = self.metrics.get(key)
        return (f"Model({str(self.run_dir)!r}, "
                + ("" if self.task == "classify" else f"task={self.task!r}, ")
                + f"backbone={self.config.backbone!r}, strategy={self.config.strategy!r}, classes={len(self.classes)}"
                + (f", test {key}={value:.4f})" if isinstance(value, float) else ")"))

    def _dense(self):
        from . import dense
        return dense.task_module(self.task)

    @property
    def metrics(self) -> dict:
        """The run's metrics.json (test split), or {} if it has none."""
        p = self.run_dir / "metrics.json"
        return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else {}

    def _model(self):
        if self._loaded is None:
            if self.task != "classify":  # (classes, fn(paths) -> rows of arrays): the task's predictor
                self._loaded = self._dense().predictor(self.run_dir)
            else:
                from .engine.run import load_run
                self._loaded = load_run(self.run_dir)
        return self._loaded

    @property
    def classes(self) -> list[str]:
        if self.task != "classify":
            return list(self._model()[0])
        return list(self._model()[0].class_names)

    @property
    def modality(self) -> str:
        return "image" if self.task != "classify" else self._model()[0].spec.modality

    def predict(self, inputs: Any, *, top_k: int = 1, batch_size: int = 64) -> dict | list[dict]:
        """Labels for one input or a list: image paths or PIL images (image runs), strings (text runs).
        One input gives one row `{'input', 'label', 'probability', 'top'}`; a list gives a list."""
        from .data.splits import Example
        from .engine.run import predict_items
        single = not isinstance(inputs, (list, tuple))
        xs = [inputs] if single else list(inputs)
        model, cfg = self._model()
        with tempfile.TemporaryDirectory(prefix="transferkit-predict-") as tmp:
            paths = [self._as_input(x, i, Path(tmp)) for i, x in enumerate(xs)]
            if self.task != "classify":
                rows = cfg([Path(p) for p in paths])  # the dense task's predictor: arrays per image
            else:
                rows = predict_items(model, cfg, [Example(p, "") for p in paths], top_k=top_k,
                                     batch_size=batch_size)
        for i, (row, x) in enumerate(zip(rows, xs)):
            row["input"] = str(x) if isinstance(x, (str, Path)) else f"<image {i}>"
        return rows[0] if single else rows

    def _as_input(self, x: Any, i: int, tmp: Path) -> str:
        if self.modality == "text":
            if not isinstance(x, str):
                raise TypeError(f"a text model predicts on strings, got {type(x).__name__}")
            return x
        if hasattr(x, "save") and hasattr(x, "mode"):  # a PIL image: the engine reads files
            path = tmp / f"{i:06d}.png"
            x.save(path, format="PNG")
            return str(path)
        if isinstance(x, (str, Path)):
            return str(x)
        raise TypeError(f"an image model predicts on image paths or PIL images, got {type(x).__name__}")

    def evaluate(self, data: Any = None, *, batch_size: int = 64, tta: bool | None = None) -> dict:
        """Metrics on labelled data (a path, (x, label) pairs or a DataFrame); without data, the
        run's own test-split metrics."""
        if data is None:
            return self.metrics
        if self.task != "classify":
            if is_in_memory(data):
                raise TypeError(f"a {self.task} run evaluates on a folder in its layout "
                                f"({self._dense().LAYOUT}), not on {type(data).__name__}")
            return self._dense().evaluate(self.run_dir, str(data), log=lambda *a, **k: None)
        from .engine.run import evaluate_loaded
        model, cfg = self._model()
        with tempfile.TemporaryDirectory(prefix="transferkit-evaluate-") as tmp:
            path = _as_path(data, Path(tmp), "evaluate", cfg.text_col, cfg.label_col)
            metrics = evaluate_loaded(model, cfg, path, batch_size=batch_size, tta=tta, run_dir=self.run_dir)[0]
        if is_in_memory(data):
            metrics["data"] = f"<{type(data).__name__} of {metrics['n']} items>"
        return metrics

    def report(self) -> Path:
        """The path of the run's report.html (open it in a browser, or IPython.display.IFrame)."""
        return self.run_dir / "report.html"


def _as_path(data: Any, dest: Path, name: str, text_col: str, label_col: str) -> str | None:
    if data is None:
        return None
    if not is_in_memory(data):
        return str(data)
    return materialise(data, dest, name, text_col=text_col, label_col=label_col)[0]


def fit(data: Any, backbone: str = "bundled:efficientnet_lite0", strategy: str | None = None, *,
        out: str | Path | None = None, val: Any = None, test: Any = None, config: str | None = None,
        quiet: bool = False, **options: Any) -> Model:
    """Fine-tune `backbone` on `data` and return the finished run as a `Model`.

    data, val, test: a path (folder of class folders, CSV/TSV/JSONL), a list of (x, label) pairs
    (x: PIL image, image path or text) or a pandas DataFrame (`text`/`path` and `label` columns).
    Data given as objects is written to OUT.data/ (or next to a temporary run) as CSV files, so
    the run's config.yaml names real files. `config`: a recipe name or path; `options`: any
    TrainConfig field (`shots=10`, `steps=200`, `lr=3e-4`, ...), checked as the CLI checks them.
    `strategy`: default two_phase, or the task's own default for a dense task.

    Dense tasks: `task="segment" | "detect" | "anomaly"` (or DATA's layout says it): `data` is the
    folder in the task's layout (and `test` one in the same layout, or a path of it).
    """
    from . import dense
    from .train import train
    task = options.get("task", "auto")
    if task == "auto" and not is_in_memory(data):
        task = dense.infer_task(str(data)) or "classify"
    if dense.is_dense(task):
        if any(is_in_memory(v) for v in (data, val, test)):
            raise TypeError(f"a {task} run reads a folder in its layout ({dense.task_module(task).LAYOUT}); "
                            "pass its path")
        options["task"] = task
    if strategy is None:
        strategy = "auto" if dense.is_dense(task) else "two_phase"
    run = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="transferkit-")) / "run"
    recipe = load_recipe(config) if config else {}
    text_col = options.get("text_col", recipe.get("text_col", "text"))
    label_col = options.get("label_col", recipe.get("label_col", "label"))
    given = {"data": data, "val": val, "test": test}
    written = {}
    if any(is_in_memory(v) for v in given.values()):
        make_config(recipe, backbone=backbone, strategy=strategy, out=str(run), **options)  # check first
        dest = run.with_name(run.name + ".data")
        written = {k: _as_path(v, dest, k, text_col, label_col) for k, v in given.items() if is_in_memory(v)}
    paths = {k: written.get(k, None if v is None else str(v)) for k, v in given.items()}
    cfg = make_config(recipe, backbone=backbone, strategy=strategy, out=str(run), **paths, **options)
    result = train(cfg, quiet=quiet)
    if result.interrupted:
        raise RuntimeError(f"training stopped early (stop_after); continue with "
                           f"'transferkit train --resume {run}' and then transferkit.load('{run}')")
    return Model(run)


def load(run_dir: str | Path) -> Model:
    """Open a finished run directory (from `fit` or `transferkit train`)."""
    return Model(run_dir)
