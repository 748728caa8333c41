"""The state of a run besides its tensors: what `fit` advances step by step, what `last/` saves and
what a resume reads back. Its own module so that the training loop (fit) and the resume
(resume) both depend on it rather than on each other."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


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
    phase_seconds: dict = field(default_factory=dict)        # wall time per phase name
    wise: dict = field(default_factory=dict)                 # WiSE-FT: weight used and how it was chosen
    choice: dict = field(default_factory=dict)               # --strategy auto: what and why
    unlabelled: dict = field(default_factory=dict)           # --unlabelled: the pool and its use
