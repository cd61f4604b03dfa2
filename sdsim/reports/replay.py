"""Replay: the exact requests of one report benchmark as a simulation workload.

``workload.arrival: replay`` with ``workload.report: FILE`` and ``workload.benchmark: ID`` makes the
simulator receive each request of that benchmark at the moment the real server received it (the
report's ``start``, seconds from the benchmark's origin) with its measured prompt and output
lengths. Nothing is random in such a workload except acceptance.
"""

from __future__ import annotations

__all__ = ["replay_frame", "replay_scenario"]

from pathlib import Path

import numpy as np
import pandas as pd

from sdsim.errors import ScenarioError
from sdsim.reports.formats import load_report
from sdsim.scenario import Scenario


def replay_frame(report: str | Path, benchmark: int | str | None = None) -> pd.DataFrame:
    """Arrival times and lengths of one benchmark, ready for the engine.

    Parameters
    ----------
    report
        GuideLLM or vLLM report file.
    benchmark
        0-based index or ``benchmark_id``; ``None`` is the first benchmark.

    Returns
    -------
    pandas.DataFrame
        ``arrival`` (the request's ``start`` in the report, s), ``prompt_tokens``,
        ``output_tokens``, sorted by arrival.

    Raises
    ------
    ScenarioError
        Unknown benchmark, no per-request start times, or lengths below one token.
    """
    rep = load_report(report)
    i = rep.resolve(benchmark, field="workload.benchmark")
    df = rep.benchmark_requests(i)
    if df.empty:
        raise ScenarioError("workload.benchmark", f"benchmark {i} has no per-request records")
    start = df["start"].to_numpy(dtype=np.float64)
    if not np.all(np.isfinite(start)):
        raise ScenarioError(
            "workload.report",
            f"benchmark {i} has no per-request start times (vLLM: save with --save-detailed "
            "from a version that writes start_times); it cannot be replayed",
        )
    for c in ("prompt_tokens", "output_tokens"):
        if (df[c] < 1).any():
            raise ScenarioError("workload.report", f"benchmark {i}: some {c} are below 1")
    return pd.DataFrame(
        {
            "arrival": start,
            "prompt_tokens": df["prompt_tokens"].to_numpy(dtype=np.int64),
            "output_tokens": df["output_tokens"].to_numpy(dtype=np.int64),
        }
    )


def replay_scenario(scn: Scenario, report: str | Path, benchmark: int | str) -> Scenario:
    """``scn`` with its workload replaced by a replay of one benchmark (no warm-up exclusion).

    A replayed benchmark is short and the report's statistics count every request, so warm-up is
    set to 0 to compare like with like.
    """
    return scn.with_overrides(
        {
            "workload.arrival": "replay",
            "workload.report": str(report),
            "workload.benchmark": benchmark,
            "workload.num_requests": max(scn.workload.num_requests, 100_000_000),
            "warmup_requests": 0,
        }
    )
