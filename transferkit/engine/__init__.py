"""Engine: the training loop on Accelerate, checkpoints and exact resume, evaluation."""

from .build import build_model
from .fit import FitResult, fit, lr_factor, total_steps
from .run_state import RunState
from .run import evaluate_run, load_run, predict_run

__all__ = ["build_model", "FitResult", "RunState", "fit", "lr_factor", "total_steps", "evaluate_run",
           "load_run", "predict_run"]
