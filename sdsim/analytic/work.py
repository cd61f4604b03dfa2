"""The work one request brings: output-length law and the exact law of its decode steps.

A request's prefill step emits its first token; it then needs ``g - 1`` more tokens, emitted
``min(X, remaining)`` at a time with ``X`` the truncated-geometric tokens per step
(:mod:`sdsim.acceptance`). Its decode steps ``S`` therefore follow the exact steps-to-finish law
of ``g - 1`` tokens, mixed over the output-length law and, for a per-request alpha, over the
acceptance law. This is the analytic model's "g / E" made exact: the end effect (the last step cut
at what is still needed) is kept, not approximated.
"""

from __future__ import annotations

__all__ = [
    "RequestWork",
    "bin_equal_mass",
    "bin_equal_mass_rows",
    "bin_moments",
    "discretize_length",
    "request_work",
]

import math
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import numpy.typing as npt
from scipy import stats

from sdsim.acceptance import (
    expected_tokens_per_step,
    steps_to_finish_moments,
    steps_to_finish_table,
)
from sdsim.scenario import (
    BetaAlpha,
    EmpiricalLength,
    FixedLength,
    GeometricLength,
    LengthSpec,
    LognormalLength,
    Scenario,
    TraceLength,
    UniformLength,
)
from sdsim.workload_spec import CcdfLength

# More distinct lengths than this are grouped into equal-probability bins (each represented by
# its conditional mean): the latency quantiles move by far less than 1% and the cost stays flat.
MAX_LENGTH_POINTS = 48
# Above this many tokens the exact steps table (quadratic memory) is replaced by a normal law with
# the exact mean and variance from the O(n k) recursion; at such lengths the law is normal anyway.
EXACT_TABLE_TOKENS = 4096
# Per-request alpha (beta law) is integrated with this many equal-probability nodes.
ALPHA_NODES = 12


# Cumulative-mass edges of the length bins: equal mass in the bulk, finer in the upper tail,
# where a request's latency percentile (p90, p99) is decided by how long its answer is.
_TAIL_EDGES = (0.96, 0.97, 0.975, 0.98, 0.985, 0.99, 0.993, 0.996, 0.998, 0.999)


def _mass_edges(nbins: int) -> npt.NDArray[np.float64]:
    bulk = nbins - len(_TAIL_EDGES)
    return np.concatenate((np.linspace(0.0, 0.95, bulk)[1:], _TAIL_EDGES, [1.0]))


