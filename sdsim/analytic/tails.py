"""Latency quantiles without simulation: a tagged request in a fluctuating batch.

The published model gives only the mean. Here a tagged request's latency is built from:

1. **its own work**: the exact law of its decode steps ``s`` (steps-to-finish under geometric
   acceptance, mixed over the output-length law; :mod:`sdsim.analytic.work`);
2. **the batch it finds**: ``n0`` others in system on arrival, from the GPS birth-death law
   (:mod:`sdsim.analytic.gps`; Poisson arrivals see time averages);
3. **how the batch drifts during its life**, in step time: each of the ``n0`` survivors keeps
   decoding for an equilibrium-residual number of steps ``R'`` (``P(R' = j) ∝ P(life > j)``), and
   new arrivals come at rate lambda, each adding its prefill ``c_p`` once and ``b`` per step while
   it decodes (``min(S', steps left)`` steps). A step with ``n`` decoding requests and ``q``
   prefills lasts ``a + b n + c_p q``. New arrivals form a compound Poisson sum, survivors a
   binomial one;
   their exact first two moments are sums over the life's steps, and the self-excitation (longer
   steps admit more arrivals) stretches the result by ``1 / (1 - lambda K / l)``.
   Which line ``(a, b, c_p)``: the step curve is not a line (a dense model's turns steeper once
   compute-bound, an MoE model's flattens as the batch covers all experts), so the life is
   linearised at the upper end of the batches it passes through. A request that finds the
   batch above its life's mean batch (the batch drains) takes the tangent at ``n0``; one that
   finds it below (the batch fills up) is solved on the curve itself: its mean number of others
   ``x`` is the root of a scalar equation per cell, the steps cost ``T(x)`` and it fluctuates
   with the tangent at ``x`` (:func:`_life_on_curve`). The tangent at a small ``n0`` of a
   concave curve would price every arrival at the steep start of the curve: for
   Qwen3-30B-A3B it gave ``1 - lambda K / l < 0``, i.e. no finite life at all (it was floored
   at 1e-6 and produced components with means of -1e6 s). The curve is the one averaged over
   the batch's fluctuation (normal, variance = the birth-death law's index of dispersion times
   the mean), and the batch is capped at ``n_max``;
4. **the step it arrives in**: the wait for the current step to end is the residual of a
   length-biased step, then its prefill step (shared with the other arrivals of that step);
5. **admission waits** when the batch is full (``max_num_seqs`` or the token budget binds):
   ``P(wait)`` from the capped birth-death law, and ``W | W > 0`` exponential with the mean of
   the Allen-Cunneen heavy-traffic approximation ``(c_a^2 + c_s^2) / 2 / (mu_full - lambda)``.

Given ``(n0, s)`` the latency is taken as normal with these moments (exponentially modified normal
when it waits), and the quantiles of the mixture over ``(n0, s, g)`` are the exact roots of its CDF
(:mod:`~sdsim.analytic.mixtures`). TTFT is a
mixture of uniforms (residual) shifted by prefill-step durations with Poisson prefill counts.
"""

from __future__ import annotations

__all__ = ["LocalLines", "TailModel", "latency_distribution"]

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import numba
import numpy as np
import numpy.typing as npt

from sdsim._jit import jit_eager
from sdsim.analytic.coefficients import Coefficients
from sdsim.analytic.gps import BirthDeath
from sdsim.analytic.mixtures import LatencyLaw, NormalMixture, UniformExpMixture
from sdsim.analytic.stepcurve import LocalSteps, poisson_pmf
from sdsim.analytic.work import RequestWork

QUANTILES = (0.5, 0.9, 0.99)
N0_BINS = 120
S_BINS = 48
# Mixture components kept in the e2e/TPOT CDFs (n0 bins x s bins x output lengths): the quantiles
# move by < 0.1% beyond this, and each CDF evaluation costs one normal per component.
MAX_COMPONENTS = 30_000

FloatArray = npt.NDArray[np.float64]
# n (others in system, per bin) -> (a, b, c_p) arrays: the local lines of the real step curve
LocalLines = Callable[[FloatArray], tuple[FloatArray, FloatArray, FloatArray]]


@dataclass
class TailModel:
    """Mean and quantiles of e2e, TTFT and TPOT from the tagged-request model.

    Attributes
    ----------
    stats
        ``{metric}_{mean,p50,p90,p99}`` for metric in e2e, ttft, tpot (seconds).
    p_wait
        Probability an arrival waits for admission.
    mean_wait
        Mean admission wait (seconds).
    mean_batch
        Time-average decoding batch the steps see.
    laws
        The mixture laws the quantiles are read from (``e2e``, ``tpot``, ``ttft``; each with an
        exact ``cdf`` and ``quantile``), for checks and plots.
    """

    stats: dict[str, float] = field(default_factory=dict)
    p_wait: float = 0.0
    mean_wait: float = 0.0
    mean_batch: float = 0.0
    laws: dict[str, LatencyLaw] = field(default_factory=dict, repr=False)


