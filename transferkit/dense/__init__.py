"""Dense tasks: segmentation and defect (anomaly) detection, transferred from a classification backbone.

A task is one module with the same small contract, found through `TASKS` (no if-chains on the name):

    NAME: str
    LAYOUT: str                                    the data layout in words, for messages
    SUMMARY: tuple[str, ...]                       metrics keys `train` prints when it finishes
    looks_like(path) -> bool                       DATA has this task's layout
    train(cfg, *, resume, log, progress) -> DenseResult
    evaluate(run_dir, data, *, log) -> dict        metrics of a finished run on labelled DATA
    predict(run_dir, inputs, output, *, log) -> list[dict]   one row per input, files under `output`
    predictor(run_dir) -> (classes, fn)           fn(paths) -> one row of arrays per image (the notebook API)
    DEFAULTS: dict (optional)                      option values the task uses unless the command line,
                                                   the recipe or the notebook call gives them (task_defaults)

`train` keeps the rules of classification runs: the folder is claimed and locked, a start that fails
before its first step leaves nothing, `--stop-after N` and signals leave RUN/last/ and `--resume`
continues to the same result after checking the data's fingerprint. `transferkit compare` on a dense
layout runs dense/compare.py.

`transferkit train DATA --task auto` picks a dense task when exactly one task's layout matches DATA
(and says so), else classification. `evaluate` and `predict` dispatch on the task recorded in the
run's run.json. Detection (COCO/YOLO/VOC) is transferkit/detection/task.py.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path

from ..config import ConfigError, TrainConfig
from ..store.runfolder import run_task  # noqa: F401  (dense.run_task: the public spelling)

# task name -> module (imported on first use, so that classification never pays for smp)
TASKS = {"segment": "transferkit.dense.segment", "anomaly": "transferkit.dense.anomaly",
         "detect": "transferkit.detection.task"}


@dataclass
class DenseResult:
    """What `train` returns for a dense run (the fields the CLI reads of a classification FitResult)."""

    run_dir: Path
    metrics: dict | None
    state: object = None
    interrupted: bool = False
    signal: int | None = None
    summary: tuple[str, ...] = field(default_factory=tuple)


def task_module(name: str):
    if name not in TASKS:
        raise ConfigError(f"--task {name}: not a dense task; dense tasks: {', '.join(TASKS)}")
    return importlib.import_module(TASKS[name])


def infer_task(data: str) -> str | None:
    """The dense task whose layout DATA has, or None (classification). Two matches are an error."""
    path = Path(data).expanduser()
    if not path.is_dir():
        return None
    found = [name for name in TASKS if task_module(name).looks_like(path)]
    if len(found) > 1:
        raise ConfigError(f"{data} has the layout of several tasks ({', '.join(found)}); pass --task "
                          + " or --task ".join(found))
    return found[0] if found else None


def resolve_task(cfg: TrainConfig, log=print) -> str:
    """The task a new run trains: `cfg.task`, or for `auto` the one DATA's layout says (logged)."""
    if cfg.task != "auto":
        if cfg.task != "classify":
            task_module(cfg.task)  # `detect` stops here, before anything is written
        return cfg.task
    task = infer_task(cfg.data) if cfg.data else None
    if task is None:
        return "classify"
    log(f"task: {task} (inferred from the layout of {cfg.data}: {task_module(task).LAYOUT}; "
        "pass --task to choose another)")
    return task


def task_defaults(task: str | None, data) -> dict:
    """The option values a run of `task` (`auto` or None: the one DATA's layout says) starts from, below
    the recipe and the explicit options: detect trains batches of 8 unless told otherwise. {} for
    classification and for data that is not a folder."""
    if task in (None, "auto"):
        task = infer_task(str(data)) if isinstance(data, (str, Path)) and str(data) else None
    return dict(getattr(task_module(task), "DEFAULTS", {})) if task in TASKS else {}


def with_task_defaults(recipe: dict, task: str | None, data) -> dict:
    """`recipe` with the task's defaults beneath it (what `make_config` takes as its recipe): the task
    and DATA given on the command line or in the call win over the recipe's."""
    return {**task_defaults(task or recipe.get("task"), data or recipe.get("data")), **recipe}


def is_dense(task: str) -> bool:
    return task in TASKS