def bin_equal_mass(
    values: npt.NDArray[np.float64], probs: npt.NDArray[np.float64], nbins: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Group a discrete law, sorted by value, into ``nbins`` bins of equal probability up to
    95% and finer ones in the upper tail (:data:`_TAIL_EDGES`: ten bins above 95%), each
    represented by its mass-weighted mean; returns (means, probabilities) of the bins that
    hold mass."""
    if values.shape[0] <= nbins:
        return values, probs
    m, w = bin_equal_mass_rows(values[None, :], probs[None, :], nbins)
    keep = w[0] > 0
    return m[0][keep], w[0][keep]


def bin_equal_mass_rows(
    values: npt.NDArray[np.float64], probs: npt.NDArray[np.float64], nbins: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """:func:`bin_equal_mass` of every row of ``[rows, points]`` arrays at once, each row
    sorted by value; returns ``[rows, nbins]`` means and probabilities (empty bins: zeros)."""
    rows = values.shape[0]
    cum = np.cumsum(probs, axis=1)
    # bin of each value: the first edge its cumulative mass (mid-point of its own mass) is below
    tot = np.where(cum[:, -1:] > 0, cum[:, -1:], 1.0)
    mid = (cum - 0.5 * probs) / tot
    idx = np.minimum(np.searchsorted(_mass_edges(nbins), mid, side="right"), nbins - 1)
    flat = (idx + nbins * np.arange(rows)[:, None]).ravel()
    w = np.bincount(flat, weights=probs.ravel(), minlength=rows * nbins).reshape(rows, nbins)
    wv = np.bincount(flat, weights=(probs * values).ravel(), minlength=rows * nbins)
    wv = wv.reshape(rows, nbins)
    means = np.where(w > 0, wv / np.where(w > 0, w, 1.0), 0.0).astype(np.float64)
    return means, w.astype(np.float64)


def bin_moments(
    values: npt.NDArray[np.float64], probs: npt.NDArray[np.float64], nbins: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Equal-mass bins of a discrete law (values in order): ``(mean, weight, within-bin
    variance)`` per bin that holds mass."""
    keep = probs > 1e-14
    v, p = values[keep], probs[keep]
    if v.shape[0] <= nbins:
        return v, p, np.zeros_like(v)
    cum = np.cumsum(p)
    idx = np.minimum((cum / cum[-1] * nbins).astype(np.int64), nbins - 1)
    w = np.bincount(idx, weights=p, minlength=nbins).astype(np.float64)
    m1 = np.bincount(idx, weights=p * v, minlength=nbins).astype(np.float64)
    m2 = np.bincount(idx, weights=p * v * v, minlength=nbins).astype(np.float64)
    ok = w > 0
    mean = m1[ok] / w[ok]
    var = np.maximum(m2[ok] / w[ok] - mean**2, 0.0)
    return mean, w[ok], var


def discretize_length(
    spec: LengthSpec, nbins: int = MAX_LENGTH_POINTS
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """A length law as (values, probabilities), at most ``nbins`` points.

    Parameters
    ----------
    spec
        Fixed, uniform, lognormal (rounded and clipped as the workload draws it), geometric
        (capped at its max), empirical, a trace column (its empirical law) or a survival table.
    nbins
        Most points (bins of equal mass up to 95%, finer in the upper tail).

    Returns
    -------
    values, probs
        Integer token counts (>= 1) and their probabilities (summing to 1).
    """
    if isinstance(spec, FixedLength):
        return np.array([spec.value], dtype=np.int64), np.array([1.0])
    if isinstance(spec, UniformLength):
        v = np.arange(spec.low, spec.high + 1, dtype=np.float64)
        p = np.full(v.shape[0], 1.0 / v.shape[0])
    elif isinstance(spec, GeometricLength):
        # numpy's geometric (support 1, 2, ...) with p = 1 / mean, capped at max
        pg = 1.0 / spec.mean
        top = int(spec.max)
        v = np.arange(1, top + 1, dtype=np.float64)
        p = pg * (1.0 - pg) ** (v - 1)
        p[-1] += (1.0 - pg) ** top
    elif isinstance(spec, EmpiricalLength | TraceLength):
        # a list, or a trace column: its empirical law
        u, c = np.unique(np.asarray(spec.values, dtype=np.float64), return_counts=True)
        v, p = u, c / c.sum()
    elif isinstance(spec, CcdfLength):
        lv, lp = spec.law()
        v, p = np.asarray(lv, dtype=np.float64), np.asarray(lp, dtype=np.float64)
    elif isinstance(spec, LognormalLength):
        # The workload rounds a moment-matched lognormal and clips it to [min, max].
        s2 = math.log1p(spec.cv**2)
        mu = math.log(spec.mean) - s2 / 2
        dist = stats.lognorm(s=math.sqrt(s2), scale=math.exp(mu))
        lo, hi = spec.min, spec.max
        grid = np.arange(lo, hi + 1, dtype=np.float64)
        if grid.shape[0] > 20000:
            # a long support: integer cells at the quantiles that matter, equal bins elsewhere
            qs = dist.ppf(np.linspace(0, 1, 4001)[1:-1])
            grid = np.unique(np.clip(np.rint(qs), lo, hi))
        edges = np.concatenate(([-np.inf], (grid[:-1] + grid[1:]) / 2, [np.inf]))
        cdf = dist.cdf(np.clip(edges, 0, None))
        cdf[0], cdf[-1] = 0.0, 1.0
        v, p = grid, np.diff(cdf)
        keep = p > 0
        v, p = v[keep], p[keep] / p[keep].sum()
    else:  # the scenario union is closed
        raise TypeError(f"unknown length law {spec!r}")
    vb, pb = bin_equal_mass(v, p, nbins)
    return np.maximum(np.rint(vb), 1).astype(np.int64), pb / pb.sum()


def _alpha_nodes(scn: Scenario) -> list[tuple[float | list[float], float]]:
    a = scn.acceptance.alpha
    if isinstance(a, BetaAlpha):
        # equal-probability nodes at the mid-quantiles of each slice
        q = (np.arange(ALPHA_NODES) + 0.5) / ALPHA_NODES
        nodes = stats.beta(a.a, a.b).ppf(q)
        return [(float(x), 1.0 / ALPHA_NODES) for x in nodes]
    if isinstance(a, list):
        return [(list(a), 1.0)]
    return [(float(a), 1.0)]


def _steps_pmf_rows(
    ns: npt.NDArray[np.int64], alpha: float | list[float], k: int
) -> list[npt.NDArray[np.float64]]:
    """P(S(n) = s) for each n in ns (exact table, or a normal law with exact moments)."""
    n_max = int(ns.max()) if ns.size else 0
    if n_max <= EXACT_TABLE_TOKENS:
        table = steps_to_finish_table(n_max, alpha, k)
        return [table[int(n), : int(n) + 1].copy() for n in ns]
    m1, var = steps_to_finish_moments(n_max, alpha, k)
    rows = []
    for n in ns:
        n = int(n)
        s = np.arange(n + 1, dtype=np.float64)
        sd = math.sqrt(max(var[n], 1e-12))
        cdf = stats.norm.cdf((np.append(s, n + 1) - 0.5 - m1[n]) / sd)
        row = np.diff(cdf)
        rows.append(row / row.sum())
    return rows


@dataclass(frozen=True)
class RequestWork:
    """The law of one request's output length and decode steps.

    Attributes
    ----------
    g_values, g_probs
        Output-length law (tokens, including the first token from prefill).
    steps_pmf
        ``steps_pmf[i][s] = P(S = s | g = g_values[i])``: decode steps after the prefill step.
    steps_marginal
        ``P(S = s)`` mixed over output lengths (and per-request alpha).
    tokens_per_step
        E[X], tokens emitted per decode step (mean over the alpha law).
    """

    g_values: npt.NDArray[np.int64]
    g_probs: npt.NDArray[np.float64]
    steps_pmf: list[npt.NDArray[np.float64]]
    steps_marginal: npt.NDArray[np.float64]
    tokens_per_step: float
    _kappa: dict[int, float] = field(default_factory=dict, compare=False, repr=False)

    @cached_property
    def mean_output(self) -> float:
        """E[g]."""
        return float(self.g_values @ self.g_probs)

    @cached_property
    def mean_steps(self) -> float:
        """E[S], the exact decode steps per request (the paper's g / E)."""
        s = np.arange(self.steps_marginal.shape[0], dtype=np.float64)
        return float(s @ self.steps_marginal)

    def shared_life(self, prefill_steps: int) -> float:
        """``kappa = E[min(L1, L2)] / E[L]`` for two independent lives ``L = P + S``.

        The share of a life that two requests admitted together spend side by side: 1 when
        every request takes the same number of steps, 1/2 for exponential lives, small for a
        heavy-tailed output law. It says how much of a burst of arrivals is still in the
        batch together later, i.e. how much burstiness of the arrivals turns into variance of
        the number in system (``Var N = E[N] (1 + kappa (I - 1))`` for arrivals whose counts
        have index of dispersion ``I``; exact for batch arrivals in an infinite-server queue).
        """
        got = self._kappa.get(prefill_steps)
        if got is None:
            surv = np.cumsum(self.steps_marginal[::-1])[::-1]  # P(S >= s), s = 0..
            life = np.concatenate((np.ones(max(prefill_steps, 0)), surv))  # P(L > u), u = 0..
            total = float(life.sum())
            got = float((life * life).sum() / total) if total > 0 else 1.0
            self._kappa[prefill_steps] = got
        return got

    @cached_property
    def var_steps(self) -> float:
        """Var[S] (acceptance luck and output-length spread together)."""
        s = np.arange(self.steps_marginal.shape[0], dtype=np.float64)
        m = float(s @ self.steps_marginal)
        return float((s * s) @ self.steps_marginal - m * m)


def request_work(scn: Scenario, k: int | None = None) -> RequestWork:
    """The exact law of decode steps per request for a scenario.

    Parameters
    ----------
    scn
        Scenario (output-length law, acceptance).
    k
        Draft length; defaults to ``scn.spec.k``.

    Returns
    -------
    RequestWork
    """
    kk = scn.spec.k if k is None else int(k)
    g, pg = discretize_length(scn.workload.output_tokens)
    ns = g - 1
    rows_total: list[npt.NDArray[np.float64]] = [np.zeros(int(n) + 1) for n in ns]
    ex = 0.0
    for alpha, w in _alpha_nodes(scn):
        for acc, row in zip(rows_total, _steps_pmf_rows(ns, alpha, kk), strict=True):
            acc += w * row
        ex += w * expected_tokens_per_step(alpha, kk)
    smax = int(ns.max()) + 1
    marg = np.zeros(smax)
    for p, row in zip(pg, rows_total, strict=True):
        marg[: row.shape[0]] += p * row
    return RequestWork(g, pg, rows_total, marg / marg.sum(), ex)
