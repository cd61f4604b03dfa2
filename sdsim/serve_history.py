"""The live server's request history, bounded: running summaries of every request since start and
the records of the most recent ones.

`sdsim serve` may run for days. Keeping every request's record would grow its memory by ~170
bytes per request (360 MB a day at 25 req/s), so requests that have left the engine (finished or
aborted) are collected out of its request table, whose slots are reused as in a streaming
simulation (:meth:`sdsim.engine.state.RequestTable.harvest`), into a :class:`ServeHistory`:

* **running summaries over every request**: counts (completed, aborted), token sums, and for
  each latency metric (e2e, TTFT, TPOT, queue delay) a count, a sum and a quantile sketch
  (:class:`sdsim.streaming.Moments`, the streaming simulation summary's): counts, sums and
  means are exact, p50/p90/p99 within 0.5% relative;
* **a window of records**: those of the last ``window`` requests to leave, in a ring.

Memory is the ring (105 bytes per record, :data:`DEFAULT_WINDOW` records by default) plus four
fixed sketches (~33 kB each), however long the server runs.
"""

from __future__ import annotations

__all__ = ["DEFAULT_WINDOW", "MAX_WINDOW", "METRICS", "ServeHistory"]

from typing import Any

import numpy as np
import numpy.typing as npt

from sdsim.engine.schema import REQUEST, REQUEST_RECORD
from sdsim.streaming import Moments, latencies

# Records kept by default: about 7 minutes at 25 req/s (~1 MB).
DEFAULT_WINDOW = 10_000
# The largest window accepted (~1 GB of records).
MAX_WINDOW = 10_000_000

# a request record (as the request table's harvest gives it: ``aborted`` true or false)
_RECORD = np.dtype(
    [
        (name, np.bool_ if name == "aborted" else REQUEST[field])
        for name, field in REQUEST_RECORD.items()
    ]
)
_FIELDS = tuple(REQUEST_RECORD)
# the latency metrics summarised (names as in the simulation's summary)
METRICS = ("e2e", "ttft", "tpot", "queue_delay")


class ServeHistory:
    """Running summaries of every request that has left the engine, and the last ``window``
    records (see the module docstring).

    Parameters
    ----------
    window
        Records kept (0: none; the summaries are kept either way).
    accuracy
        Relative accuracy of the quantile sketches.
    """

    def __init__(self, window: int = DEFAULT_WINDOW, accuracy: float = 0.005) -> None:
        if not 0 <= window <= MAX_WINDOW:
            raise ValueError(f"window must be in 0..{MAX_WINDOW:,} (got {window})")
        self.window = int(window)
        self._ring = np.zeros(self.window, dtype=_RECORD)
        self._written = 0  # records ever written to the ring
        self.completed = 0
        self.aborted = 0
        self.prompt_tokens = 0  # of completed requests
        self.output_tokens = 0
        self.metrics = {m: Moments(accuracy) for m in METRICS}

    @property
    def held(self) -> int:
        """Records held in the window."""
        return min(self._written, self.window)

    def add(self, r: dict[str, npt.NDArray[Any]]) -> None:
        """Add a batch of records of requests that have left the engine (a request table's
        harvest sink)."""
        aborted = np.asarray(r["aborted"], dtype=np.bool_)
        done = ~aborted
        self.completed += int(done.sum())
        self.aborted += int(aborted.sum())
        self.prompt_tokens += int(np.asarray(r["prompt_tokens"])[done].sum())
        self.output_tokens += int(np.asarray(r["output_tokens"])[done].sum())
        e2e, ttft, tpot = latencies(r, done)
        self.metrics["e2e"].add(e2e)
        self.metrics["ttft"].add(ttft)
        self.metrics["tpot"].add(tpot)
        arrival = np.asarray(r["arrival"], dtype=np.float64)[done]
        self.metrics["queue_delay"].add(np.asarray(r["first_scheduled"])[done] - arrival)
        self._keep(r)

    def _keep(self, r: dict[str, npt.NDArray[Any]]) -> None:
        """Write a batch into the ring, in the order its requests left (a batch holds every
        request that left since the previous one, so the ring keeps the last to leave)."""
        n = int(np.asarray(r["rid"]).shape[0])
        if self.window == 0 or n == 0:
            return
        order = np.argsort(np.asarray(r["finish"]), kind="stable")[-self.window :]
        pos = (self._written + np.arange(order.shape[0])) % self.window
        for name in _FIELDS:
            self._ring[name][pos] = np.asarray(r[name])[order]
        self._written += order.shape[0]

    def records(self, live: dict[str, npt.NDArray[Any]] | None = None) -> dict[str, Any]:
        """The window's records and ``live`` ones (requests still in the engine), as columns in
        request-id order."""
        rows = self._ring[: self.held]
        if live is not None and np.asarray(live["rid"]).shape[0]:
            extra = np.zeros(np.asarray(live["rid"]).shape[0], dtype=_RECORD)
            for name in _FIELDS:
                extra[name] = live[name]
            rows = np.concatenate([rows, extra])
        rows = rows[np.argsort(rows["rid"], kind="stable")]
        return {name: rows[name] for name in _FIELDS}

    def summary(self) -> dict[str, Any]:
        """Counts, token sums and latency statistics of every request that has left:
        ``completed``, ``aborted``, ``prompt_tokens_sum``, ``output_tokens_sum`` (completed
        requests), ``{e2e,ttft,tpot,queue_delay}_{mean,p50,p90,p99}`` (seconds, completed
        requests; TPOT of those with more than one output token), ``history_window``,
        ``history_held``."""
        out: dict[str, Any] = {
            "completed": self.completed,
            "aborted": self.aborted,
            "prompt_tokens_sum": self.prompt_tokens,
            "output_tokens_sum": self.output_tokens,
        }
        for m, mo in self.metrics.items():
            out.update(mo.stats(m))
        out["history_window"] = self.window
        out["history_held"] = self.held
        return out
