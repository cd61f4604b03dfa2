"""Step-cost models: what one engine step costs (linear, roofline, measured profiles)."""

from sdsim.costs.step import (
    LinearCoefficients,
    LinearStepCost,
    StepCostModel,
    StepShape,
    StepTime,
    build_cost_model,
)

__all__ = [
    "LinearCoefficients",
    "LinearStepCost",
    "StepCostModel",
    "StepShape",
    "StepTime",
    "build_cost_model",
]
