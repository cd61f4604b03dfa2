"""Steady-state estimates from simulation output: warm-up truncation, batch means, honest CIs.

A run starts from an empty server, so its first requests see less load than the steady state,
and near saturation neighbouring requests share the same slow periods, so its requests are far
from independent. Both bias and understate the uncertainty of a latency percentile read off one
short run. This module is the methodology ``sdsim validate`` and sweeps share:

* **Warm-up truncation, MSER-5** (White 1997; White, Cobb & Spratt 2000): the series of a run in
  arrival order is cut into batches of 5, and the number ``d`` of leading batches deleted is the
  one that minimises the squared standard error of the remaining batch means,
  ``MSER(d) = sum_{j>d} (Z_j - mean_d)^2 / (m - d)^2``, over ``d <= m / 2``. A cut of more
  than 40% of the run means the run is too short to show the end of its transient
  (:class:`Truncation` says so). Applied to log latencies, so that one early outlier of a
  heavy-tailed law does not decide the cut; the cut of a run is the largest over its e2e and
  TTFT series.
* **Batch means** within each retained series (Fishman & Yarberry's LBATCH rule): the batch size
  starts at ``n / 64`` batches and doubles while the lag-1 autocorrelation of the batch means is
  significant at 10% (``r_1 > 1.28 / sqrt(B)``), keeping at least 8 batches in all. Replications
  are independent, so their batches pool.
* **Percentile CIs that respect the range** (batched indicators; Heidelberger & Lewis 1984):
  the p-quantile is the pooled sample's; the variance of the empirical CDF there,
  ``F_n(q_p)``, comes from the batch means of the indicators ``1{x <= q_p}``, and the interval
  is the pooled sample's quantiles at ``p -/+ t se``: both ends are observed values, so an
  interval never leaves the data's range (no negative latencies), and it is asymmetric where
  the law is.
* **Means**: the batch-means t-interval, taken on the log scale for positive metrics
  (``mean x exp(+-t se / mean)``, the delta method), so it stays positive too.
* **Multi-turn sessions** (closed loop, :func:`session_window`): sessions start at a steady
  rate, but a run starts with none in progress and ends with only the running ones sending
  turns, so the turn rate ramps up over a session's life and down after the last session
  started (a 300-request run of scenarios/multi-turn-chat.yaml offered 10 req/s and measured
  5.0). Only the requests between the end of the ramp-up (the first arrival plus the 99th
  percentile of the run's session durations) and the last session's start are a steady
  state; MSER-5 then cuts within them as for any run.
* **Proportions** (e.g. the fraction of replications that stayed stable): the Wilson score
  interval, inside [0, 1].
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_TARGET",
    "Estimate",
    "Sequential",
    "SteadyState",
    "Truncation",
    "batch_size",
    "log_t_interval",
    "mean_estimate",
    "mser_truncation",
    "pool_runs",
    "quantile_estimate",
    "run_columns",
    "run_estimates",
    "run_sequential",
    "session_window",
    "simulate_series",
    "wilson_interval",
]

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pandas as pd

FloatArray = npt.NDArray[np.float64]

# MSER batch size (MSER-5) and the largest share of a run it may delete.
MSER_BATCH = 5
MSER_MAX_FRACTION = 0.5
# A cut deleting more than this share of the run marks it as too short for its transient.
SETTLED_FRACTION = 0.4
# Batch-means rule: initial number of batches, the fewest kept, the one-sided level of the
# lag-1 autocorrelation test that doubles the batch size.
INITIAL_BATCHES = 20
MIN_BATCHES = 8
_Z_LAG1 = 1.2816  # one-sided 10%


@dataclass(frozen=True)
class Truncation:
    """Where a run's warm-up ends.

    Attributes
    ----------
    deleted
        Observations (requests, in arrival order) deleted from the start.
    total
        Observations in the run.
    settled
        False when the cut deletes more than ``SETTLED_FRACTION`` of the run (the statistic is
        still falling near ``MSER_MAX_FRACTION``, where the search stops): the run is too short
        to show the end of its transient.
    """

    deleted: int
    total: int
    settled: bool


def mser_truncation(x: npt.ArrayLike, batch: int = MSER_BATCH, log: bool = True) -> Truncation:
    """MSER-``batch`` warm-up truncation of one series (see the module docstring).

    Parameters
    ----------
    x
        The series in time order (NaN and non-positive values are skipped when ``log``).
    batch
        Batch size of the MSER statistic (5: MSER-5).
    log
        Take logs first (positive series; robust to one early outlier of a heavy tail).

    Returns
    -------
    Truncation
    """
    v = np.asarray(x, dtype=np.float64)
    keep = np.isfinite(v) & (v > 0) if log else np.isfinite(v)
    idx = np.flatnonzero(keep)
    n = int(v.shape[0])
    m = idx.shape[0] // batch
    if m < 4:
        return Truncation(0, n, False)
    y = np.log(v[idx]) if log else v[idx]
    z = y[: m * batch].reshape(m, batch).mean(axis=1)
    # suffix sums over the batches kept when d are deleted: k = m - d of them
    s1 = np.cumsum(z[::-1])[::-1]
    s2 = np.cumsum((z * z)[::-1])[::-1]
    k = np.arange(m, 0, -1, dtype=np.float64)
    sse = np.maximum(s2 - s1 * s1 / k, 0.0)
    mser = sse / (k * k)
    half = int(m * MSER_MAX_FRACTION)
    d = int(np.argmin(mser[: half + 1]))
    # a cut near the search's end (the statistic still falling there, or noise making a dip
    # just before it) means the transient may reach past half the run: too short to tell
    settled = d <= SETTLED_FRACTION * m
    # deleted observations: the position (in the full series) of the first kept batch
    return Truncation(int(idx[d * batch]) if d > 0 else 0, n, settled)


def _lag1(z: FloatArray, groups: Sequence[int]) -> float:
    """Lag-1 autocorrelation of batch means, pooled within groups (replications)."""
    mu = float(z.mean())
    num = 0.0
    start = 0
    for g in groups:
        seg = z[start : start + g] - mu
        if g > 1:
            num += float((seg[1:] * seg[:-1]).sum())
        start += g
    den = float(((z - mu) ** 2).sum())
    return num / den if den > 0 else 0.0


def _batch_means(series: Sequence[FloatArray], b: int) -> tuple[FloatArray, list[int]]:
    """Means of consecutive batches of ``b`` per series (a remainder at the start is dropped:
    it lies nearest the warm-up)."""
    out: list[FloatArray] = []
    groups: list[int] = []
    for s in series:
        nb = s.shape[0] // b
        if nb == 0:
            groups.append(0)
            continue
        rest = s.shape[0] - nb * b
        out.append(s[rest:].reshape(nb, b).mean(axis=1))
        groups.append(nb)
    return (np.concatenate(out) if out else np.zeros(0)), groups


def batch_size(series: Sequence[FloatArray], min_size: int = 1) -> int:
    """The LBATCH batch size for a set of independent series (see the module docstring).

    Parameters
    ----------
    series
        One array per replication (time order).
    min_size
        Smallest batch size allowed (e.g. so that a batch holds a few exceedances of a high
        percentile).

    Returns
    -------
    int
        Batch size (at least ``min_size``; the largest that leaves ``MIN_BATCHES`` batches when
        the test never passes).
    """
    total = sum(int(s.shape[0]) for s in series)
    if total == 0:
        return max(1, min_size)
    b = max(min_size, total // INITIAL_BATCHES, 1)
    while True:
        z, groups = _batch_means(series, b)
        nb = z.shape[0]
        if nb < 2 * MIN_BATCHES or _lag1(z, groups) <= _Z_LAG1 / math.sqrt(max(nb, 1)):
            return b
        b *= 2


def _t(df: int, confidence: float) -> float:
    from scipy import stats  # lazy: scipy's import is slow and most runs never need it

    return float(stats.t.ppf(0.5 + confidence / 2, max(df, 1)))


@dataclass(frozen=True)
class Estimate:
    """A steady-state point estimate with its confidence interval.

    Attributes
    ----------
    value
        Point estimate (pooled over the retained observations of every replication).
    low, high
        Confidence interval (NaN when there are too few batches to form one).
    n
        Observations it rests on.
    batches
        Batches the variance came from.
    se
        Standard error of ``value`` (for a quantile: the interval's half-width over the t
        quantile, on the value scale).
    """

    value: float
    low: float
    high: float
    n: int
    batches: int
    se: float = math.nan

    @property
    def rel_half_width(self) -> float:
        """Half the interval's width relative to the estimate (inf without an interval)."""
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.value == 0:
            return math.inf
        return 0.5 * (self.high - self.low) / abs(self.value)


