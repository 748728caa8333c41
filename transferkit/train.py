"""`train`: the library entry point behind `transferkit train` (fit + choices made before fitting)."""

from __future__ import annotations

from .config import TrainConfig, auto_backbone_sources, validate
from .engine.fit import FitResult, fit


def train(cfg: TrainConfig, *, resume: bool = False, quiet: bool = False, log=None) -> FitResult:
    """Fine-tune according to `cfg` (or resume `cfg.out`) and return the run's result.

    Choices are resolved here, before fitting, and recorded in config.yaml and metrics.json:
    `--backbone auto` by cross-validated probe accuracy of each source (transferkit.choose.source),
    `--strategy auto` by held-out evidence (transferkit.choose.auto), `--reg l2sp:auto[,BETA]` by a
    sweep over alpha (transferkit.choose.l2sp_sweep).
    """
    if not resume:
        validate(cfg)  # the same errors as the CLI's, before anything is written
        from .engine.build import check_data_fits_backbone
        from .store.runfolder import check_out_dir
        check_data_fits_backbone(cfg)  # an image folder for a text model: refused by name, nothing written
        check_out_dir(cfg)
    say = log or ((lambda *a, **k: None) if quiet else print)
    from .store.runfolder import writing_run
    with writing_run(cfg.out, fresh=not resume, log=say):  # one writer; a failed start leaves nothing
        return _train(cfg, resume, quiet, say)


def _train(cfg: TrainConfig, resume: bool, quiet: bool, say) -> FitResult:
    from . import dense  # segment/anomaly: their own loops, the same run-folder rules (transferkit/dense)
    task = dense.run_task(cfg.out) if resume else dense.resolve_task(cfg, log=say)
    if dense.is_dense(task):
        return dense.task_module(task).train(cfg, resume=resume, log=say, progress=not quiet)
    if resume:  # the run's own config and splits (engine/resume.py)
        return fit(cfg, resume=True, log=say, progress=not quiet)
    from .engine.build import SpareModel, load_task_for
    from .engine.input_kind import settle_inputs
    # the run reads its data once; every choice below and the run itself get these splits. The
    # input kind is settled now, in a new config: no config is changed after it is validated
    task = load_task_for(cfg)
    cfg = settle_inputs(cfg, task)
    choice = None
    if cfg.unlabelled:  # a bad pool stops here, before auto writes OUT/auto
        from .engine.unlabelled import check_pool
        check_pool(cfg, task)
    source_choice = None
    if auto_backbone_sources(cfg.backbone) is not None:
        from .choose.source import resolve_backbone
        cfg, source_choice = resolve_backbone(cfg, task, log=say)
    spare = SpareModel()  # the model auto builds to check the config, kept for the run that trains it
    if cfg.strategy == "auto":
        from .choose.auto import resolve_auto
        cfg, choice = resolve_auto(cfg, log=say, task=task, spare=spare)
    if source_choice:
        choice = {**(choice or {}), "backbone": source_choice}
    if cfg.reg and "auto" in cfg.reg:
        from .choose.l2sp_sweep import resolve_l2sp_auto
        cfg = resolve_l2sp_auto(cfg, log=say, task=task)
    return fit(cfg, log=say, progress=not quiet, choice=choice, task=task, spare=spare)
