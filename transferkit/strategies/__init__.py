"""Strategies: freezing by stage, BatchNorm policy, parameter groups and phase plans."""

from .freeze import (BN_POLICIES, freeze_stages, frozen_stages, parameter_summary,
                     resolve_bn, set_train_mode)
from .plan import STRATEGIES, Phase, Plan, param_groups, plan_strategy

__all__ = ["BN_POLICIES", "freeze_stages", "frozen_stages", "parameter_summary",
           "set_train_mode", "resolve_bn", "STRATEGIES", "Phase", "Plan", "param_groups", "plan_strategy"]