def _clean(series: Sequence[npt.ArrayLike]) -> list[FloatArray]:
    out = []
    for s in series:
        a = np.asarray(s, dtype=np.float64)
        out.append(a[np.isfinite(a)])
    return out


def quantile_estimate(
    series: Sequence[npt.ArrayLike], p: float, confidence: float = 0.95
) -> Estimate:
    """The p-quantile of the pooled series with a batched-indicator confidence interval.

    Parameters
    ----------
    series
        Retained observations of each replication, in time order.
    p
        Probability in (0, 1).
    confidence
        Two-sided level.

    Returns
    -------
    Estimate
        ``value`` is ``numpy.quantile`` of the pooled sample (linear interpolation, as the run
        summary computes percentiles); the interval's ends are pooled-sample quantiles, so they
        lie within the observed range.
    """
    ss = _clean(series)
    pooled = np.concatenate(ss) if ss else np.zeros(0)
    n = int(pooled.shape[0])
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0, 0)
    q = float(np.quantile(pooled, p))
    # a batch should hold a few observations beyond the quantile on average
    floor = math.ceil(5.0 / min(p, 1.0 - p))
    ind = [(s <= q).astype(np.float64) for s in ss]
    b = batch_size(ind, floor)
    z, _ = _batch_means(ind, b)
    nb = int(z.shape[0])
    if nb < 2:
        return Estimate(q, math.nan, math.nan, n, nb)
    se = float(z.std(ddof=1)) / math.sqrt(nb)
    t = _t(nb - 1, confidence)
    lo = float(np.quantile(pooled, min(max(p - t * se, 0.0), 1.0)))
    hi = float(np.quantile(pooled, min(max(p + t * se, 0.0), 1.0)))
    return Estimate(q, lo, hi, n, nb, (hi - lo) / (2.0 * t))


