"""Streaming statistics: the run summary from running sums and quantile sketches, no records kept.

``simulate(..., keep_records=False)`` and ``sdsim run --summary-only`` feed finished requests (in
batches, as their slots are reused) and step records (in blocks) to a :class:`RunningSummary`,
so memory stays flat however many requests a run has. The summary has the same keys as
:func:`sdsim.metrics.summarize`, computed by the same formulas: means, rates and time-weighted
levels are exact (sums in another order: equal to ~1e-12 relative); quantiles come from a
:class:`LogHistogram` and are within its relative accuracy (0.5% by default) of the exact ones.

Two facts make single-pass sums possible. The measurement window ``[t0, t1]`` runs from the
arrival of the first measured request to the arrival of the last one, both known from the
workload before the run. A run stopped early ends the window at the stop time instead, but every
finish time and step end recorded by then lies before it, so clipping them at the last arrival
gives the same overlaps either way; only requests still in the system at the end (handled last,
when the stop time is known) see the earlier ``t1``. The queue-growth slope of a stopped run
counts finishes against its 64-point grid through a 4,096-bin histogram of finish times (exact
when the run completes).
"""

from __future__ import annotations

__all__ = ["LogHistogram", "Moments", "RunningSummary", "latencies"]

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from sdsim._version import __version__
from sdsim.metrics import prefix_stats
from sdsim.scenario import SloSpec
from sdsim.slo import SloCounter, slo_bounds
from sdsim.stability import judge_stability, saturation_stop, stability_grid, stability_summary

_FINE = 4096


class LogHistogram:
    """A mergeable quantile sketch: counts in logarithmic bins (DDSketch's mapping), vectorised.

    A positive value ``x`` goes to bin ``ceil(log(x) / log(gamma))`` with
    ``gamma = (1 + a) / (1 - a)``; every value in a bin is within relative error ``a`` of the
    bin's representative ``2 gamma^i / (gamma + 1)`` (Masson, Rim & Lee, VLDB 2019). Bins are a
    fixed numpy array covering ``[min_value, max_value]`` (values outside are clamped to its
    ends; zeros and negatives are counted apart), so adding a batch is one ``bincount`` and
    merging two sketches is one addition. (The ``ddsketch`` package has the same mapping but
    inserts one value per Python call, too slow for millions of latencies.)

    Parameters
    ----------
    relative_accuracy
        ``a``: quantiles are within this relative error of an exact order statistic.
    min_value, max_value
        Range of positive values kept exactly to that accuracy (seconds for latencies).
    """

    def __init__(
        self, relative_accuracy: float = 0.005, min_value: float = 1e-9, max_value: float = 1e9
    ) -> None:
        if not 0 < relative_accuracy < 1:
            raise ValueError(f"relative_accuracy must be in (0, 1), got {relative_accuracy}")
        self.a = float(relative_accuracy)
        self.gamma = (1 + self.a) / (1 - self.a)
        self._inv_log_gamma = 1.0 / math.log(self.gamma)
        self.lo = math.ceil(math.log(min_value) * self._inv_log_gamma)
        self.hi = math.ceil(math.log(max_value) * self._inv_log_gamma)
        self.counts = np.zeros(self.hi - self.lo + 1, dtype=np.int64)
        self.nonpositive = 0

    @property
    def count(self) -> int:
        """Values added."""
        return int(self.counts.sum()) + self.nonpositive

    def add(self, values: npt.ArrayLike) -> None:
        """Add a batch of values (NaN and infinities are ignored)."""
        x = np.asarray(values, dtype=np.float64)
        x = x[np.isfinite(x)]
        pos = x[x > 0]
        self.nonpositive += int(x.shape[0] - pos.shape[0])
        if pos.shape[0] == 0:
            return
        keys = np.ceil(np.log(pos) * self._inv_log_gamma).astype(np.int64)
        np.clip(keys, self.lo, self.hi, out=keys)
        self.counts += np.bincount(keys - self.lo, minlength=self.counts.shape[0])

    def merge(self, other: LogHistogram) -> None:
        """Add another sketch's counts (same accuracy and range)."""
        if (other.gamma, other.lo, other.hi) != (self.gamma, self.lo, self.hi):
            raise ValueError("can only merge sketches with the same accuracy and range")
        self.counts += other.counts
        self.nonpositive += other.nonpositive

    def _value_at_rank(self, rank: int) -> float:
        """Estimate of the order statistic of 0-based ``rank``."""
        if rank < self.nonpositive:
            return 0.0
        cum = np.cumsum(self.counts)
        i = int(np.searchsorted(cum, rank - self.nonpositive, side="right"))
        return 2.0 * self.gamma ** (i + self.lo) / (self.gamma + 1.0)

    def quantile(self, q: float) -> float:
        """The ``q`` quantile (0..1) with numpy's default (linear) interpolation between order
        statistics, each estimated within the relative accuracy; NaN when empty."""
        n = self.count
        if n == 0:
            return math.nan
        pos = q * (n - 1)
        lo = math.floor(pos)
        frac = pos - lo
        v_lo = self._value_at_rank(lo)
        if frac == 0.0 or lo + 1 >= n:
            return v_lo
        v_hi = self._value_at_rank(lo + 1)
        return v_lo + (v_hi - v_lo) * frac


