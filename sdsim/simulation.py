"""`simulate`: run a scenario through the engine and return records and a summary."""

from __future__ import annotations

__all__ = ["SimResult", "simulate"]

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from sdsim.costs.step import StepCostModel, build_cost_model
from sdsim.engine.server import StepHook, run_simulation
from sdsim.errors import ScenarioError
from sdsim.metrics import build_requests_frame, build_steps_frame, summarize
from sdsim.scenario import Scenario
from sdsim.workload import generate_workload


@dataclass
class SimResult:
    """What a simulation gives back.

    Attributes
    ----------
    requests
        One row per request (DESIGN.md record fields, derived ``ttft``, ``e2e``, ``tpot``,
        ``queue_delay``, and a ``warmup`` flag).
    steps
        One row per engine step.
    summary
        Scalars keyed as in DESIGN.md (``e2e_mean``, ``ttft_p99``, ``stable``, ...).
    scenario
        The resolved scenario that produced it.
    """

    requests: pd.DataFrame
    steps: pd.DataFrame
    summary: dict[str, Any]
    scenario: Scenario
    extra: dict[str, Any] = field(default_factory=dict)


def simulate(
    scenario: Scenario,
    seed: int | None = None,
    *,
    cost_model: StepCostModel | None = None,
    on_step: StepHook | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SimResult:
    """Simulate a scenario.

    Parameters
    ----------
    scenario
        The validated scenario.
    seed
        Run seed; defaults to ``scenario.seed``. Every random source derives its own stream from
        it (arrivals, lengths, per-request alpha, acceptance), so changing k or the server never
        changes the requests.
    cost_model
        Override the scenario's step-cost model (tests, calibration).
    on_step
        Check hook called after every engine step with ``(engine, batch)``.
    progress
        Called with ``(completed, total)`` as requests finish.

    Returns
    -------
    SimResult
    """
    s = scenario.seed if seed is None else int(seed)
    if not 0 <= s < 2**63:
        raise ScenarioError("seed", f"must be an integer in [0, 2**63), got {seed}")
    cost = cost_model if cost_model is not None else build_cost_model(scenario)
    wl = generate_workload(scenario, s)
    run = run_simulation(scenario, wl, cost, s, on_step=on_step, progress=progress)
    requests = build_requests_frame(run, scenario.warmup_requests)
    steps = build_steps_frame(run)
    summary = summarize(run, requests, steps, scenario.warmup_requests, s)
    return SimResult(requests=requests, steps=steps, summary=summary, scenario=scenario)