def log_t_interval(
    value: float, se: float, df: int, confidence: float = 0.95
) -> tuple[float, float]:
    """A t-interval on the log scale for a positive estimate: ``value x exp(+-t se / value)``.

    The delta method's interval for ``log(value)``; for a small relative error it is the plain
    t-interval, and it never reaches 0 or below. Non-positive values get the plain t-interval.
    """
    if not (math.isfinite(value) and math.isfinite(se)) or df < 1:
        return (math.nan, math.nan)
    half = _t(df, confidence) * se
    if value <= 0:
        return (value - half, value + half)
    f = math.exp(half / value)
    return (value / f, value * f)


def mean_estimate(series: Sequence[npt.ArrayLike], confidence: float = 0.95) -> Estimate:
    """The pooled mean with a batch-means interval (log scale, see :func:`log_t_interval`)."""
    ss = _clean(series)
    pooled = np.concatenate(ss) if ss else np.zeros(0)
    n = int(pooled.shape[0])
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0, 0)
    m = float(pooled.mean())
    b = batch_size(ss)
    z, _ = _batch_means(ss, b)
    nb = int(z.shape[0])
    if nb < 2:
        return Estimate(m, math.nan, math.nan, n, nb)
    se = float(z.std(ddof=1)) / math.sqrt(nb)
    lo, hi = log_t_interval(m, se, nb - 1, confidence) if np.all(pooled > 0) else (
        m - _t(nb - 1, confidence) * se,
        m + _t(nb - 1, confidence) * se,
    )
    return Estimate(m, lo, hi, n, nb, se)


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (inside [0, 1]; NaN for no trials)."""
    if trials <= 0:
        return (math.nan, math.nan)
    from scipy import stats

    z = float(stats.norm.ppf(0.5 + confidence / 2))
    ph = successes / trials
    den = 1.0 + z * z / trials
    mid = (ph + z * z / (2 * trials)) / den
    half = z * math.sqrt(ph * (1 - ph) / trials + z * z / (4 * trials * trials)) / den
    lo = 0.0 if successes <= 0 else max(0.0, mid - half)
    hi = 1.0 if successes >= trials else min(1.0, mid + half)
    return (lo, hi)


STATISTICS = ("mean", "p50", "p90", "p99")
_P = {"p50": 0.5, "p90": 0.9, "p99": 0.99}


def run_estimates(
    series: Mapping[str, Sequence[npt.ArrayLike]], confidence: float = 0.95
) -> dict[str, Estimate]:
    """Every ``{metric}_{mean,p50,p90,p99}`` estimate of retained per-request series.

    Parameters
    ----------
    series
        metric -> one retained series per replication (arrival order).
    confidence
        Two-sided level.

    Returns
    -------
    dict
        ``"{metric}_{statistic}" -> Estimate``.
    """
    out: dict[str, Estimate] = {}
    for m, ss in series.items():
        out[f"{m}_mean"] = mean_estimate(ss, confidence)
        for st in STATISTICS[1:]:
            out[f"{m}_{st}"] = quantile_estimate(ss, _P[st], confidence)
    return out


# Quantile of the run's session durations past which the session population is taken as steady.
SESSION_SETTLE_Q = 0.99


def session_window(requests: pd.DataFrame) -> tuple[int, int]:
    """The steady-state slice ``[lo, hi)`` of a run's requests (arrival order).

    Without sessions (no ``session``/``turn`` columns) the whole run. With them: from the first
    request arriving :data:`SESSION_SETTLE_Q` of the session durations (first arrival to last
    finish) after the run's first arrival, to the last request arriving no later than the last
    session's first turn (after it only the sessions in progress send turns: the ramp-down).
    An empty slice when the run is too short to have one.
    """
    n = len(requests)
    if "turn" not in requests.columns or n == 0:
        return 0, n
    arrival = requests["arrival"].to_numpy(dtype=np.float64)
    by = requests.groupby("session")
    life = (by["finish"].max() - by["arrival"].min()).to_numpy(dtype=np.float64)
    life = life[np.isfinite(life)]
    settle = float(np.quantile(life, SESSION_SETTLE_Q)) if life.size else 0.0
    last_start = float(arrival[requests["turn"].to_numpy() == 0].max())
    lo = int(np.searchsorted(arrival, arrival[0] + settle, side="left"))
    hi = int(np.searchsorted(arrival, last_start, side="right"))
    return (lo, hi) if lo < hi else (0, 0)


def run_columns(requests: pd.DataFrame, confidence: float = 0.95) -> dict[str, float | int]:
    """One run's steady-state statistics as sweep columns: its warm-up cut
    (``ss_deleted``, ``ss_settled``) and, for every ``{metric}_{statistic}``, the estimate over
    the rest (``..._ss``), its within-run batch-means standard error (``..._ss_se``) and the
    batches it rests on (``..._ss_batches``), so that replications pool into CIs
    (:func:`pool_runs`).

    Parameters
    ----------
    requests
        The run's requests frame (arrival order: ``e2e``, ``ttft``, ``tpot``); a session
        workload's is first cut to its :func:`session_window`.
    """
    lo, hi = session_window(requests)
    requests = requests.iloc[lo:hi]
    a = mser_truncation(requests["e2e"].to_numpy(dtype=np.float64))
    b = mser_truncation(requests["ttft"].to_numpy(dtype=np.float64))
    cut = max(a.deleted, b.deleted)
    est = run_estimates(
        {m: [requests[m].to_numpy(dtype=np.float64)[cut:]] for m in METRICS}, confidence
    )
    out: dict[str, float | int] = {"ss_deleted": cut, "ss_settled": bool(a.settled and b.settled)}
    for key, e in est.items():
        out[f"{key}_ss"] = e.value
        out[f"{key}_ss_se"] = e.se
        out[f"{key}_ss_batches"] = e.batches
    return out


def pool_runs(
    values: npt.ArrayLike,
    ses: npt.ArrayLike,
    batches: npt.ArrayLike,
    confidence: float = 0.95,
) -> tuple[float, float, float]:
    """Replications' steady-state estimates pooled: their mean and a log-scale interval from
    their within-run standard errors (``se^2 = sum se_r^2 / R^2``, ``df = sum (B_r - 1)``).

    Returns
    -------
    mean, low, high
        NaN bounds where a run has no standard error (too few batches).
    """
    v = np.asarray(values, dtype=np.float64)
    e = np.asarray(ses, dtype=np.float64)
    nb = np.asarray(batches, dtype=np.float64)
    ok = np.isfinite(v)
    if not ok.any():
        return (math.nan, math.nan, math.nan)
    v, e, nb = v[ok], e[ok], nb[ok]
    m = float(v.mean())
    if not np.all(np.isfinite(e)) or not np.all(nb >= 2):
        return (m, math.nan, math.nan)
    se = math.sqrt(float((e * e).sum())) / v.shape[0]
    lo, hi = log_t_interval(m, se, int((nb - 1).sum()), confidence)
    return (m, lo, hi)


# --------------------------------------------------------------------------- sequential runs

# What the sequential procedure aims at: the relative CI half-width of these statistics.
TARGET_STATISTICS = ("e2e_p99", "ttft_p99", "tpot_p99")
DEFAULT_TARGET = 0.03
DEFAULT_INITIAL = 10_000
DEFAULT_MAX_REQUESTS = 400_000
METRICS = ("e2e", "ttft", "tpot")


@dataclass
class SteadyState:
    """Steady-state estimates of one scenario at one rate, from sequential replications.

    Attributes
    ----------
    estimates
        ``"{metric}_{statistic}" -> Estimate`` over every retained observation.
    seeds, lengths, deleted
        Per replication: run seed, requests simulated, requests deleted as warm-up.
    settled
        Every replication's warm-up ended in its first half (MSER).
    stable
        No replication was judged unstable (a saturation stop or a growing queue); runs the
        stability test could not judge count as stable.
    target_met
        Every statistic of :data:`TARGET_STATISTICS` reached the target half-width.
    attainment
        With SLO bounds: the fraction of retained requests within each (``"e2e_p99"`` ...:
        the request's metric at most the bound; a request without a TPOT meets a TPOT bound)
        and within all (``"all"``), batch-means intervals.
    """

    estimates: dict[str, Estimate]
    seeds: list[int]
    lengths: list[int]
    deleted: list[int]
    settled: bool
    stable: bool
    target_met: bool
    attainment: dict[str, Estimate] = field(default_factory=dict)

    @property
    def requests(self) -> int:
        """Requests simulated in all."""
        return int(sum(self.lengths))

    def worst_half_width(self) -> float:
        """The largest relative half-width among the targeted statistics."""
        hws = [self.estimates[k].rel_half_width for k in TARGET_STATISTICS if k in self.estimates]
        finite = [h for h in hws if not math.isnan(h)]
        return max(finite) if finite else math.inf


def simulate_series(args: tuple[dict[str, object], int, int]) -> dict[str, object]:
    """One replication for the sequential procedure (a top-level function: a process pool
    pickles it): the scenario as plain data, its seed and length; returns the per-request
    latencies in arrival order (a session workload's within its :func:`session_window`), the
    share of their prompt tokens served from the prefix cache and whether the run stayed
    stable."""
    from sdsim.scenario import scenario_from_dict
    from sdsim.simulation import simulate

    data, seed, n = args
    scn = scenario_from_dict(data).with_overrides(
        {"workload.num_requests": int(n), "warmup_requests": int(n) // 10}
    )
    res = simulate(scn, seed=seed)
    r = res.requests
    lo, hi = session_window(r)  # a session workload's ramp-up and ramp-down (module docstring)
    r = r.iloc[lo:hi]
    out: dict[str, object] = {m: r[m].to_numpy(dtype=np.float64) for m in METRICS}
    prompt = float(r["prompt_tokens"].sum())
    out["prefix_hit_rate"] = float(r["cached_tokens"].sum()) / prompt if prompt else math.nan
    # the run's stability verdict is True, False or None (too short to judge): only False is
    # an overload
    out["stable"] = res.summary.get("stable") is not False
    out["seed"] = int(seed)
    out["n"] = int(n)
    return out


class Sequential:
    """The sequential procedure for one scenario at one rate (driven by :func:`run_sequential`).

    Stage 1 runs ``reps`` replications of ``initial`` requests. After each stage every run's
    warm-up is cut (MSER-5 on its e2e and TTFT series, the later cut); a run whose cut would
    fall in its second half is too short, and the next stage doubles the length. Otherwise the
    pooled estimates are formed, and while the worst relative half-width of the targeted
    statistics exceeds ``target`` the next stage adds ``reps`` replications long enough for
    the pooled sample to reach it (half-widths shrink as ``1 / sqrt(n)``; 10% margin), until
    ``max_requests`` are spent. An unstable run ends the procedure.
    """

    def __init__(
        self,
        data: dict[str, object],
        seed: int,
        *,
        target: float = DEFAULT_TARGET,
        initial: int = DEFAULT_INITIAL,
        max_requests: int = DEFAULT_MAX_REQUESTS,
        reps: int = 2,
        slo: Mapping[str, float] | None = None,
    ) -> None:
        self.data, self.seed, self.target = data, int(seed), float(target)
        self.slo = dict(slo or {})
        self.initial, self.max_requests, self.reps = int(initial), int(max_requests), int(reps)
        self.runs: list[dict[str, object]] = []
        self.cuts: list[Truncation] = []
        self.pending = 0
        self.done = False
        self.result: SteadyState | None = None
        self._next: list[int] = [self.initial] * self.reps

    def tasks(self) -> list[tuple[dict[str, object], int, int]]:
        """The next stage's runs (empty while a stage is in flight or when done)."""
        if self.done or self.pending or not self._next:
            return []
        start = self.seed + len(self.runs)
        out = [(self.data, start + i, n) for i, n in enumerate(self._next)]
        self.pending = len(out)
        self._next = []
        return out

    def add(self, run: dict[str, object]) -> None:
        """Record one finished run; after the stage's last one, decide what comes next."""
        self.runs.append(run)
        e2e = np.asarray(run["e2e"])
        ttft = np.asarray(run["ttft"])
        a, b = mser_truncation(e2e), mser_truncation(ttft)
        self.cuts.append(
            Truncation(max(a.deleted, b.deleted), a.total, a.settled and b.settled)
        )
        self.pending -= 1
        if self.pending == 0:
            self._decide()

    def _estimate(self) -> SteadyState:
        series = {
            m: [np.asarray(r[m])[c.deleted :] for r, c in zip(self.runs, self.cuts, strict=True)]
            for m in METRICS
        }
        est = run_estimates(series)
        attain: dict[str, Estimate] = {}
        if self.slo:
            within = {
                k: [np.where(np.isnan(x), k.startswith("tpot"), x <= b)
                    for x in series[k.split("_")[0]]]
                for k, b in self.slo.items()
            }
            both = [np.logical_and.reduce(parts) for parts in zip(*within.values(), strict=True)]
            for k, ind in [*within.items(), ("all", both)]:
                e = mean_estimate([i.astype(np.float64) for i in ind])
                # a fraction: its interval kept inside [0, 1]
                attain[k] = Estimate(e.value, max(e.low, 0.0), min(e.high, 1.0), e.n, e.batches,
                                     e.se)
        st = SteadyState(
            est,
            [int(r["seed"]) for r in self.runs],  # type: ignore[call-overload]
            [int(r["n"]) for r in self.runs],  # type: ignore[call-overload]
            [c.deleted for c in self.cuts],
            all(c.settled for c in self.cuts),
            all(bool(r["stable"]) for r in self.runs),
            False,
            attain,
        )
        st.target_met = st.worst_half_width() <= self.target
        return st

    def _decide(self) -> None:
        st = self._estimate()
        self.result = st
        spent = st.requests
        left = self.max_requests - spent
        if not st.stable or st.target_met or left < self.reps * min(self.initial, 1000):
            self.done = True
            return
        last = [int(r["n"]) for r in self.runs[-self.reps :]]  # type: ignore[call-overload]
        hw = st.worst_half_width()
        if not all(c.settled for c in self.cuts[-self.reps :]) or not math.isfinite(hw):
            # a transient past half the run, or too few batches for an interval: twice as long
            n = min(2 * max(last), left // self.reps)
        else:
            kept = sum(c.total - c.deleted for c in self.cuts)
            need = kept * (hw / self.target) ** 2 * 1.1 - kept
            cut = max(c.deleted for c in self.cuts)
            n = int(min(max(math.ceil(need / self.reps) + cut, self.initial), left // self.reps))
        if n < min(self.initial, 1000):
            self.done = True
            return
        self._next = [n] * self.reps


def run_sequential(
    items: Sequence[Sequential],
    jobs: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Drive several :class:`Sequential` procedures to the end, sharing one process pool.

    Parameters
    ----------
    items
        The procedures (each scenario at each rate).
    jobs
        Worker processes (1: in this process).
    progress
        Called with (requests simulated, requests planned so far).
    """
    done_req = 0
    planned = 0

    def note(tasks: list[tuple[dict[str, object], int, int]]) -> None:
        nonlocal planned
        planned += sum(t[2] for t in tasks)

    if jobs <= 1:
        while True:
            batch = [(s, t) for s in items for t in s.tasks()]
            if not batch:
                break
            note([t for _, t in batch])
            if progress is not None:
                progress(done_req, planned)
            for s, t in batch:
                s.add(simulate_series(t))
                done_req += t[2]
                if progress is not None:
                    progress(done_req, planned)
        return
    import concurrent.futures as cf

    with cf.ProcessPoolExecutor(max_workers=jobs) as pool:
        pending: dict[cf.Future[dict[str, object]], tuple[Sequential, int]] = {}

        def submit() -> None:
            for s in items:
                ts = s.tasks()
                note(ts)
                for t in ts:
                    pending[pool.submit(simulate_series, t)] = (s, t[2])

        submit()
        if progress is not None:
            progress(done_req, planned)
        while pending:
            finished, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            for fut in finished:
                s, n = pending.pop(fut)
                s.add(fut.result())
                done_req += n
            submit()
            if progress is not None:
                progress(done_req, planned)
