"""Where a resumed run starts from, and whether it can continue exactly.

A resume reads the run's version (run.json), its config and the newest intact checkpoint
(`last/`, or `.last.old` after a crash mid-replace). A checkpoint in the middle of a training phase
must carry the optimizer state: without it the run would continue with a fresh optimizer, which is
no longer the run that was started. That is refused unless `--resume-inexact` says so, and an
inexact resume is logged and recorded in run.json.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
from pathlib import Path

from ..config import ConfigError, TrainConfig, read_config
from ..store import checkpoint as ck
from ..store.runfolder import note_in_run_meta, read_run_meta
from .run_state import RunState

# options that belong to this invocation, not to the run: a resume takes them from the command line
RUNTIME_OPTIONS = ("stop_after", "resume_inexact", "checkpoint_every", "checkpoint_seconds", "cache", "cache_dir")


def resume_point(run: Path, cfg: TrainConfig, log):
    """(the run's config, its RunState, the checkpoint folder or None when the run never reached one)."""
    read_run_meta(run)
    if not (run / "config.yaml").is_file():
        raise ConfigError(f"nothing to resume in {run}: it holds no transferkit run (no config.yaml); "
                          "start it with 'transferkit train DATA --out RUN_DIR'")
    saved = read_config(run / "config.yaml")
    # this invocation's own options; checkpoint_every/_seconds stay the run's own unless given again
    now = {n: getattr(cfg, n) for n in ("stop_after", "resume_inexact", "cache", "cache_dir")}
    now.update({n: getattr(cfg, n) for n in ("checkpoint_every", "checkpoint_seconds")
                if getattr(cfg, n) != TrainConfig.__dataclass_fields__[n].default})
    saved = dataclasses.replace(saved, **now)
    last = ck.find_checkpoint(run, log=log)
    if last is None:  # stopped during setup, before the first checkpoint: start again, same config
        log(f"{run} has no checkpoint yet; starting the run from the beginning")
        return saved, RunState(), None
    meta = ck.read_json(last / "state.json")
    try:
        state = RunState(**meta["run_state"])
    except (KeyError, TypeError) as e:
        raise ck.CheckpointError(f"{last / 'state.json'} lacks the run state ({e}); it was edited or "
                                 "written by another program") from e
    if state.best_score is None:  # -inf is written as null (JSON has no infinities)
        state.best_score = -math.inf
    if state.done:
        log(f"{run} already finished; nothing to resume")
    return saved, state, last


def restore_optimizer_and_rng(last: Path, run: Path, cfg: TrainConfig, state, optimizer, log) -> None:
    meta = ck.read_json(last / "state.json")
    opt_file = last / "optimizer.safetensors"
    if opt_file.exists():
        if meta.get("param_groups") != [g["name"] for g in optimizer.param_groups]:
            raise ck.CheckpointError(
                f"cannot resume {run}: parameter groups {meta.get('param_groups')} were saved, this "
                f"phase builds {[g['name'] for g in optimizer.param_groups]}")
        ck.optimizer_from_flat(optimizer, ck.load_tensors(opt_file), meta["optimizer"])
    elif state.step > 0:  # mid-phase: the optimizer's moments are part of the run
        if not cfg.resume_inexact:
            raise ck.CheckpointError(
                f"cannot resume {run} exactly: {opt_file} is missing (step {state.global_step} is in the "
                "middle of a training phase, and its optimizer state is gone). Restore the file, or pass "
                "--resume-inexact to continue with a fresh optimizer (recorded in the run's run.json)")
        log(f"warning: resuming {run} at step {state.global_step} WITHOUT optimizer state "
            "(--resume-inexact): the result will differ from an uninterrupted run")
        note_in_run_meta(run, "inexact_resumes", {
            "global_step": state.global_step, "reason": f"{opt_file.name} missing",
            "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})
    rng = last / "rng.safetensors"
    if rng.exists() and "rng" in meta:
        ck.set_rng_state(ck.load_tensors(rng), meta["rng"])
