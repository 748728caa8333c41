"""`train`: the library entry point behind `transferkit train` (fit + choices made before fitting)."""

from __future__ import annotations

from .config import TrainConfig, validate
from .engine.fit import FitResult, fit


def train(cfg: TrainConfig, *, resume: bool = False, quiet: bool = False, log=None) -> FitResult:
    """Fine-tune according to `cfg` (or resume `cfg.out`) and return the run's result.

    Choices are resolved here, before fitting, and recorded in config.yaml and metrics.json:
    `--strategy auto` by held-out evidence (transferkit.choose.auto), `--reg l2sp:auto[,BETA]` by a
    sweep over alpha (transferkit.choose.l2sp_sweep).
    """
    if not resume:
        validate(cfg)  # the same errors as the CLI's, before anything is written
    say = log or ((lambda *a, **k: None) if quiet else print)
    from . import dense  # segment/anomaly: their own loops, the same run-folder rules (transferkit/dense)
    task = dense.run_task(cfg.out) if resume else dense.resolve_task(cfg, log=say)
    if dense.is_dense(task):
        return dense.task_module(task).train(cfg, resume=resume, log=say, progress=not quiet)
    choice = None
    if not resume and cfg.unlabelled:  # a bad pool stops here, before auto writes OUT/auto
        from .engine.unlabelled import check_pool
        check_pool(cfg)
    if not resume and cfg.strategy == "auto":
        from .choose.auto import resolve_auto
        cfg, choice = resolve_auto(cfg, log=say)
    if not resume and cfg.reg and "auto" in cfg.reg:
        from .choose.l2sp_sweep import resolve_l2sp_auto
        cfg = resolve_l2sp_auto(cfg, log=say)
    return fit(cfg, resume=resume, log=say, progress=not quiet, choice=choice)
