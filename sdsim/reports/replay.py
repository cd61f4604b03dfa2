"""Replay: the exact requests of one report benchmark as a simulation workload.

``workload.arrival: replay`` with ``workload.report: FILE`` and ``workload.benchmark: ID`` makes the
simulator receive each request of that benchmark at the moment the real server received it (the
report's ``start``, seconds from the benchmark's origin) with its measured prompt and output
lengths. Nothing is random in such a workload except acceptance. The workload reads the requests
(:func:`sdsim.workload.replay_frame`); :func:`replay_scenario` points a scenario at them.
"""

from __future__ import annotations

__all__ = ["replay_scenario"]

from pathlib import Path

from sdsim.scenario import MAX_REQUESTS, Scenario


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
            "workload.num_requests": MAX_REQUESTS,  # a cap: every request of the benchmark
            "warmup_requests": 0,
        }
    )
