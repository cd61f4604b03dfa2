"""Step-cost models: what one engine step costs (linear, roofline, measured profiles)."""

from sdsim.costs.build import build_cost_model
from sdsim.costs.step import (
    LinearCoefficients,
    LinearStepCost,
    StepCostModel,
    StepShape,
    StepTime,
    StepTimes,
    step_times,
)

__all__ = [
    "LinearCoefficients",
    "LinearStepCost",
    "StepCostModel",
    "StepShape",
    "StepTime",
    "StepTimes",
    "build_cost_model",
    "step_times",
]
