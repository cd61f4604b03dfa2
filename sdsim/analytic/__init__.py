"""The closed-form model: coefficients, mean-field, GPS birth-death, tails, fitting, MoE."""

from sdsim.analytic.prediction import Prediction, predict

__all__ = ["Prediction", "predict"]
