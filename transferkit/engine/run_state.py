"""The state of a run besides its tensors: what `fit` advances step by step, what `last/` saves and
what a resume reads back. Its own module so that the training loop (fit) and the resume
(resume) both depend on it rather than on each other."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


MAX_STEP_LOSSES = 20000


@dataclass
class RunState:
    """Where a run is: everything besides tensors that an exact resume needs."""

    phase: int = 0
    step: int = 0                 # optimisation steps done in the current phase
    global_step: int = 0          # across phases
    epoch: int = 0                # data epoch counter (continues across phases)
    batch_in_epoch: int = 0
    best_score: float = -math.inf
    best_step: int = -1
    evals_since_best: int = 0
    history: list[dict] = field(default_factory=list)
    done: bool = False
    head_fit: dict = field(default_factory=dict)
    running_loss: list[float] = field(default_factory=list)  # train losses since the last validation
    step_losses: list[list[float]] = field(default_factory=list)  # [global step, train loss] per step (record_loss)
    phase_seconds: dict = field(default_factory=dict)        # wall time per phase name
    wise: dict = field(default_factory=dict)                 # WiSE-FT: weight used and how it was chosen
    choice: dict = field(default_factory=dict)               # --strategy auto: what and why
    unlabelled: dict = field(default_factory=dict)           # --unlabelled: the pool and its use

    def record_loss(self, loss: float) -> None:
        """Keep this step's training loss for the report's curve. Past MAX_STEP_LOSSES points,
        neighbours are averaged in pairs (step and loss), so a long run keeps a bounded curve in
        `last/state.json`; the same steps give the same list, resumed or not."""
        self.step_losses.append([self.global_step, round(float(loss), 6)])
        if len(self.step_losses) > MAX_STEP_LOSSES:
            pts = self.step_losses
            self.step_losses = [[round((a[0] + b[0]) / 2, 1), round((a[1] + b[1]) / 2, 6)]
                                for a, b in zip(pts[0::2], pts[1::2])] + ([pts[-1]] if len(pts) % 2 else [])
