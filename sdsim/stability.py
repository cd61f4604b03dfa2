"""Is the simulated server stable at this load? A statistical test on the growth of its queue.

A run is judged on the number of requests in the system, ``N(t)``, over its measurement window
(warm-up removed). The window is cut into :data:`BATCHES` equal time batches and ``N`` averaged
in each: batch means of a stationary process over batches much longer than its correlation time
are nearly independent and normal (the method of batch means of simulation output analysis), so
the least-squares slope of the batch means against time, divided by its standard error, follows
Student's t with ``BATCHES - 2`` degrees of freedom when the queue does not grow. The verdict:

* ``unstable``: the run was stopped at a saturation bound (``limits.max_waiting``), or the slope
  is positive at one-sided significance :data:`ALPHA` (1%) **and** large enough to matter (the
  queue gains at least :data:`MIN_GROWTH_FRACTION` of the arrival rate: a slow approach to steady
  state, seen at high load in a short run, grows far slower than an overload);
* ``stable``: the queue's growth is below :data:`MIN_GROWTH_FRACTION` of the arrival rate with
  99% confidence (the one-sided upper bound of the slope) and the batches look independent (lag-1
  autocorrelation of the residuals at most :data:`MAX_LAG1`), so the test's premise holds;
* ``undetermined`` ("not enough data to judge") otherwise: fewer than :data:`MIN_ARRIVALS`
  arrivals in the window, batches that are correlated (the queue's fluctuations are slower than a
  batch: run longer), or significant growth too small to call.

False alarms: for a stationary queue whose batch means are independent, the test calls
``unstable`` with probability at most ``ALPHA`` = 1% (measured: 1.1% of 4,000 independent
series reject the slope test); the growth threshold lowers it further. Batch means that stay
correlated make the slope test reject more often (4% at a lag-1 correlation of 0.5, after the
AR(1) widening of its error), which is what the growth threshold and the autocorrelation gate
are for. The standard errors assume batch means nearly normal: hence the minimum number of
arrivals.
``tests/test_stability.py`` measures the rate on independent series and the verdicts on clearly
stable, clearly unstable and too-short simulated runs; ``notes/testing.md`` has the figures.
"""

from __future__ import annotations

__all__ = [
    "ALPHA",
    "BATCHES",
    "MAX_LAG1",
    "MIN_ARRIVALS",
    "MIN_GROWTH_FRACTION",
    "NOT_ENOUGH_DATA",
    "StabilityVerdict",
    "judge_stability",
    "saturation_stop",
    "stability_grid",
    "stability_summary",
]

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

BATCHES = 20
POINTS_PER_BATCH = 32
ALPHA = 0.01
MIN_ARRIVALS = 200
MIN_GROWTH_FRACTION = 0.05
# Lag-1 autocorrelation of the batch residuals above which the batches are not independent
# enough to call a run stable: ~2.7 standard errors (1/sqrt(20)) of its estimate for independent
# batches, so fewer than 1% of independent series are sent to "not enough data".
MAX_LAG1 = 0.6
MAX_R = 0.95
NOT_ENOUGH_DATA = "not enough data to judge"


@dataclass(frozen=True)
class StabilityVerdict:
    """The outcome of :func:`judge_stability`.

    Attributes
    ----------
    verdict
        ``"stable"``, ``"unstable"`` or ``"undetermined"``.
    growth_rps
        Least-squares slope of the batch means of ``N(t)`` (requests per second; NaN when the
        window is empty).
    p_value
        One-sided p-value of the slope (NaN when not tested).
    reason
        One line: what decided the verdict.
    """

    verdict: str
    growth_rps: float
    p_value: float
    reason: str

    @property
    def stable(self) -> bool | None:
        """``True``, ``False``, or ``None`` when there is not enough data to judge."""
        return {"stable": True, "unstable": False}.get(self.verdict)


def stability_grid(t0: float, t1: float) -> npt.NDArray[np.float64]:
    """Times at which ``N(t)`` is sampled: :data:`POINTS_PER_BATCH` per batch, batch midpoints
    of equal sub-intervals, over ``[t0, t1]``."""
    n = BATCHES * POINTS_PER_BATCH
    return t0 + (np.arange(n, dtype=np.float64) + 0.5) * ((t1 - t0) / n)


