"""Experiment tracking through Accelerate's trackers (`--log-with tensorboard|mlflow|wandb`): the
run's hyper-parameters at the start, training loss and learning rate every step, validation metrics
and the confusion matrix at every evaluation, the test metrics at the end. Without `--log-with`
every call here does nothing.

TensorBoard writes to RUN/logs/; MLflow to RUN/logs/ as its tracking folder unless
MLFLOW_TRACKING_URI says otherwise; W&B to its own service, or offline with WANDB_MODE=offline.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

TRACKER_MODULES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}


def accelerator_kwargs(cfg) -> dict:
    if not getattr(cfg, "log_with", None):
        return {}
    return {"log_with": cfg.log_with, "project_dir": str(Path(cfg.out) / "logs")}


def start_tracking(accel, cfg) -> None:
    if not getattr(cfg, "log_with", None):
        return
    # trackers take plain values; None (an unset option) is left out
    hparams = {k: v for k, v in cfg.to_dict().items() if isinstance(v, (bool, int, float, str))}
    accel.init_trackers(Path(cfg.out).name or "transferkit", config=hparams)


def log_step(accel, step: int, loss: float, lr: float) -> None:
    if accel.trackers:
        accel.log({"train/loss": loss, "train/lr": lr}, step=step)


def log_evaluation(accel, metrics: dict, classes: list[str], step: int, prefix: str = "val") -> None:
    """Scalars of one evaluation and its confusion matrix as an image."""
    if accel is None or not accel.trackers:
        return
    accel.log({f"{prefix}/{k}": float(metrics[k]) for k in ("accuracy", "macro_f1", "nll", "ece")
               if k in metrics}, step=step)
    if "confusion_matrix" not in metrics or not accel.is_main_process:
        return
    image = _confusion_image(metrics)
    if image is None:
        return
    for tracker in accel.trackers:
        name = getattr(tracker, "name", "")
        if name == "tensorboard":
            tracker.writer.add_image(f"{prefix}/confusion_matrix", image, global_step=step, dataformats="HWC")
            tracker.writer.flush()
        elif name == "wandb":
            tracker.log_images({f"{prefix}/confusion_matrix": [image]}, step=step)
        elif name == "mlflow":
            import mlflow
            mlflow.log_image(image, f"{prefix}_confusion_matrix_step{step:06d}.png")


def end_tracking(accel, metrics: dict | None, step: int) -> None:
    if accel.trackers:
        if metrics and "accuracy" in metrics:
            log_evaluation(accel, metrics, [], step, prefix="test")
        accel.end_training()


def _confusion_image(metrics: dict):
    """The report's confusion-matrix figure as an RGB array (H, W, 3)."""
    import numpy as np
    from PIL import Image

    from ..report import confusion_figure
    uri = confusion_figure(metrics)
    if not uri:
        return None
    png = base64.b64decode(uri.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
