"""Capacity planning: the configuration that serves a rate within latency SLOs, at what cost.

:func:`plan` screens a search space with the analytic model and confirms the candidates near
the frontier by replicated simulation; :func:`max_rate` finds the highest rate one
configuration sustains under the SLOs. See :mod:`sdsim.planning.planner`.
"""

from sdsim.planning.maxrate import MaxRateResult, max_rate
from sdsim.planning.planner import PlanResult, plan
from sdsim.planning.prices import DEFAULT_PRICES, load_prices, parse_price_options
from sdsim.planning.space import SearchSpace, parse_search_options

__all__ = [
    "DEFAULT_PRICES",
    "MaxRateResult",
    "PlanResult",
    "SearchSpace",
    "load_prices",
    "max_rate",
    "parse_price_options",
    "parse_search_options",
    "plan",
]