class Moments:
    """Count, sum and quantile sketch of one latency metric: its mean is exact, its quantiles
    within the sketch's relative accuracy, in constant memory.

    Parameters
    ----------
    accuracy
        Relative accuracy of the quantile sketch (:class:`LogHistogram`).
    """

    def __init__(self, accuracy: float = 0.005) -> None:
        self.n = 0
        self.total = 0.0
        self.sketch = LogHistogram(accuracy)

    def add(self, x: npt.NDArray[np.float64]) -> None:
        """Add a batch of values (NaN and infinities are left out)."""
        x = x[np.isfinite(x)]
        self.n += int(x.shape[0])
        self.total += float(x.sum())
        self.sketch.add(x)

    def merge(self, other: Moments) -> None:
        """Add another metric's values (same accuracy)."""
        self.n += other.n
        self.total += other.total
        self.sketch.merge(other.sketch)

    def stats(self, prefix: str) -> dict[str, float]:
        """``{prefix}_mean``, ``_p50``, ``_p90``, ``_p99`` (NaN when empty), as the run summary
        names them."""
        if self.n == 0:
            return {f"{prefix}_{st}": math.nan for st in ("mean", "p50", "p90", "p99")}
        out = {f"{prefix}_mean": float(self.total / self.n)}
        for st, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
            out[f"{prefix}_{st}"] = float(self.sketch.quantile(q))
        return out


