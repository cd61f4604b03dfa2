"""`simulate`: run a scenario through the engine and return records and a summary."""

from __future__ import annotations

__all__ = ["SimResult", "simulate"]

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from sdsim.costs.build import build_cost_model
from sdsim.costs.step import StepCostModel
from sdsim.engine.schema import STEP_FIELDS
from sdsim.engine.server import StepHook, run_simulation
from sdsim.errors import ScenarioError
from sdsim.metrics import REQUEST_FIELDS, build_requests_frame, build_steps_frame, summarize
from sdsim.scenario import Scenario
from sdsim.streaming import RunningSummary
from sdsim.workload import generate_workload

# Columns of SimResult.requests (an empty frame with them when records are not kept).
REQUEST_COLUMNS = (
    "request_id",
    *REQUEST_FIELDS,
    "replica",
    "ttft",
    "e2e",
    "tpot",
    "queue_delay",
    "warmup",
    "aborted",
)


@dataclass
class SimResult:
    """What a simulation gives back.

    Attributes
    ----------
    requests
        One row per request (the request record, :data:`sdsim.engine.schema.REQUEST_RECORD`;
        derived ``ttft``, ``e2e``, ``tpot``,
        ``queue_delay``, a ``warmup`` flag, and ``aborted``: the request was aborted, its
        ``finish`` the step boundary at which it left).
    steps
        One row per engine step.
    summary
        Scalars (``e2e_mean``, ``ttft_p99``, ``stable``, ...: :func:`sdsim.metrics.summarize`).
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
    fast_forward: bool = True,
    keep_records: bool = True,
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
    fast_forward
        The fast engine path: compiled per-step kernels, and runs of steps in which only
        decoding can happen advanced in one call (exact: the same seed gives the same records
        either way; an ``on_step`` hook turns it off, since it needs every step).
    keep_records
        ``False``: streaming statistics (:mod:`sdsim.streaming`). Requests and steps are reduced
        to running sums and quantile sketches as the run goes, so memory stays flat however
        many requests it has; ``requests`` and ``steps`` come back empty, and the summary has
        the same keys, its quantiles within 0.5% of the exact ones. (Multi-turn sessions: the
        records are kept during the run and summarised exactly, then dropped.)

    Returns
    -------
    SimResult
    """
    s = scenario.seed if seed is None else int(seed)
    if not 0 <= s < 2**63:
        raise ScenarioError("seed", f"must be an integer in [0, 2**63), got {seed}")
    cost = cost_model if cost_model is not None else build_cost_model(scenario)
    wl = generate_workload(scenario, s)
    # multi-turn sessions: arrival times are known only as turns finish, so the streaming
    # summary (which needs them ahead) is computed from the records instead, with the same keys
    if not keep_records and wl.next_turn is None:
        acc = RunningSummary(wl.arrival, scenario.warmup_requests, slo=scenario.slo)
        run = run_simulation(
            scenario,
            wl,
            cost,
            s,
            on_step=on_step,
            progress=progress,
            fast_forward=fast_forward,
            request_sink=acc.add_requests,
            step_sink=acc.add_steps,
        )
        summary = acc.summary(run.end_time, run.stopped_early, run.stop_reason, run.info, s)
        return SimResult(
            requests=pd.DataFrame({c: [] for c in REQUEST_COLUMNS}),
            steps=pd.DataFrame({c: np.zeros(0, dtype=dt) for c, dt in STEP_FIELDS.items()}),
            summary=summary,
            scenario=scenario,
        )
    run = run_simulation(
        scenario, wl, cost, s, on_step=on_step, progress=progress, fast_forward=fast_forward
    )
    requests = build_requests_frame(run, scenario.warmup_requests)
    steps = build_steps_frame(run)
    summary = summarize(run, requests, steps, scenario.warmup_requests, s, scenario.slo)
    if not keep_records:
        requests = pd.DataFrame({c: [] for c in REQUEST_COLUMNS})
        steps = pd.DataFrame({c: np.zeros(0, dtype=dt) for c, dt in STEP_FIELDS.items()})
    return SimResult(requests=requests, steps=steps, summary=summary, scenario=scenario)
