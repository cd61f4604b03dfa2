""" "Simulate here": replicated :func:`sdsim.simulate` runs in the background, with progress.

A job simulates the page's scenario ``runs`` times (seeds ``seed .. seed + runs - 1``, the
convention of ``sdsim validate``) and, when it speculates, the same runs with k = 0 (the same
seeds draw the same requests, so each run's speedup is a paired comparison). What comes back per
statistic is the mean over runs with its t-based 95% confidence interval
(:func:`sdsim.metrics.t_confidence_interval`), and the time-averaged batch-size law the runs
showed in steady state, to set beside the model's.

Jobs run one at a time on one worker thread, so the server keeps answering the page meanwhile.
"""

from __future__ import annotations

__all__ = ["MAX_RUNS", "Jobs", "check_runs", "observed_batch_law", "simulate_here"]

import itertools
import queue
import threading
import traceback
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sdsim.errors import ScenarioError
from sdsim.metrics import t_confidence_interval
from sdsim.scenario import Scenario
from sdsim.simulation import simulate

MAX_RUNS = 20
STATS = tuple(f"{m}_{s}" for m in ("e2e", "ttft", "tpot") for s in ("mean", "p50", "p90", "p99"))


def check_runs(runs: int) -> None:
    """Refuse a replication count outside ``1..MAX_RUNS``."""
    if isinstance(runs, bool) or not isinstance(runs, int) or not 1 <= runs <= MAX_RUNS:
        raise ScenarioError("runs", f"must be a whole number in 1..{MAX_RUNS} (got {runs!r})")


def observed_batch_law(requests: Any, steps: Any, cap: int, warmup: int) -> np.ndarray:
    """Time share of each engine batch size (requests in a step, 0 = idle) in steady state.

    The window runs from the arrival of the first measured request (after ``warmup``) to the last
    arrival, so neither the empty start nor the drain at the end counts; every replica's busy time
    is split by its steps' batch sizes and the rest of the window is idle.
    """
    arrivals = np.sort(requests["arrival"].to_numpy(dtype=np.float64))
    if arrivals.shape[0] <= warmup + 1:
        return np.zeros(0)
    t0, t1 = float(arrivals[warmup]), float(arrivals[-1])
    start = steps["start"].to_numpy(dtype=np.float64)
    inside = (start >= t0) & (start < t1)
    n = np.minimum(steps["num_seqs"].to_numpy(dtype=np.int64)[inside], cap)
    dur = steps["duration"].to_numpy(dtype=np.float64)[inside]
    replicas = max(1, int(steps["replica"].max()) + 1) if len(steps) else 1
    share = np.bincount(n, weights=dur, minlength=cap + 1)[: cap + 1]
    total = replicas * (t1 - t0)
    share[0] += max(total - float(share.sum()), 0.0)
    return np.asarray(share / share.sum(), dtype=np.float64)


def simulate_here(
    scn: Scenario, runs: int, progress: Callable[[float], None] | None = None
) -> dict[str, Any]:
    """Replicated simulations of ``scn`` (and of it at k = 0 when it speculates).

    Returns
    -------
    dict
        ``rate``, ``runs``, ``seeds``, ``stable`` (every run), ``stats``: statistic -> ``[mean,
        low, high]`` over runs (seconds), ``speedup``: ``[mean, low, high]`` of the per-run ratio
        of plain to speculative mean e2e (``None`` without speculation), ``batch_law``: mean time
        share of each batch size.
    """
    check_runs(runs)
    speculative = scn.spec.k > 0 or scn.spec.policy == "adaptive"
    plain = scn.with_overrides({"spec.k": 0, "spec.policy": "fixed"}) if speculative else None
    seeds = [scn.seed + i for i in range(runs)]
    parts = runs * (2 if speculative else 1)
    done = [0]

    def tick(completed: int, total: int) -> None:
        if progress is not None:
            progress((done[0] + completed / max(total, 1)) / parts)

    summaries: list[dict[str, Any]] = []
    laws: list[np.ndarray] = []
    cap = scn.server.max_num_seqs
    for s in seeds:
        res = simulate(scn, seed=s, progress=tick)
        summaries.append(res.summary)
        law = observed_batch_law(res.requests, res.steps, cap, scn.warmup_requests)
        if law.shape[0]:
            laws.append(law)
        done[0] += 1
    ratios: list[float] = []
    if plain is not None:
        for s, spec in zip(seeds, summaries, strict=True):
            base = simulate(plain, seed=s, progress=tick).summary
            ratios.append(float(base["e2e_mean"]) / float(spec["e2e_mean"]))
            done[0] += 1
    stats = {k: list(t_confidence_interval([float(x[k]) for x in summaries])) for k in STATS}
    law_mean = np.mean(laws, axis=0) if laws else np.zeros(0)
    keep = int(np.nonzero(law_mean > 1e-7)[0].max()) + 1 if (law_mean > 1e-7).any() else 0
    if progress is not None:
        progress(1.0)
    return {
        "rate": scn.workload.rate,
        "runs": runs,
        "seeds": seeds,
        "requests": scn.workload.num_requests,
        # a run too short for the stability test (None) is not an overload
        "stable": all(x.get("stable") is not False for x in summaries),
        "stats": stats,
        "speedup": list(t_confidence_interval(ratios)) if ratios else None,
        "batch_law": {"batch": list(range(keep)), "p": law_mean[:keep].tolist()},
    }


@dataclass
class _Job:
    key: str
    state: str = "queued"
    progress: float = 0.0
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = field(default=None)


class Jobs:
    """Simulation jobs: submitted from a request, run one at a time on a worker thread, polled by
    id. The thread is a daemon: stopping the server does not wait for a running simulation."""

    def __init__(self, keep: int = 64) -> None:
        self.keep = keep
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._jobs: OrderedDict[str, _Job] = OrderedDict()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._worker = threading.Thread(target=self._run, name="sdsim-explore-sim", daemon=True)
        self._worker.start()

    def _run(self) -> None:
        while (work := self._queue.get()) is not None:
            work()

    def submit(self, scn: Scenario, runs: int, key: str) -> str:
        """Queue a job; returns its id."""
        check_runs(runs)
        job = _Job(key=key)
        with self._lock:
            jid = str(next(self._ids))
            self._jobs[jid] = job
            while len(self._jobs) > self.keep:
                self._jobs.popitem(last=False)

        def set_progress(p: float) -> None:
            job.progress = min(max(p, 0.0), 1.0)

        def work() -> None:
            job.state = "running"
            try:
                job.result = simulate_here(scn, runs, set_progress)
                job.state = "done"
            except ScenarioError as exc:
                job.error = {"field": exc.field, "error": str(exc)}
                job.state = "error"
            except Exception as exc:  # a bug: the page gets one line, the console the traceback
                traceback.print_exc()
                job.error = {"field": None, "error": f"simulation failed: {exc!r}"}
                job.state = "error"

        self._queue.put(work)
        return jid

    def status(self, jid: str) -> dict[str, Any] | None:
        """``state`` (queued, running, done, error), ``progress`` (0..1), ``key``, and the
        ``result`` or ``error``; ``None`` for an unknown id."""
        with self._lock:
            job = self._jobs.get(jid)
        if job is None:
            return None
        return {
            "state": job.state,
            "progress": job.progress,
            "key": job.key,
            "result": job.result,
            "error": job.error,
        }

    def close(self) -> None:
        """Stop taking jobs after the queued ones."""
        self._queue.put(None)
