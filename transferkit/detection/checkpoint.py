"""RUN/last/ of a detection run, so that a stopped run resumes to the weights an unstopped one ends with.

last/ holds what `train_detector` carries from one step to the next: the weights, the AdamW moments,
the learning-rate schedule's position, the batch-order generator and the images still queued from its
current permutation, the global RNG, and the losses so far (store/checkpoint.py writes it whole or not
at all). It is rewritten every `checkpoint_every` steps or `checkpoint_seconds`, when `--stop-after N`
is reached, and when SIGINT/SIGTERM asked the run to stop (engine/interrupt.py); a finished run's
last/ says `done`, which is also what makes the folder a run that `train --out` will not overwrite.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..engine import interrupt
from ..engine.run_state import RunState
from ..store import checkpoint as ck


class DetectionCheckpoint:
    def __init__(self, run: Path, *, stop_after: int | None = None, every_steps: int | None = None,
                 every_seconds: float | None = None, last: Path | None = None, log=print):
        self.run, self.stop_after, self.last, self.log = Path(run), stop_after, last, log
        self.clock = ck.CheckpointClock(every_steps, every_seconds, 0, time.time())
        self.seconds_before = 0.0

    def restore(self, model, opt, sched, gen: torch.Generator, fit) -> tuple[int, list[int]]:
        """(first step, queued order): 0 and [] for a new run, else what last/ saved."""
        if self.last is None:
            return 0, []
        from ..models.sources import load_state_dict_checked
        ck.verify_dir(self.last)
        meta = ck.read_json(self.last / "state.json")
        load_state_dict_checked(model, ck.load_tensors(self.last / "model.safetensors"), str(self.last))
        ck.optimizer_from_flat(opt, ck.load_tensors(self.last / "optimizer.safetensors"), meta["optimizer"])
        sched.load_state_dict(meta["schedule"])
        gen.set_state(torch.tensor(meta["generator"], dtype=torch.uint8))
        ck.set_rng_state(ck.load_tensors(self.last / "rng.safetensors"), meta["rng"])
        fit.losses, fit.parts = list(meta["losses"]), list(meta["parts"])
        self.seconds_before = fit.seconds = float(meta.get("seconds", 0.0))
        step = int(meta["run_state"]["global_step"])
        self.clock.saved(step, time.time())
        self.log(f"resuming {self.run} at step {step}")
        return step, list(meta["order"])

    def after_step(self, step: int, model, opt, sched, gen, order, fit, seconds: float) -> bool:
        stop = bool(interrupt.requested()) or bool(self.stop_after and step >= self.stop_after)
        if stop or self.clock.due(step, time.time()):
            state = RunState(step=step, global_step=step)
            ck.write_last(self.run, model, opt, state.__dict__, schedule=sched.state_dict(),
                          generator=gen.get_state().tolist(), order=list(order), losses=fit.losses,
                          parts=fit.parts, seconds=self.seconds_before + seconds)
            self.clock.saved(step, time.time())
        return stop

    def finish(self, steps: int) -> None:
        """last/ of a finished run: its state only (the weights are in detector.safetensors)."""
        state = RunState(step=steps, global_step=steps, done=True)
        ck.atomic_replace_dir(lambda tmp: ck.atomic_write_json(tmp / "state.json", {"run_state": state.__dict__}),
                              self.run / "last")