def latencies(
    r: dict[str, npt.NDArray[Any]], mask: npt.NDArray[np.bool_]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """End-to-end latency, TTFT and TPOT (seconds) of the requests ``mask`` selects in a batch
    of request records (:mod:`sdsim.metrics`' definitions; TPOT is NaN for one-token outputs)."""
    fin = np.asarray(r["finish"], dtype=np.float64)[mask]
    arr = np.asarray(r["arrival"], dtype=np.float64)[mask]
    ft = np.asarray(r["first_token"], dtype=np.float64)[mask]
    out = np.asarray(r["output_tokens"])[mask]
    with np.errstate(divide="ignore", invalid="ignore"):
        tpot = np.where(out > 1, (fin - ft) / (out - 1), np.nan)
    return fin - arr, ft - arr, tpot


class RunningSummary:
    """Accumulates what the run summary needs, batch by batch.

    Parameters
    ----------
    arrival
        Arrival times of every request of the run (the workload), in order.
    warmup
        Requests excluded from latency statistics (by arrival order).
    accuracy
        Relative accuracy of the quantile sketches.
    slo
        The scenario's SLOs (goodput and attainment, :mod:`sdsim.slo`).
    """

    def __init__(
        self,
        arrival: npt.NDArray[np.float64],
        warmup: int,
        accuracy: float = 0.005,
        slo: SloSpec | None = None,
    ):
        n = int(arrival.shape[0])
        self.n = n
        self.warmup = min(warmup, max(n - 1, 0))
        self.t0 = float(arrival[self.warmup]) if n else 0.0
        self.t_last = float(arrival[-1]) if n else 0.0
        self.arrival = arrival
        self.metrics = {m: Moments(accuracy) for m in ("e2e", "ttft", "tpot")}
        self.slo = SloCounter(slo_bounds(slo) if slo is not None else {})
        self.completed = 0
        self.measured = 0
        self.aborted = 0
        self.aborted_sojourn = 0.0  # measured aborted requests' time in system (Little's law)
        self.aborted_measured = 0
        self.finished_in_window = 0
        self.queue_delay_sum = 0.0
        self.queue_delay_n = 0
        self.steps_sum = 0
        self.accepted_sum = 0
        self.drafted_sum = 0
        self.preemptions = 0
        self.preempted_requests = 0
        self.cached_sum = 0  # measured requests: prompt tokens from the prefix cache, all prompt
        self.prompt_sum = 0
        self.prefill_computed = 0  # steps: prefill tokens computed and taken from the cache
        self.prefill_saved = 0
        self.overlap = 0.0  # finished requests: time in system inside the window (clip at t_last)
        self.pending: list[tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]] = []
        # the stability test's sampling times over the whole window (finishes counted there as
        # they stream by; a run stopped early reads them from the fine histogram instead)
        grid = stability_grid(self.t0, self.t_last) if self.t_last > self.t0 else None
        self.grid = grid
        self.fin_le_grid = np.zeros(0 if grid is None else grid.shape[0], dtype=np.int64)
        self.fine_edges = (
            np.linspace(self.t0, self.t_last, _FINE + 1) if self.t_last > self.t0 else None
        )
        self.fine = np.zeros(_FINE + 2, dtype=np.int64)
        # steps
        self.n_steps = 0
        self.w_sum = 0.0
        self.batch_w = 0.0
        self.waiting_w = 0.0
        self.kv_w = 0.0
        self.emitted_in = 0
        self.overhead_sum = 0.0
        self.k_dec = 0
        self.dec = 0

    # ------------------------------------------------------------------ feeding
    def add_requests(self, r: dict[str, npt.NDArray[Any]]) -> None:
        """Add a batch of request records (finished or, at the end, not)."""
        fin = np.asarray(r["finish"], dtype=np.float64)
        arr = np.asarray(r["arrival"], dtype=np.float64)
        left = np.isfinite(fin)  # completed or aborted: out of the system
        aborted = np.asarray(r["aborted"], dtype=np.bool_)
        done_mask = left & ~aborted
        self.completed += int(done_mask.sum())
        self.aborted += int(aborted.sum())
        self.preemptions += int(r["preemptions"].sum())
        self.preempted_requests += int((r["preemptions"] > 0).sum())
        t0, tl = self.t0, self.t_last
        f = fin[left]
        a = arr[left]
        fd = fin[done_mask]
        self.finished_in_window += int(((fd >= t0) & (fd <= tl)).sum())
        self.overlap += float(np.clip(np.minimum(f, tl) - np.maximum(a, t0), 0, None).sum())
        if self.grid is not None and f.shape[0]:
            self.fin_le_grid += np.searchsorted(np.sort(f), self.grid, side="right")
            assert self.fine_edges is not None
            idx = np.searchsorted(self.fine_edges, f, side="right")
            self.fine += np.bincount(idx, minlength=_FINE + 2)
        if not left.all():
            # unfinished (only at the end): their overlap needs the final window end
            self.pending.append((arr[~left], fin[~left]))
        measured = np.asarray(r["rid"]) >= self.warmup
        gone = aborted & measured
        if gone.any():
            self.aborted_sojourn += float((fin[gone] - arr[gone]).sum())
            self.aborted_measured += int(gone.sum())
        meas = done_mask & measured
        if not meas.any():
            return
        self.measured += int(meas.sum())
        e2e, ttft, tpot = latencies(r, meas)
        self.metrics["e2e"].add(e2e)
        self.metrics["ttft"].add(ttft)
        self.metrics["tpot"].add(tpot)
        self.slo.add(e2e, ttft, tpot)
        qd = np.asarray(r["first_scheduled"], dtype=np.float64)[meas] - arr[meas]
        qd = qd[~np.isnan(qd)]
        self.queue_delay_sum += float(qd.sum())
        self.queue_delay_n += int(qd.shape[0])
        self.steps_sum += int(np.asarray(r["steps"])[meas].sum())
        self.accepted_sum += int(np.asarray(r["accepted"])[meas].sum())
        self.drafted_sum += int(np.asarray(r["drafted"])[meas].sum())
        self.cached_sum += int(np.asarray(r["cached_tokens"])[meas].sum())
        self.prompt_sum += int(np.asarray(r["prompt_tokens"])[meas].sum())

    def add_steps(self, s: dict[str, npt.NDArray[Any]]) -> None:
        """Add a block of step records."""
        start = np.asarray(s["start"], dtype=np.float64)
        if start.shape[0] == 0:
            return
        dur = np.asarray(s["duration"], dtype=np.float64)
        end = start + dur
        t0, tl = self.t0, self.t_last
        w = np.clip(np.minimum(end, tl) - np.maximum(start, t0), 0, None)
        self.n_steps += int(start.shape[0])
        self.w_sum += float(w.sum())
        self.batch_w += float((s["num_seqs"] * w).sum())
        self.waiting_w += float((s["waiting"] * w).sum())
        self.kv_w += float((s["kv_blocks_used"] * w).sum())
        self.emitted_in += int(s["emitted"][(end >= t0) & (end <= tl)].sum())
        self.overhead_sum += float(np.asarray(s["overhead_s"]).sum())
        dec = np.asarray(s["decode_seqs"])
        self.k_dec += int((np.asarray(s["k"]) * dec).sum())
        self.dec += int(dec.sum())
        self.prefill_computed += int(np.asarray(s["prefill_tokens"]).sum())
        self.prefill_saved += int(np.asarray(s["cached_tokens"]).sum())

    # ------------------------------------------------------------------ result
    def summary(
        self,
        end_time: float,
        stopped_early: bool,
        stop_reason: str,
        info: dict[str, Any],
        seed: int,
    ) -> dict[str, Any]:
        """The summary dict, keys as :func:`sdsim.metrics.summarize` gives them."""
        t0 = self.t0
        t1 = min(self.t_last, end_time) if stopped_early else self.t_last
        span = t1 - t0
        out: dict[str, Any] = {}
        out["completed"] = self.completed
        out["measured"] = self.measured
        out["aborted"] = self.aborted
        if span > 0:
            out["throughput_rps"] = float(self.finished_in_window / span)
        else:
            dur = end_time - t0
            out["throughput_rps"] = float(self.measured / dur) if dur > 0 else float("nan")
        for m, mo in self.metrics.items():
            out.update(mo.stats(m))
        out["queue_delay_mean"] = (
            float(self.queue_delay_sum / self.queue_delay_n) if self.queue_delay_n else math.nan
        )
        st_sum, acc = self.steps_sum, self.accepted_sum
        out["tokens_per_step_mean"] = float((st_sum + acc) / st_sum) if st_sum else math.nan
        drafted = self.drafted_sum
        out["draft_acceptance_rate"] = float(acc / drafted) if drafted else math.nan
        replicas = int(info.get("replicas", 1) or 1)
        if span > 0 and self.n_steps:
            out["batch_mean"] = float(self.batch_w / span)
            out["busy_fraction"] = float(self.w_sum / span / replicas)
            out["throughput_tps"] = float(self.emitted_in / span)
            waiting_mean = float(self.waiting_w / max(self.w_sum, 1e-300))
        else:
            out["batch_mean"] = float("nan")
            out["busy_fraction"] = float("nan")
            out["throughput_tps"] = float("nan")
            waiting_mean = float("nan")
        out["waiting_mean"] = waiting_mean
        # requests still in the system at the end: in it from arrival to the window's end
        overlap = self.overlap
        for a, _ in self.pending:
            overlap += float(np.clip(t1 - np.maximum(a, t0), 0, None).sum())
        out["in_system_mean"] = float(overlap / span) if span > 0 else float("nan")
        arrival = self.arrival
        if span > 0:
            lam_obs = float(((arrival >= t0) & (arrival <= t1)).sum() / span)
        else:
            lam_obs = math.nan
        out["arrival_rate_obs"] = lam_obs
        ism = out["in_system_mean"]
        sojourn = out["e2e_mean"]
        if self.aborted_measured:  # aborted requests were in the system too
            e2e = self.metrics["e2e"]
            sojourn = (e2e.total + self.aborted_sojourn) / (e2e.n + self.aborted_measured)
        out["little_residual"] = (
            float((ism - lam_obs * sojourn) / ism) if ism and math.isfinite(ism) else math.nan
        )
        arrived = int(((arrival >= t0) & (arrival <= t1)).sum()) if span > 0 else 0
        verdict = judge_stability(
            self._in_system(t1), t0, t1, arrived, saturation_stop(stopped_early, stop_reason)
        )
        out.update(stability_summary(verdict))
        out["stop_reason"] = stop_reason
        out["preemptions"] = self.preemptions
        out["preempted_requests"] = self.preempted_requests
        out.update(info)
        ns = self.n_steps
        out["overhead_s_mean"] = float(self.overhead_sum / ns) if ns else math.nan
        out["k_mean"] = float(self.k_dec / self.dec) if self.n_steps and self.dec else math.nan
        total = out.get("kv_blocks_total")
        if total and self.n_steps and span > 0:
            out["kv_util_mean"] = float(self.kv_w / (span * total * replicas))
        else:
            out["kv_util_mean"] = math.nan
        out.update(
            prefix_stats(
                self.cached_sum, self.prompt_sum, self.prefill_computed, self.prefill_saved
            )
        )
        out.update(self.slo.stats(self.n - self.warmup, out))
        out["steps"] = self.n_steps
        out["duration_s"] = float(end_time)
        out["seed"] = int(seed)
        out["sdsim_version"] = __version__
        return out

    def _in_system(self, t1: float) -> npt.NDArray[np.float64]:
        """Requests in the system at the stability test's sampling times over ``[t0, t1]``."""
        t0 = self.t0
        if t1 <= t0:
            return np.zeros(0)
        grid = stability_grid(t0, t1)
        arr_le = np.searchsorted(self.arrival, grid, side="right")
        if self.grid is not None and t1 == self.t_last:
            fin_le = self.fin_le_grid
        else:
            # stopped early: read finishes at the grid from the fine histogram (bin-interpolated)
            assert self.fine_edges is not None
            cum = np.concatenate([[self.fine[0]], self.fine[0] + np.cumsum(self.fine[1:])])
            pos = np.interp(grid, self.fine_edges, np.arange(_FINE + 1, dtype=np.float64))
            lo = np.floor(pos).astype(np.int64)
            frac = pos - lo
            hi = np.minimum(lo + 1, _FINE)
            fin_le = cum[lo] + frac * (cum[hi] - cum[lo])
        return np.asarray(arr_le - fin_le, dtype=np.float64)