def judge_stability(
    n_in_system: npt.NDArray[np.float64],
    t0: float,
    t1: float,
    arrivals: int,
    stopped_at_bound: str | None = None,
) -> StabilityVerdict:
    """Decide whether the queue grows, from ``N(t)`` sampled on :func:`stability_grid`.

    Parameters
    ----------
    n_in_system
        Requests in the system at the times of ``stability_grid(t0, t1)``.
    t0, t1
        The measurement window (s).
    arrivals
        Arrivals inside the window.
    stopped_at_bound
        Why the run was stopped at a saturation bound, if it was.

    Returns
    -------
    StabilityVerdict
    """
    span = t1 - t0
    nan = math.nan
    if stopped_at_bound:
        growth = _slope(n_in_system, span) if span > 0 else nan
        return StabilityVerdict("unstable", growth, nan, f"stopped: {stopped_at_bound}")
    if not span > 0 or arrivals < MIN_ARRIVALS:
        return StabilityVerdict(
            "undetermined",
            _slope(n_in_system, span) if span > 0 and len(n_in_system) > 1 else nan,
            nan,
            f"{NOT_ENOUGH_DATA}: {arrivals} arrivals in the measurement window, the test needs "
            f">= {MIN_ARRIVALS}",
        )
    y = np.asarray(n_in_system, dtype=np.float64).reshape(BATCHES, -1).mean(axis=1)
    x = (np.arange(BATCHES) + 0.5) * (span / BATCHES)
    xc = x - x.mean()
    sxx = float(xc @ xc)
    slope = float(xc @ (y - y.mean()) / sxx)
    resid = y - y.mean() - slope * xc
    dof = BATCHES - 2
    rss = float(resid @ resid)
    lam = arrivals / span
    bound = MIN_GROWTH_FRACTION * lam
    # serial correlation left between batches widens the slope's error by sqrt((1 + r)/(1 - r))
    # (the AR(1) variance factor); r is the residuals' lag-1 autocorrelation, capped
    lag1 = float(resid[1:] @ resid[:-1]) / rss if rss > 0 else 0.0
    r = min(max(lag1, 0.0), MAX_R)
    se = math.sqrt(rss / dof / sxx * (1 + r) / (1 - r))
    from scipy import stats  # lazy: scipy's import costs ~1 s and most callers never need it

    q = float(stats.t.ppf(1 - ALPHA, dof))
    lo, hi = slope - q * se, slope + q * se
    p = float(stats.t.sf(slope / se, dof)) if se > 0 else (0.0 if slope > 0 else 1.0)
    share = slope / lam
    if lo > 0 and slope >= bound:
        return StabilityVerdict(
            "unstable",
            slope,
            p,
            f"the queue grows by {slope:.3g} req/s ({share:.0%} of the arrival rate; one-sided "
            f"p = {p:.2g} < {ALPHA:g})",
        )
    if hi < bound and lag1 <= MAX_LAG1:
        return StabilityVerdict(
            "stable",
            slope,
            p,
            f"the queue grows by less than {MIN_GROWTH_FRACTION:.0%} of the arrival rate "
            f"({1 - ALPHA:.0%} upper bound {hi / lam:.1%})",
        )
    if lag1 > MAX_LAG1:
        why = (
            f"the queue's fluctuations are slower than the test's {BATCHES} batches (lag-1 "
            f"autocorrelation {lag1:.2f} > {MAX_LAG1:.2f}); run longer"
        )
    else:
        why = (
            f"its growth, {share:.1%} of the arrival rate, is not known to within "
            f"{MIN_GROWTH_FRACTION:.0%} ({1 - 2 * ALPHA:.0%} interval {lo / lam:.1%} to "
            f"{hi / lam:.1%}); run longer"
        )
    return StabilityVerdict("undetermined", slope, p, f"{NOT_ENOUGH_DATA}: {why}")


def _slope(n: npt.NDArray[np.float64], span: float) -> float:
    y = np.asarray(n, dtype=np.float64)
    x = np.linspace(0.0, span, y.shape[0])
    xc = x - x.mean()
    return float(xc @ (y - y.mean()) / (xc @ xc))


def saturation_stop(stopped_early: bool, stop_reason: str) -> str | None:
    """The stop reason when a run was stopped at its saturation bound (``limits.max_waiting``):
    evidence of overload by itself. A time limit (``limits.max_sim_time_s``) is not: such a run is
    judged on what it simulated."""
    return stop_reason if stopped_early and "max_waiting" in stop_reason else None


def stability_summary(verdict: StabilityVerdict) -> dict[str, object]:
    """The summary keys of a verdict: ``stable`` (True, False or None), ``stability`` (the
    verdict), ``stability_reason``, ``stability_p`` and ``queue_growth_rps``."""
    return {
        "stable": verdict.stable,
        "stability": verdict.verdict,
        "stability_reason": verdict.reason,
        "stability_p": verdict.p_value,
        "queue_growth_rps": verdict.growth_rps,
    }
