"""What a simulation run leaves behind: the request records, the step records and run facts.

The engine fills these; :mod:`sdsim.metrics` and :mod:`sdsim.streaming` read them. This module
imports nothing from the engine, so summarising records never loads SimPy or the compiled kernels.
"""

from __future__ import annotations

__all__ = ["RequestRecords", "SimRun"]

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt


class RequestRecords(Protocol):
    """One array entry per request (slot == request id): the request record fields.

    Times are simulated seconds (NaN while the event has not happened); counts are integers.
    The engine's :class:`~sdsim.engine.state.RequestTable` provides them.
    """

    @property
    def n(self) -> int: ...

    arrival: npt.NDArray[np.float64]
    first_scheduled: npt.NDArray[np.float64]
    first_token: npt.NDArray[np.float64]
    finish: npt.NDArray[np.float64]
    prompt: npt.NDArray[np.int64]
    output: npt.NDArray[np.int64]
    steps: npt.NDArray[np.int64]
    drafted: npt.NDArray[np.int64]
    accepted: npt.NDArray[np.int64]
    preemptions: npt.NDArray[np.int64]
    cached_tokens: npt.NDArray[np.int64]  # prompt tokens served from the prefix cache
    conv: npt.NDArray[np.int64]  # multi-turn session (-1: none)
    turn: npt.NDArray[np.int64]  # turn of that session (from 0)
    replica: npt.NDArray[np.int64]
    aborted: npt.NDArray[np.int64]  # sdsim.engine.schema.ABORT_DONE: aborted, finish = when it left
    alpha: npt.NDArray[np.float64] | None


@dataclass
class SimRun:
    """Raw outcome of a simulation: request table, step columns, stop reason, engine facts.

    ``info`` holds run-level facts the summary reports: ``kv_blocks_total`` (per replica, ``None``
    when unlimited), ``kv_peak_blocks`` (largest use on any replica), ``api_delay_s``,
    ``replicas``.
    """

    table: RequestRecords
    steps: dict[str, npt.NDArray[np.generic]]
    end_time: float
    stopped_early: bool
    stop_reason: str
    # the engine objects that ran (diagnostics for tests and profiling; summaries never read them)
    engines: list[Any]
    info: dict[str, Any] = field(default_factory=dict)