def _bin(
    values: FloatArray, probs: FloatArray, nbins: int
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Equal-mass bins of a discrete law: (mean, weight, within-bin variance)."""
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


def _survival_sums(surv: FloatArray, n: int) -> tuple[FloatArray, FloatArray]:
    """For Q(j) = surv[j] (j >= 1), cumulative sums CQ[L] = sum_{j<=L} Q(j), CJQ = sum j Q(j)."""
    q = np.zeros(n + 1)
    m = min(n, surv.shape[0] - 1)
    q[1 : m + 1] = surv[1 : m + 1]
    j = np.arange(n + 1, dtype=np.float64)
    return np.cumsum(q), np.cumsum(j * q)


def _window_count_moments(
    cq: FloatArray, cjq: FloatArray, i1: npt.ArrayLike, i2: npt.ArrayLike
) -> tuple[FloatArray, FloatArray]:
    """Mean and variance of #{j in [i1, i2] : R >= j} for R with survival Q (cumulative sums)."""
    i1a = np.broadcast_to(np.asarray(i1, dtype=np.int64), np.shape(i2))
    lo = np.maximum(i1a - 1, 0)
    hi = np.maximum(np.asarray(i2, dtype=np.int64), lo)
    s0 = cq[hi] - cq[lo]
    s1 = cjq[hi] - cjq[lo]
    m1 = s0
    m2 = 2.0 * (s1 - (i1a - 1) * s0) - s0
    return m1, np.maximum(m2 - m1 * m1, 0.0)


@dataclass
class _Life:
    """The tagged request's life on the real step curve, per (n0, s) cell."""

    t_life: FloatArray  # mean life (seconds), own prefill step(s) included
    t_dec: FloatArray  # mean decode window (seconds)
    tbar: FloatArray  # mean step over the life
    b: FloatArray  # tangent slope of the step curve at the life's mean batch
    cp: FloatArray  # prefill cost of a request at the life's mean batch
    den: FloatArray  # 1 - d(life)/d(life) through the arrivals: the self-excitation factor
    capped: FloatArray  # 1.0 where the batch sits at the cap for the life, else 0.0
    batch: FloatArray  # the life's mean number of others
    step: FloatArray  # the real step with the tagged and that many others

    def part(self, start: int, size: int, shape: tuple[int, int]) -> _Life:
        """The cells ``start .. start + size`` (of flat arrays) as a grid of ``shape``."""
        return _Life(
            *(getattr(self, f.name)[start : start + size].reshape(shape) for f in fields(self))
        )


# Illinois regula falsi on the life's mean batch: iterations and tolerance (batches).
_LIFE_ITER = 60
_LIFE_TOL = 1e-9
# Floor of the self-excitation factor in the variance (the mean never divides by it): a stable
# root of the life equation has a factor > 0; only a root where the curve bends sharply can
# come close to 0, and there the linear (delta-method) variance amplification is not meaningful.
_DEN_FLOOR = 0.05


# Gauss-Hermite nodes and weights (probabilists'): E[f(Z)], Z ~ N(0, 1), exact to degree 9
_GH_Z, _GH_W = np.polynomial.hermite_e.hermegauss(5)
_GH_W = _GH_W / _GH_W.sum()


class _Tabulated:
    """``x -> (a, b, c_p)`` read off a table of the smoothed curve (see :func:`_smoothed`).

    Linear interpolation in ``xg`` (``np.interp``); beyond ``top`` the step continues along the
    last slope. Callable like any :data:`LocalLines`; :func:`_life_on_curve` also hands the
    table itself to a compiled root solver that reads it the same way.
    """

    def __init__(
        self, xg: FloatArray, step_t: FloatArray, b_t: FloatArray, cp_t: FloatArray, top: float
    ) -> None:
        self.xg, self.step_t, self.b_t, self.cp_t, self.top = xg, step_t, b_t, cp_t, top
        # for the compiled reader: np.interp's slopes per table, and 1 / spacing to guess a
        # point's interval (then checked against the knots themselves)
        self.slopes = np.stack([_slopes(xg, v) for v in (b_t, step_t, cp_t)])
        self.inv_h = (xg.shape[0] - 1) / (xg[-1] - xg[0]) if xg[-1] > xg[0] else 0.0

    def __call__(self, n: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
        x = np.asarray(n, dtype=np.float64)
        bb = np.interp(x, self.xg, self.b_t)
        step = np.interp(x, self.xg, self.step_t) + self.b_t[-1] * np.maximum(x - self.top, 0.0)
        return step - bb * (x + 1.0), bb, np.interp(x, self.xg, self.cp_t)


@numba.njit(inline="always")
def _knot(x: float, xp: FloatArray, inv_h: float) -> int:  # pragma: no cover - compiled
    """The interval ``np.interp`` reads for ``x`` in an evenly spaced ``xp``: -1 below it,
    ``len(xp)`` above it, else the ``j`` with ``xp[j] <= x < xp[j + 1]`` (``len - 1`` at the
    last knot), as numpy's binary search finds it (guessed from the spacing, then moved to
    the knots' own comparisons)."""
    n = xp.shape[0]
    if x < xp[0]:
        return -1
    if x > xp[n - 1]:
        return n
    j = min(max(int((x - xp[0]) * inv_h), 0), n - 1)
    while j > 0 and xp[j] > x:
        j -= 1
    while j < n - 1 and xp[j + 1] <= x:
        j += 1
    return j


@numba.njit(inline="always")
def _interp_knot(
    x: float, j: int, xp: FloatArray, fp: FloatArray, slopes: FloatArray, row: int
) -> float:  # pragma: no cover - compiled
    """``np.interp(x, xp, fp)`` on the interval ``j`` of :func:`_knot`, numpy's operations in
    its order (``slopes[row, j] = (fp[j+1] - fp[j]) / (xp[j+1] - xp[j])``, as numpy precomputes
    them; a point on a knot or past an end takes that knot's value)."""
    n = xp.shape[0]
    if j < 0:
        return fp[0]
    if j >= n - 1 or xp[j] == x:
        return fp[min(j, n - 1)]
    return slopes[row, j] * (x - xp[j]) + fp[j]


def _slopes(xp: FloatArray, fp: FloatArray) -> FloatArray:
    """``np.interp``'s per-interval slopes (the same division), one per knot (0 at the last)."""
    out = np.zeros(fp.shape[0])
    out[:-1] = (fp[1:] - fp[:-1]) / (xp[1:] - xp[:-1])
    return out


@numba.njit(inline="always")
def _life_excess(
    x: float,
    xg: FloatArray,
    step_t: FloatArray,
    b_t: FloatArray,
    cp_t: FloatArray,
    sl: FloatArray,
    inv_h: float,
    top: float,
    lam: float,
    p: float,
    q_full: float,
    sf: float,
    e: float,
    s_1: float,
    cm: float,
) -> float:  # pragma: no cover - compiled
    """:func:`_life_on_curve`'s ``excess`` for one cell, the same operations in the same order
    (``sl``: the slopes of ``b_t``, ``step_t``, ``cp_t`` as three rows)."""
    j = _knot(x, xg, inv_h)
    bb = _interp_knot(x, j, xg, b_t, sl, 0)
    step0 = _interp_knot(x, j, xg, step_t, sl, 1) + b_t[b_t.shape[0] - 1] * max(x - top, 0.0)
    a = step0 - bb * (x + 1.0)
    cp = _interp_knot(x, j, xg, cp_t, sl, 2)
    step = a + bb * (x + 1.0)
    base = max(e * step - p * bb + cp, 0.0)
    pf = max(1.0 - lam * cp * s_1 / e, 1e-12)
    t = min(base / pf, base + cp * s_1 * q_full)
    return (sf + lam * t / e * cm) / e - x


@jit_eager("void(f8[::1], f8[::1], f8[::1], f8[::1], f8[:, ::1], f8, f8, f8, f8, f8, f8, "
           "f8[::1], f8[::1], f8[::1], f8[::1], f8[::1], b1[::1])")  # fmt: skip
def _life_roots(
    xg: FloatArray,
    step_t: FloatArray,
    b_t: FloatArray,
    cp_t: FloatArray,
    sl: FloatArray,
    inv_h: float,
    top: float,
    lam: float,
    p: float,
    q_full: float,
    cap: float,
    sf: FloatArray,
    ellf: FloatArray,
    s1: FloatArray,
    cm: FloatArray,
    x_out: FloatArray,
    capped: npt.NDArray[np.bool_],
) -> None:  # pragma: no cover - compiled
    """The vectorised Illinois iteration of :func:`_life_on_curve`, one cell at a time (each
    cell's iterates depend on that cell only, so the floats are the same)."""
    for i in range(sf.shape[0]):
        e = ellf[i]
        lo = min(sf[i] / e, cap)
        hi = cap
        f_lo = _life_excess(
            lo, xg, step_t, b_t, cp_t, sl, inv_h, top, lam, p, q_full, sf[i], e, s1[i], cm[i]
        )
        f_hi = _life_excess(
            hi, xg, step_t, b_t, cp_t, sl, inv_h, top, lam, p, q_full, sf[i], e, s1[i], cm[i]
        )
        capped[i] = f_hi >= 0.0
        if capped[i]:
            x_out[i] = hi
            continue
        x_out[i] = lo
        if not f_lo > 0.0:
            continue
        side = 0
        for _ in range(_LIFE_ITER):
            den = f_hi - f_lo
            if den == 0.0:  # cannot happen (f_lo >= 0 > f_hi throughout); bisect if it did
                xm = 0.5 * (lo + hi)
            else:
                xm = hi - f_hi * (hi - lo) / den
            xm = min(max(xm, lo), hi)
            fm = _life_excess(
                xm,
                xg,
                step_t,
                b_t,
                cp_t,
                sl,
                inv_h,
                top,
                lam,
                p,
                q_full,
                sf[i],
                e,
                s1[i],
                cm[i],
            )
            up = fm >= 0.0
            if up:
                if side == 1:
                    f_hi = f_hi * 0.5
                lo = xm
                f_lo = fm
                side = 1
            else:
                if side == -1:
                    f_lo = f_lo * 0.5
                hi = xm
                f_hi = fm
                side = -1
            x_out[i] = xm
            if hi - lo <= _LIFE_TOL * (1.0 + xm) or abs(fm) <= _LIFE_TOL * 1e-3:
                break


def _smoothed(lines: LocalLines, top: float, dispersion: float = 1.0) -> _Tabulated:
    """Lines of the step curve averaged over the batch's fluctuation around its mean.

    The others in a step of the life fluctuate around their mean ``x`` (survivors leave by
    chance, arrivals are Poisson): their count is taken as normal with variance
    ``dispersion * x`` (the birth-death law's variance-to-mean ratio; 1 for Poisson), clipped to
    ``[0, top]``. The mean step is then ``E[T(x + Z)]`` and the slope that moves it
    ``E[T'(x + Z)]``: on a convex curve (a dense model turning compute-bound) a batch that
    crosses the bend often pays the steeper slope, on a concave one (MoE expert coverage) the
    flatter one. Returns ``x -> (a, b, c_p)`` with ``a + b (x + 1) = E[T(x + Z)]``.

    ``lines`` is read on ``[0, top]`` only (``top``: the most others the birth-death law
    reaches, where the step curve's chunk law is solved exactly); beyond, the curve continues
    along its last tangent.
    """
    # tabulated on a half-batch grid once (the solver evaluates it ~10 times per cell); the
    # smoothed curve is smooth on that scale, so linear interpolation is within ~1e-4 of it
    xg = np.linspace(0.0, top, max(2, int(2 * top) + 1))
    sd = np.sqrt(dispersion * xg)
    pts = np.clip(xg[:, None] + sd[:, None] * _GH_Z, 0.0, top)
    a, b, cp = lines(pts)
    step_t = ((a + b * (pts + 1.0)) * _GH_W).sum(axis=-1)
    b_t = (b * _GH_W).sum(axis=-1)
    cp_t = (cp * _GH_W).sum(axis=-1)

    return _Tabulated(xg, step_t, b_t, cp_t, float(top))


def _life_roots_numpy(
    excess: Callable[[FloatArray, npt.NDArray[np.intp]], FloatArray],
    sf: FloatArray,
    ellf: FloatArray,
    n: int,
    cap: float,
) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    """:func:`_life_on_curve`'s root per cell for any ``lines``: Illinois regula falsi on
    ``excess`` over all the cells still open at once."""
    allidx = np.arange(n)
    lo = np.minimum(sf.ravel() / ellf.ravel(), cap)
    hi = np.full(n, float(cap))
    f_lo = excess(lo, allidx)  # >= 0: the arrivals only add
    f_hi = excess(hi, allidx)
    capped = f_hi >= 0.0
    x = np.where(capped, hi, lo)
    todo = np.flatnonzero(~capped & (f_lo > 0.0))
    lo, hi, f_lo, f_hi = lo[todo], hi[todo], f_lo[todo], f_hi[todo]
    side = np.zeros(todo.shape[0], dtype=np.int64)
    for _ in range(_LIFE_ITER):
        if todo.shape[0] == 0:
            break
        xm = hi - f_hi * (hi - lo) / (f_hi - f_lo)
        xm = np.clip(xm, lo, hi)
        fm = excess(xm, todo)
        up = fm >= 0.0
        # Illinois: halve the stale end's value when the same end moves twice in a row
        f_hi = np.where(up & (side == 1), f_hi * 0.5, f_hi)
        f_lo = np.where(~up & (side == -1), f_lo * 0.5, f_lo)
        lo = np.where(up, xm, lo)
        f_lo = np.where(up, fm, f_lo)
        hi = np.where(up, hi, xm)
        f_hi = np.where(up, f_hi, fm)
        side = np.where(up, 1, -1)
        x[todo] = xm
        done = (hi - lo <= _LIFE_TOL * (1.0 + xm)) | (np.abs(fm) <= _LIFE_TOL * 1e-3)
        keep = ~done
        todo, lo, hi, f_lo, f_hi, side = (v[keep] for v in (todo, lo, hi, f_lo, f_hi, side))
    return x, capped


def _life_on_curve(
    lines: LocalLines,
    lam: float,
    surv_full: FloatArray,
    cm1: FloatArray,
    surv_dec: FloatArray,
    ell: npt.NDArray[np.int64],
    si: npt.NDArray[np.int64],
    P: int,
    cap: float,
    q_full: float,
) -> _Life:
    """Mean life of a tagged request with its batch on the real step curve, per cell.

    During the tagged's life of ``ell = s + P`` steps, the others in a step are its survivors
    (``surv_full`` decoding steps in total) and the arrivals during the life, ``lambda tbar`` per
    step, each decoding ``min(S', steps left)`` steps (``lambda tbar CM1[s]`` in total). With the
    mean number of others ``x = (surv_full + lambda tbar CM1[s]) / ell``, the life is

        t = ell T(x) - P b(x) + c_p(x) (1 + lambda t (s + 1) / ell)

    (``T(x) = a + b (x + 1)`` is the real step with the tagged and ``x`` others; the tagged does
    not decode in its own ``P`` prefill steps; every arrival adds its prefill once). Solved for
    ``t`` at a given ``x`` this is linear, so the life is the root of the scalar equation
    ``x = (surv_full + lambda t(x) CM1[s] / ell) / ell`` per cell.

    Why not the tangent at ``n0`` for the whole life: the batch drifts from ``n0`` towards the
    batch the arrivals build up, and on a concave curve (MoE: the expert coverage
    ``1 - (1 - m/M)^T`` makes a step of a near-empty batch very steep, ~3.9 ms per request at 0
    others against 0.06 ms at 20 for Qwen3-30B-A3B) the tangent at a small ``n0`` describes a
    server that would be unstable at the rate: ``1 - lambda K / ell`` (the linear
    self-excitation factor) goes below 0 and its solution is meaningless (negative lives of
    -1e6 s). On the curve itself the slope falls as the batch grows, and the root is finite.

    Bounds, both physical: the batch cannot hold more than ``cap`` others (``n_max - 1``); where
    even ``x = cap`` leaves more arrivals than that, the cap regime governs the whole life (full
    batch, step ``T(cap)``, arrivals wait), and the prefills admitted per step cannot exceed
    the completions per step of a full batch (``q_full = n_max / nu``).

    Parameters
    ----------
    lines
        ``n -> (a, b, c_p)``, the tangent of the real step curve at ``n`` others.
    lam
        Arrival rate.
    surv_full, surv_dec
        Survivors' decoding steps in the life and in the decode window (cells).
    cm1
        ``CM1[s]``: an arrival's decoding steps inside the life, per unit of ``lambda tbar``.
    ell, si
        Life and decode steps of each ``s`` bin.
    P
        Prefill steps.
    cap
        Most others a step can hold (``n_max - 1``).
    q_full
        Admissions per step of a full batch.
    """
    shape = np.broadcast_shapes(surv_full.shape, np.shape(ell))
    ellf = np.broadcast_to(np.maximum(ell, 1).astype(np.float64), shape)
    sdec = np.broadcast_to(si.astype(np.float64), shape)
    s1 = sdec + 1.0
    cm = np.broadcast_to(cm1, shape)
    sf = np.broadcast_to(surv_full, shape)

    def life_at(x: FloatArray, e: FloatArray, s_1: FloatArray) -> tuple[FloatArray, ...]:
        a, b, cp = lines(x)
        step = a + b * (x + 1.0)
        base = np.maximum(e * step - P * b + cp, 0.0)
        # arrivals' prefills: lambda t (s + 1) / ell of them, at most q_full per step
        pf = np.maximum(1.0 - lam * cp * s_1 / e, 1e-12)
        t = np.minimum(base / pf, base + cp * s_1 * q_full)
        return t, b, cp, step

    def excess(x: FloatArray, idx: npt.NDArray[np.intp]) -> FloatArray:
        t = life_at(x, ellf.ravel()[idx], s1.ravel()[idx])[0]
        e = ellf.ravel()[idx]
        return (sf.ravel()[idx] + lam * t / e * cm.ravel()[idx]) / e - x

    n = int(np.prod(shape))
    x: FloatArray
    capped: npt.NDArray[np.bool_]
    if isinstance(lines, _Tabulated):
        x = np.empty(n)
        capped = np.empty(n, dtype=np.bool_)
        _life_roots(
            lines.xg, lines.step_t, lines.b_t, lines.cp_t, lines.slopes,
            lines.inv_h, lines.top,
            float(lam), float(P), float(q_full), float(cap),
            # (writable copies: the broadcast views are read-only, the kernel's signature not)
            np.array(sf, dtype=np.float64).ravel(), np.array(ellf).ravel(),
            np.array(s1).ravel(), np.array(cm, dtype=np.float64).ravel(), x, capped,
        )  # fmt: skip
    else:
        x, capped = _life_roots_numpy(excess, sf, ellf, n, cap)
    x = x.reshape(shape)
    capf = capped.reshape(shape).astype(np.float64)
    t_life, b, cp, step = life_at(x, ellf, s1)
    tbar = t_life / ellf
    # decode window [P + 1, ell]: the same arrivals, the survivors still decoding after the
    # prefill, on the curve at that window's mean batch
    xd = np.where(capf > 0, float(cap), (surv_dec + lam * tbar * cm) / np.maximum(sdec, 1.0))
    xd = np.minimum(xd, cap)
    a_d, b_d, cp_d = lines(xd)
    step_d = a_d + b_d * (xd + 1.0)
    t_dec = sdec * step_d + cp_d * sdec * np.minimum(lam * tbar, q_full)
    # d t / d t through the arrivals at the root: their prefills (while below q_full per step)
    # and, below the cap, their decoding steps at the curve's slope there
    pf_on = (lam * tbar < q_full).astype(np.float64)
    den = 1.0 - lam * (cp * s1 * pf_on + b * (1.0 - capf) * cm) / ellf
    return _Life(t_life, t_dec, tbar, b, cp, np.maximum(den, _DEN_FLOOR), capf, x, step)


@dataclass
class _Linear:
    """The life of every cell under one line per n0 row (the published tagged model)."""

    t_life: FloatArray
    t_dec: FloatArray
    tbar: FloatArray
    var_life: FloatArray
    var_dec: FloatArray
    den: FloatArray  # the self-excitation factor 1 - lambda K / ell (unfloored)
    others: FloatArray  # the mean number of others over the life it implies


def _life_spread(
    lam: float,
    N0: FloatArray,
    v0: FloatArray,
    b: FloatArray,
    cp: FloatArray,
    den: FloatArray,
    tbar: FloatArray,
    si: npt.NDArray[np.int64],
    c_full: FloatArray,
    cv_full: FloatArray,
    c_dec: FloatArray,
    cv_dec: FloatArray,
    CM1: FloatArray,
    CM2: FloatArray,
    M1: FloatArray,
) -> tuple[FloatArray, FloatArray]:
    """Variance of the life and of its decode window (delta method around the mean path).

    Survivors (binomial, and the spread of n0 within its bin) and arrivals (compound Poisson:
    a prefill ``c_p`` plus ``b`` per decoding step) move the life by the line's slope; the
    self-excitation (longer steps admit more arrivals) stretches the sum by ``1 / den``.
    """
    k2_full = cp**2 * (si + 1) + 2 * cp * b * CM1[si] + b**2 * CM2[si]
    k2_dec = cp**2 * si + 2 * cp * b * (CM1[si] - M1[si]) + b**2 * CM2[si]
    amp = 1.0 / den
    var_life = amp**2 * (b**2 * N0 * cv_full + lam * tbar * k2_full + b**2 * c_full**2 * v0)
    var_dec = amp**2 * (b**2 * N0 * cv_dec + lam * tbar * k2_dec + b**2 * c_dec**2 * v0)
    return var_life, var_dec


def _linear_life(
    lam: float,
    N0: FloatArray,
    v0: FloatArray,
    a: FloatArray,
    b: FloatArray,
    cp: FloatArray,
    si: npt.NDArray[np.int64],
    ell: npt.NDArray[np.int64],
    c_full: FloatArray,
    cv_full: FloatArray,
    c_dec: FloatArray,
    cv_dec: FloatArray,
    CM1: FloatArray,
    CM2: FloatArray,
    M1: FloatArray,
) -> _Linear:
    """The life under the line ``(a, b, c_p)`` of each n0 row: ``base / (1 - lambda K / ell)``.

    Only meaningful where ``den = 1 - lambda K / ell`` is well above 0; the caller checks.
    """
    e = np.maximum(ell, 1)
    k_full = cp * (si + 1) + b * CM1[si]
    k_dec = cp * si + b * CM1[si]
    base_full = ell * a + cp + si * b + b * N0 * c_full
    den = 1.0 - lam * k_full / e
    safe = np.maximum(den, _DEN_FLOOR)
    t_life = base_full / safe
    tbar = t_life / e
    others = (N0 * c_full + lam * tbar * CM1[si]) / e
    t_dec = si * (a + b) + b * N0 * c_dec + lam * tbar * k_dec
    var_life, var_dec = _life_spread(
        lam, N0, v0, b, cp, safe, tbar, si, c_full, cv_full, c_dec, cv_dec, CM1, CM2, M1
    )
    return _Linear(t_life, t_dec, tbar, var_life, var_dec, den, others)


def latency_distribution(
    co: Coefficients,
    work: RequestWork,
    law: BirthDeath,
    rate: float,
    ca2: float = 1.0,
    local: LocalLines | None = None,
    steps: LocalSteps | None = None,
) -> TailModel:
    """Mean and quantiles of e2e, TTFT and TPOT for one scenario at one rate.

    Parameters
    ----------
    co
        Coefficients (``a``, ``b``, ``c_p``, ``n_max``, ``prefill_steps``).
    work
        Decode-steps law of a request.
    law
        Birth-death law of the number in system at this rate (must be stable).
    rate
        Arrival rate (req/s).
    ca2
        Squared coefficient of variation of inter-arrival gaps (1 for Poisson).
    local
        Optional ``n -> (a, b, c_p)``: the lines of the real step curve around ``n`` requests in
        system (the tangent there). A request that finds a large batch then sees the steeper
        slope of a convex (roofline) step curve; without it, ``co``'s single lines are used.

    Returns
    -------
    TailModel
    """
    if not law.stable:
        nan = math.inf
        return TailModel(
            {
                f"{m}_{s}": nan
                for m in ("e2e", "ttft", "tpot")
                for s in ("mean", "p50", "p90", "p99")
            },
            1.0,
            math.inf,
            co.n_max,
        )
    lam = rate
    P = co.prefill_steps
    nmax = co.n_max

    # ---- others' life in steps and the laws derived from it
    sm = work.steps_marginal
    smax = sm.shape[0] - 1
    L = smax + P + 2
    s_surv = np.concatenate((np.cumsum(sm[::-1])[::-1], [0.0]))  # P(S' >= m), m = 0..smax+1
    s_ge = np.zeros(L + 1)
    s_ge[: min(L + 1, s_surv.shape[0])] = s_surv[: min(L + 1, s_surv.shape[0])]
    # M1(v) = E[min(S', v)] = sum_{m<=v} P(S' >= m); M2(v) = sum (2m-1) P(S' >= m)
    mm = np.arange(L + 1, dtype=np.float64)
    ge1 = s_ge.copy()
    ge1[0] = 0.0
    M1 = np.cumsum(ge1)
    M2 = np.cumsum((2 * mm - 1).clip(0) * ge1)
    CM1 = np.cumsum(M1)  # CM1[s] = sum_{v=1..s} M1(v)
    CM2 = np.cumsum(M2)
    # survivors: remaining steps R' with P(R' = j) ∝ P(life > j), life = P + S'
    life_ge = np.zeros(L + 2)  # P(life >= m)
    for m in range(L + 2):
        idx = m - P
        life_ge[m] = 1.0 if idx <= 0 else (s_ge[idx] if idx <= L else 0.0)
    e_life = P + work.mean_steps
    r_pmf = life_ge[1:] / e_life  # P(R' = j) = P(life >= j+1) / E[life], j = 0..L
    r_surv = np.cumsum(r_pmf[::-1])[::-1]  # P(R' >= j)
    cq, cjq = _survival_sums(r_surv, L + 1)

    # ---- n0: number in system seen on arrival, binned
    pn = law.pmf
    n_all = np.arange(pn.shape[0], dtype=np.float64)
    p_wait = float(pn[nmax:].sum())
    free = pn[:nmax].copy()
    idle = float(free[0])
    ng = work.g_values.shape[0]
    n0_bins = N0_BINS if ng == 1 else N0_BINS // 3
    s_bins = max(6, min(S_BINS, MAX_COMPONENTS // (n0_bins * ng)))
    n0, w0, v0 = _bin(n_all[1:nmax], free[1:], n0_bins)
    n0 = np.concatenate(([0.0], n0))
    w0 = np.concatenate(([idle], w0))
    v0 = np.concatenate(([0.0], v0))

    # time-average step (for the residual and the prefill counts)
    # mean step with n decoding and the prefill tax: (a + b n) / (1 - lambda c_p)
    lines: LocalLines
    if local is not None:
        lines = local
    else:

        def lines(n: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
            return tuple(np.full(np.shape(n), v) for v in (co.a, co.b, co.c_p))  # type: ignore[return-value]

    a_n, b_n, cp_n = lines(n0)
    n_mean = float(n_all @ pn)
    disp = float(((n_all - n_mean) ** 2) @ pn) / n_mean if n_mean > 0 else 1.0
    # the others the law reaches (its support), at most n_max - 1 beside the tagged
    smooth = _smoothed(lines, float(min(nmax - 1, pn.shape[0] - 1)), disp)
    a_sm, b_sm, cp_sm = smooth(n0)
    a_t, b_t, cp_t = (float(v[0]) for v in lines(np.array([float(nmax - 1)])))
    tax = np.maximum(1.0 - lam * cp_n, 1e-6)
    d0 = a_n + b_n * n0  # arrival step's decode part given n0 others
    mu_pf = lam * d0 / tax  # arrivals in the previous step, prefilled in the arrival step
    ed = d0 + cp_n * mu_pf
    ed2 = ed**2 + cp_n**2 * mu_pf
    ea2 = mu_pf + mu_pf**2
    ea3 = mu_pf**3 + 3 * mu_pf**2 + mu_pf
    ed3 = d0**3 + 3 * d0**2 * cp_n * mu_pf + 3 * d0 * cp_n**2 * ea2 + cp_n**3 * ea3
    busy = (n0 > 0).astype(np.float64)
    r_mean = busy * ed2 / (2 * ed)
    r_var = busy * np.maximum(ed3 / (3 * ed) - (ed2 / (2 * ed)) ** 2, 0.0)
    d_biased = busy * ed2 / ed  # mean length of the step the tagged arrives in

    # ---- full-batch (waiting) regime
    e_s = work.mean_steps
    nu = e_s + P + 0.5
    t_full = (a_t + b_t * nmax) + cp_t * nmax / nu
    mu_full = nmax / (nu * t_full)
    cs2 = work.var_steps / (e_s + P) ** 2
    theta = 0.5 * (ca2 + cs2) / max(mu_full - lam, 1e-12)  # mean wait given a wait
    mean_wait = p_wait * theta

    e2e_w: list[FloatArray] = []
    e2e_mu: list[FloatArray] = []
    e2e_sd: list[FloatArray] = []
    tpot_w: list[FloatArray] = []
    tpot_mu: list[FloatArray] = []
    tpot_sd: list[FloatArray] = []
    wait_w: list[FloatArray] = []
    wait_mu: list[FloatArray] = []
    wait_sd: list[FloatArray] = []
    mean_e2e = 0.0
    mean_tpot = 0.0
    tpot_mass = 0.0
    ttft_pf_mean = np.zeros_like(n0)
    # s bins per output length, then the life of every (g, n0, s) cell solved in one pass
    N0 = n0[:, None]
    cells: list[tuple[Any, ...]] = []  # (s_w, s_v, si, ell, c_full, cv_full, c_dec, cv_dec, c_pf)
    for spmf in work.steps_pmf:
        s_vals, s_w, s_v = _bin(np.arange(spmf.shape[0], dtype=np.float64), spmf, s_bins)
        si = np.rint(s_vals).astype(np.int64)
        ell = si + P
        # survivors' decoding steps inside the life [1, ell] and the decode window [P+1, ell]
        c_full, cv_full = _window_count_moments(cq, cjq, 1, ell)
        c_dec, cv_dec = _window_count_moments(cq, cjq, P + 1, ell)
        c_pf, _ = _window_count_moments(cq, cjq, 1, np.full_like(ell, P))
        cells.append((s_w, s_v, si, ell, c_full, cv_full, c_dec, cv_dec, c_pf))

    def flat(f: Callable[[tuple[Any, ...]], npt.NDArray[Any]]) -> npt.NDArray[Any]:
        # one value per (g, n0, s) cell, g-major then n0 then s (the order `part` reads back)
        return np.concatenate(
            [np.broadcast_to(f(c), (n0.shape[0], c[2].shape[0])).ravel() for c in cells]
        )

    lives = _life_on_curve(
        smooth,
        lam,
        flat(lambda c: N0 * c[4]),
        flat(lambda c: CM1[c[2]]),
        flat(lambda c: N0 * c[6]),
        flat(lambda c: c[3]),
        flat(lambda c: c[2]),
        P,
        nmax - 1,
        nmax / nu,
    )
    start = 0
    for g, pg, (s_w, s_v, si, ell, c_full, cv_full, c_dec, cv_dec, c_pf) in zip(
        work.g_values, work.g_probs, cells, strict=True
    ):
        # per-n0 lines (columns broadcast against the s axis): the steps near the tagged's
        # arrival (the arrival step, its own prefill) see about n0 others
        a, b, cp = a_n[:, None], b_n[:, None], cp_n[:, None]
        # grid (n0 x s)
        size = n0.shape[0] * si.shape[0]
        life = lives.part(start, size, (n0.shape[0], si.shape[0]))
        start += size
        # the life linearised at the upper end of the batches it passes through:
        # - arriving below the life's mean batch x (n0 < x: the batch fills up during the
        #   life), the life is the root on the curve, and fluctuates with the tangent at x;
        # - arriving above it (n0 > x: the batch drains), the tangent at n0, as the published
        #   tagged-request model has it: the steeper end of a convex curve, which is what the
        #   upper tail pays, and on a concave curve a flatter slope than below, so its
        #   self-excitation stays well inside 1 (checked: else the curve's root is kept).
        top = _linear_life(
            lam, N0, v0[:, None], a_sm[:, None], b_sm[:, None], cp_sm[:, None], si, ell,
            c_full, cv_full, c_dec, cv_dec, CM1, CM2, M1,
        )  # fmt: skip
        bl = life.b * (1.0 - life.capped)  # a full batch is refilled from the queue
        curve = _life_spread(
            lam, N0, v0[:, None], bl, life.cp, life.den, life.tbar, si,
            c_full, cv_full, c_dec, cv_dec, CM1, CM2, M1,
        )  # fmt: skip
        use = (
            (N0 > life.batch)
            & (life.capped == 0)
            & (top.den > _DEN_FLOOR)
            & (top.others <= nmax - 1)
        )
        t_life = np.where(use, top.t_life, life.t_life)
        t_dec = np.where(use, top.t_dec, life.t_dec)
        tbar = np.where(use, top.tbar, life.tbar)
        var_life = np.where(use, top.var_life, curve[0])
        var_dec = np.where(use, top.var_dec, curve[1])
        # the tagged's own prefill step(s): survivors decode, arrivals of the arrival step prefill
        t_pf = t_life - t_dec
        # replace the prefill window's arrival count by the length-biased arrival step's
        t_pf_adj = P * a + cp + b * N0 * c_pf + cp * lam * d_biased[:, None]
        shift = t_pf_adj - t_pf
        mean_grid = r_mean[:, None] + t_life + shift
        var_grid = r_var[:, None] + var_life + cp**2 * lam * d_biased[:, None]
        # within-bin spread of s: each extra step costs about one step time
        var_grid = var_grid + tbar**2 * s_v[None, :]
        var_dec = var_dec + tbar**2 * s_v[None, :]
        W = (w0[:, None] * s_w[None, :]) * pg
        e2e_w.append(W.ravel())
        e2e_mu.append(mean_grid.ravel())
        e2e_sd.append(np.sqrt(np.maximum(var_grid, 0.0)).ravel())
        mean_e2e += float((W * mean_grid).sum())
        ttft_pf_mean += pg * (t_pf_adj * s_w[None, :]).sum(axis=1)
        # waiting arrivals: the batch is full for the whole life
        ws = s_w * pg * p_wait
        mu_w = r_mean[-1] + ell * t_full
        sd_w = np.sqrt(ell * cp_t**2 * nmax / nu + tbar[-1] ** 2 * s_v + r_var[-1])
        wait_w.append(ws)
        wait_mu.append(mu_w)
        wait_sd.append(sd_w)
        mean_e2e += float((ws * (mu_w + theta)).sum())
        if g > 1:
            tp_mu = t_dec / (g - 1)
            tp_sd = np.sqrt(np.maximum(var_dec, 0.0)) / (g - 1)
            tpot_w.append(W.ravel())
            tpot_mu.append(tp_mu.ravel())
            tpot_sd.append(tp_sd.ravel())
            mean_tpot += float((W * tp_mu).sum())
            tpot_mass += float(W.sum())
            tpot_w.append(ws)
            tpot_mu.append(si * t_full / (g - 1))
            tpot_sd.append(np.sqrt(si * cp_t**2 * nmax / nu + tbar[-1] ** 2 * s_v) / (g - 1))
            mean_tpot += float((ws * si * t_full / (g - 1)).sum())
            tpot_mass += float(ws.sum())

    out: dict[str, float] = {"e2e_mean": mean_e2e / (1.0 - p_wait + p_wait)}
    laws: dict[str, LatencyLaw] = {}
    # e2e quantiles: normal components for free arrivals, exponnorm for waiting ones
    e2e = NormalMixture(np.concatenate(e2e_w), np.concatenate(e2e_mu), np.concatenate(e2e_sd))
    if p_wait > 1e-9:
        ww = np.concatenate(wait_w)
        e2e = e2e.plus(
            NormalMixture(ww, np.concatenate(wait_mu), np.concatenate(wait_sd),
                          np.full(ww.shape[0], 1.0 / theta))
        )  # fmt: skip
    laws["e2e"] = e2e
    for qv, name in zip(e2e.quantiles(QUANTILES), ("p50", "p90", "p99"), strict=True):
        out[f"e2e_{name}"] = qv
    # TPOT
    if tpot_mass > 0:
        out["tpot_mean"] = mean_tpot / tpot_mass
        tpot = NormalMixture(
            np.concatenate(tpot_w), np.concatenate(tpot_mu), np.concatenate(tpot_sd)
        )
        laws["tpot"] = tpot
        for qv, name in zip(tpot.quantiles(QUANTILES), ("p50", "p90", "p99"), strict=True):
            out[f"tpot_{name}"] = qv
    else:
        for name in ("mean", "p50", "p90", "p99"):
            out[f"tpot_{name}"] = math.nan
    # TTFT: residual (uniform over a length-biased step) + prefill step with Poisson prefills
    ttft_stats, laws["ttft"] = _ttft(
        co,
        lam,
        n0,
        w0,
        d0,
        mu_pf,
        ttft_pf_mean,
        p_wait,
        theta,
        a_t,
        b_t,
        cp_n,
        cp_t,
        P,
        nmax,
        t_full,
        nu,
        steps,
    )
    out.update(ttft_stats)
    mean_batch = float((np.minimum(n_all, nmax) * pn).sum()) * e_s / nu
    return TailModel(out, p_wait, mean_wait, mean_batch, laws)


def _ttft(
    co: Coefficients,
    lam: float,
    n0: FloatArray,
    w0: FloatArray,
    d0: FloatArray,
    mu_pf: FloatArray,
    pf_mean: FloatArray,
    p_wait: float,
    theta: float,
    a: float,
    b: float,
    cp_n: FloatArray,
    cp: float,
    P: int,
    nmax: int,
    t_full: float,
    nu: float,
    steps: LocalSteps | None = None,
) -> tuple[dict[str, float], LatencyLaw]:
    """TTFT = residual of the arrival step + (wait) + the tagged's prefill step(s).

    For each n0 bin the arrival step has ``A`` prefills (Poisson), is picked length-biased, the
    tagged waits a uniform part of it, and its own prefill step carries ``A'`` other prefills
    (Poisson with the mean of the arrivals during that step).
    """
    amax = 12
    A = np.arange(amax + 1, dtype=np.float64)
    # idle engine (n0 = 0): no residual, a prefill-only step (no one else to prefill, almost
    # surely); busy bins: the arrival step has A ~ Poisson(mu_pf) prefills and is picked
    # length-biased, the tagged's prefill step has A' ~ Poisson(lam * dur) others. All bins at
    # once: axes (bin, A, A').
    idle = n0 == 0
    busy = ~idle
    cpb = cp_n[busy][:, None]
    exact = steps is not None and P == 1
    if exact:
        assert steps is not None
        r = steps.rows(n0[busy])
        pq = steps.pq[r, : amax + 1]
        pa = pq / pq.sum(axis=1, keepdims=True)
        dur = steps.mixed[r, : amax + 1]
    else:
        pa = poisson_pmf(A[None, :], mu_pf[busy][:, None])
        dur = d0[busy][:, None] + cpb * A[None, :]
    wb = pa * dur
    wb /= wb.sum(axis=1, keepdims=True)
    pa2 = poisson_pmf(A[None, None, :], lam * dur[:, :, None])
    ww = wb[:, :, None] * pa2 * w0[busy][:, None, None]
    n_idle = int(idle.sum())
    if exact:
        assert steps is not None
        # the tagged's prefill step: its own chunk and the A' that arrived during the arrival
        # step, priced by the cost model itself (a step of several chunks turns compute-bound),
        # shifted by how much longer or shorter its own prompt is than the mean one
        lo3 = steps.mixed[r, 1 : amax + 2][:, None, :]
        pw = steps.prompt_w
        sh = steps.prompt_shift[r]
        w4 = ww[..., None] * pw
        keep = w4 > 1e-13 * float(w0.sum())
        w = np.concatenate((w0[idle, None] * pw, w4[keep]), axis=None)
        lo_idle = co.c1p + steps.prompt_shift[0][None, :] * np.ones((n_idle, 1))
        lo_busy = np.broadcast_to(lo3[..., None] + sh[:, None, None, :], w4.shape)[keep]
        lo = np.concatenate((lo_idle.ravel(), lo_busy))
        ln = np.concatenate(
            (np.zeros(n_idle * pw.shape[0]), np.broadcast_to(dur[:, :, None, None], w4.shape)[keep])
        )
    else:
        # base of the prefill step beyond the Poisson prefills of others (tagged model)
        pf_base = pf_mean[busy] - cp_n[busy] * lam * (wb * dur).sum(axis=1)
        lo3 = pf_base[:, None, None] + cpb[:, :, None] * A[None, None, :]
        w = np.concatenate((w0[idle], ww.ravel()))
        lo = np.concatenate((np.full(n_idle, co.c1p), np.broadcast_to(lo3, ww.shape).ravel()))
        ln = np.concatenate((np.zeros(n_idle), np.broadcast_to(dur[:, :, None], ww.shape).ravel()))
    free_mass = float(w.sum())
    mean_free = float((w * (lo + ln / 2)).sum() / free_mass)
    out: dict[str, float] = {}
    mean = (1.0 - p_wait) * mean_free
    t_pf_full, wait_p = 0.0, 0.0
    if p_wait > 1e-9:
        # waiting: Exp(theta) wait, then a prefill step in a full batch
        t_pf_full = P * (a + b * nmax) + cp * (1 + nmax / nu)
        wait_p = p_wait
        mean += p_wait * (t_pf_full + theta + t_full / 2)
    law = UniformExpMixture(w, lo, ln, 1.0 - p_wait, wait_p, t_pf_full, theta)
    out["ttft_mean"] = mean
    for qv, name in zip(law.quantiles(QUANTILES), ("p50", "p90", "p99"), strict=True):
        out[f"ttft_{name}"] = qv
    return out, law
