"""Latency quantiles without simulation: a tagged request in a fluctuating batch.

The published model gives only the mean. Here a tagged request's latency is built in phases:

1. **its own work**: the exact law of its decode steps ``s`` (steps-to-finish under geometric
   acceptance, mixed over the output-length law; :mod:`sdsim.analytic.work`), and the others'
   remaining steps (:func:`_others`: an equilibrium residual ``R'`` per survivor,
   ``min(S', steps left)`` per arrival);
2. **the batch it finds** (:func:`~sdsim.analytic.firsttoken.seen_by_arrivals`): ``n0``
   others in system on arrival, from the law of the number in system
   (:mod:`sdsim.analytic.gps`; Poisson arrivals see its time average; with arrival states, an
   arrival sees the law of the state it arrives in) -- binned; an arrival that finds the batch
   full waits for admission;
3. **the step it arrives in** (:func:`~sdsim.analytic.firsttoken.arrival_step`): the wait for
   the current step to end is the residual of a length-biased step, then its prefill step
   (shared with the other arrivals of that step);
4. **its life** (:func:`_lives`): how the batch drifts during it, in step time
   (:mod:`sdsim.analytic.lifetime`): the survivors of ``n0`` leave, arrivals come at the
   state's rate relaxing towards the mean, each adding its prefill and a step cost while it
   decodes (a prefill's cost spread by the prompt-length law); the life's mean on the real
   step curve and its variance by the delta method;
5. **admission waits** (:func:`_waits`): an arrival that finds ``n >= n_max`` in system waits
   for ``n - n_max + 1`` departures of a full batch (an exponential one plus the rest, normal);
6. **TTFT** (:func:`~sdsim.analytic.firsttoken.ttft_components`): the residual (uniform over
   the length-biased arrival step) plus its prefill step, priced by the cost model itself with
   the chunk chain's law of the chunks in the arrival step, the Poisson arrivals during it,
   and the prompt-length law of every chunk in both steps;
7. **mixture assembly**: given ``(state, n0, s, g)`` the latency is taken as normal with these
   moments (exponentially modified normal when it waits), and the quantiles of the mixture are
   the exact roots of its CDF (:mod:`~sdsim.analytic.mixtures`).
"""

from __future__ import annotations

__all__ = ["TailModel", "latency_distribution"]

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import numpy.typing as npt

from sdsim.analytic.arrivals import ArrivalView
from sdsim.analytic.coefficients import Coefficients
from sdsim.analytic.firsttoken import (
    ArrivalStep,
    Seen,
    arrival_step,
    seen_by_arrivals,
    ttft_components,
)
from sdsim.analytic.gps import BirthDeath
from sdsim.analytic.lifetime import (
    Life,
    LocalLines,
    Tabulated,
    Window,
    life_on_curve,
    life_spread,
    linear_life,
    smoothed,
)
from sdsim.analytic.mixtures import LatencyLaw, Mixture
from sdsim.analytic.stepcurve import LocalSteps
from sdsim.analytic.work import RequestWork, bin_moments

QUANTILES = (0.5, 0.9, 0.99)
N0_BINS = 120
S_BINS = 48
# Mixture components kept in the e2e/TPOT CDFs (n0 bins x s bins x output lengths): the quantiles
# move by < 0.1% beyond this, and each CDF evaluation costs one normal per component.
MAX_COMPONENTS = 30_000
# Floor of the self-excitation factor 1 - lambda K / ell where the tangent at n0 is used.
_DEN_FLOOR = 0.05

FloatArray = npt.NDArray[np.float64]
STATS = ("mean", "p50", "p90", "p99")


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


# ---------------------------------------------------------------- 1. the others' remaining steps


@dataclass(frozen=True)
class _Others:
    """Moments of the others' decoding steps inside a window of the tagged's life.

    ``M1[v] = E[min(S', v)]``, ``M2[v] = E[min(S', v)^2]`` (an arrival with ``v`` steps left
    in the life), ``CM1``/``CM2`` their cumulative sums over ``v``, and ``cq``/``cjq`` the
    cumulative sums of a survivor's residual survival ``P(R' >= j)`` (and ``j P(R' >= j)``).
    """

    M1: FloatArray
    M2: FloatArray
    CM1: FloatArray
    CM2: FloatArray
    cq: FloatArray
    cjq: FloatArray

    def window(self, i1: npt.ArrayLike, i2: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
        """Mean and variance of ``#{j in [i1, i2] : R' >= j}`` (a survivor's steps in it)."""
        i1a = np.broadcast_to(np.asarray(i1, dtype=np.int64), np.shape(i2))
        lo = np.maximum(i1a - 1, 0)
        hi = np.maximum(np.asarray(i2, dtype=np.int64), lo)
        s0 = self.cq[hi] - self.cq[lo]
        s1 = self.cjq[hi] - self.cjq[lo]
        m2 = 2.0 * (s1 - (i1a - 1) * s0) - s0
        return s0, np.maximum(m2 - s0 * s0, 0.0)


def _others(work: RequestWork, P: int) -> _Others:
    sm = work.steps_marginal
    L = sm.shape[0] - 1 + P + 2
    s_surv = np.concatenate((np.cumsum(sm[::-1])[::-1], [0.0]))  # P(S' >= m), m = 0..smax+1
    s_ge = np.zeros(L + 1)
    k = min(L + 1, s_surv.shape[0])
    s_ge[:k] = s_surv[:k]
    mm = np.arange(L + 1, dtype=np.float64)
    ge1 = s_ge.copy()
    ge1[0] = 0.0
    M1 = np.cumsum(ge1)  # sum_{m<=v} P(S' >= m)
    M2 = np.cumsum((2 * mm - 1).clip(0) * ge1)
    # survivors: remaining steps R' with P(R' = j) ∝ P(life > j), life = P + S'
    m = np.arange(L + 2)
    idx = m - P
    life_ge = np.where(idx <= 0, 1.0, s_ge[np.clip(idx, 0, L)] * (idx <= L))
    r_pmf = life_ge[1:] / (P + work.mean_steps)
    r_surv = np.cumsum(r_pmf[::-1])[::-1]  # P(R' >= j), j = 0..L
    q = np.zeros(L + 2)
    q[1 : L + 1] = r_surv[1 : L + 1]
    j = np.arange(L + 2, dtype=np.float64)
    return _Others(M1, M2, np.cumsum(M1), np.cumsum(M2), np.cumsum(q), np.cumsum(j * q))


@dataclass(frozen=True)
class _SBins:
    """One output length's ``s`` bins: their window, weights and within-bin variances."""

    win: Window
    w: FloatArray
    v: FloatArray


def _windows(work: RequestWork, oth: _Others, P: int, s_bins: int) -> list[_SBins]:
    """Per output length, the ``s`` bins and their :class:`~sdsim.analytic.lifetime.Window`."""
    out = []
    for spmf in work.steps_pmf:
        s_vals, s_w, s_v = bin_moments(np.arange(spmf.shape[0], dtype=np.float64), spmf, s_bins)
        si = np.rint(s_vals).astype(np.int64)
        ell = si + P
        c_full, cv_full = oth.window(1, ell)
        c_dec, cv_dec = oth.window(P + 1, ell)
        c_pf, _ = oth.window(1, np.full_like(ell, P))
        win = Window(si, ell, c_full, cv_full, c_dec, cv_dec, c_pf, oth.CM1[si], oth.CM2[si],
                     oth.M1[si])
        out.append(_SBins(win, s_w, s_v))
    return out


# ---------------------------------------------------------------- 4. its life


@dataclass
class _Cells:
    """Every (g, n0, s) cell of free arrivals of one state, flat (g-major, then n0, then s)."""

    w: FloatArray  # weights (state share x n0 weight x s weight x g probability)
    mean: FloatArray  # e2e mean
    var: FloatArray  # e2e variance
    t_pf: FloatArray  # the tagged's own prefill window (TTFT's prefill part, mean)
    tp_mean: FloatArray  # TPOT mean (NaN for one-token outputs)
    tp_var: FloatArray
    tbar: FloatArray
    row: npt.NDArray[np.int64]  # the cell's n0 bin


def _lives(
    seen: Seen,
    view: ArrivalView,
    wins: list[_SBins],
    work: RequestWork,
    smooth: Tabulated,
    lines: LocalLines,
    step: ArrivalStep,
    P: int,
    nmax: int,
    q_full: float,
    cv2: float = 0.0,
) -> _Cells:
    """Every (g, n0, s) cell's life, solved on the curve in one pass (two with states: the
    rate over a life depends on its length), all cells at once; ``cv2``: the squared CV of a
    prefill's cost."""
    nb = seen.n0.shape[0]
    rows = np.arange(nb)
    shapes = [(nb, b.win.si.shape[0]) for b in wins]

    def flat(f: Callable[[_SBins, int], npt.ArrayLike]) -> npt.NDArray[Any]:
        # one value per (g, n0, s) cell, g-major then n0 then s (the order lives come back in)
        return np.concatenate(
            [np.broadcast_to(f(b, i), sh).ravel()
             for i, (b, sh) in enumerate(zip(wins, shapes, strict=True))]
        )

    def field_of(name: str) -> npt.NDArray[Any]:
        return flat(lambda b, i: getattr(b.win, name)[None, :])

    row = flat(lambda b, i: rows[:, None])
    win = Window(*(field_of(f.name) for f in fields(Window)))
    s_w = flat(lambda b, i: b.w[None, :])
    s_v = flat(lambda b, i: b.v[None, :])
    g = flat(lambda b, i: float(work.g_values[i]))
    pg = flat(lambda b, i: float(work.g_probs[i]))
    N0, v0 = seen.n0[row], seen.v0[row]

    def solve(lam: FloatArray) -> Life:
        return life_on_curve(smooth, lam, N0 * win.c_full, win.cm1, N0 * win.c_dec, win.ell,
                             win.si, P, nmax - 1, q_full)

    lam = np.full(row.shape[0], seen.lam if view.states == 1 else view.rate)
    life = solve(lam)
    if view.states > 1:
        # the rate during a life starts at the state's and relaxes to the mean
        lam = view.rate_over(seen.state, life.t_life)
        life = solve(lam)
    cvar = view.count_var(life.t_life)
    # the life linearised at the upper end of the batches it passes through:
    # - arriving below the life's mean batch x (n0 < x: the batch fills up during the life),
    #   the life is the root on the curve, and fluctuates with the tangent at x;
    # - arriving above it (n0 > x: the batch drains), the tangent at n0: the steeper end of a
    #   convex curve, which is what the upper tail pays, and on a concave curve a flatter slope
    #   than below, so its self-excitation stays well inside 1 (checked: else the curve's root
    #   is kept).
    a_sm, b_sm, cp_sm = (x[row] for x in smooth(seen.n0))
    top = linear_life(lam, N0, v0, a_sm, b_sm, cp_sm, win, cvar, cv2)
    bl = life.b * (1.0 - life.capped)  # a full batch is refilled from the queue
    var_c, var_dc = life_spread(lam, N0, v0, bl, life.cp, life.den, life.tbar, win, cvar, cv2)
    use = (N0 > life.batch) & (life.capped == 0) & (top.den > _DEN_FLOOR)
    use &= top.others <= nmax - 1
    t_dec = np.where(use, top.t_dec, life.t_dec)
    tbar = np.where(use, top.tbar, life.tbar)
    var_life = np.where(use, top.var_life, var_c)
    var_dec = np.where(use, top.var_dec, var_dc)
    # the tagged's own prefill window: survivors decode, the arrival step's arrivals prefill
    # (the length-biased arrival step's count, not the life's mean one)
    a_n, b_n, cp_n = lines(seen.n0)
    a, b, cp = a_n[row], b_n[row], cp_n[row]
    pf_n = np.minimum(seen.lam * step.d_biased, step.cap)[row]
    t_pf = P * a + cp + b * N0 * win.c_pf + cp * pf_n
    mean = step.r_mean[row] + t_dec + t_pf
    var = step.r_var[row] + var_life + cp**2 * (1.0 + cv2) * pf_n
    if view.batch > 1.0:
        # batch-mates: as many ahead as behind, all prefilled in the tagged's step; those
        # behind then decode beside it (those ahead are among the others it found)
        ey, vy = view.batch_mates()
        amp = 1.0 / np.where(use, np.maximum(top.den, _DEN_FLOOR), life.den)
        per = b * win.m1 * amp
        t_pf = t_pf + 2.0 * ey * cp
        t_dec = t_dec + ey * per
        mean = mean + 2.0 * ey * cp + ey * per
        var = var + 2.0 * vy * cp**2 * (1.0 + cv2) + vy * per**2
        var_dec = var_dec + vy * per**2
    # within-bin spread of s: each extra step costs about one step time
    var = var + tbar**2 * s_v
    var_dec = var_dec + tbar**2 * s_v
    w = seen.share * seen.w0[row] * s_w * pg
    with np.errstate(divide="ignore", invalid="ignore"):
        tp_mean = np.where(g > 1, t_dec / (g - 1), math.nan)
        tp_var = np.where(g > 1, var_dec / (g - 1) ** 2, math.nan)
    # the prefill part per n0 bin (the TTFT law's base where it prices steps by lines)
    return _Cells(w, mean, var, t_pf * s_w * pg, tp_mean, tp_var, tbar, row)


# ---------------------------------------------------------------- 5. admission waits


class _Components:
    """Gaussian mixture components (weights, means, standard deviations, exponential rates:
    0 for plain normals), broadcast together and flattened."""

    def __init__(
        self, w: npt.ArrayLike, mu: npt.ArrayLike, sd: npt.ArrayLike, lam: npt.ArrayLike = 0.0
    ) -> None:
        b = np.broadcast_arrays(*(np.asarray(x, dtype=np.float64) for x in (w, mu, sd, lam)))
        self.w, self.mu, self.sd, self.lam = (x.ravel() for x in b)

    @property
    def mean(self) -> float:
        """Weighted sum of the component means (exponential part included)."""
        ext = np.where(self.lam > 0, 1.0 / np.where(self.lam > 0, self.lam, 1.0), 0.0)
        return float(self.w @ (self.mu + ext))


def _pool(parts: list[_Components]) -> Mixture:
    return Mixture.normals(*(np.concatenate([getattr(c, f) for c in parts])
                             for f in ("w", "mu", "sd", "lam")))


@dataclass(frozen=True)
class _Full:
    """The full-batch regime: its step, departure rate and prefill step."""

    t_full: float
    mu_full: float
    t_pf_full: float
    cp_t: float
    nu: float
    cp2_t: float  # second moment of a prefill's cost


def _full(lines: LocalLines, work: RequestWork, P: int, nmax: int, cv2: float = 0.0) -> _Full:
    a_t, b_t, cp_t = (float(v[0]) for v in lines(np.array([float(nmax - 1)])))
    nu = work.mean_steps + P + 0.5
    # a full batch admits as many per step as it completes: nmax / nu prefills per step
    t_full = (a_t + b_t * nmax) + cp_t * nmax / nu
    t_pf_full = P * (a_t + b_t * nmax) + cp_t * (1 + nmax / nu)
    return _Full(t_full, nmax / (nu * t_full), t_pf_full, cp_t, nu, cp_t**2 * (1.0 + cv2))


def _waits(
    seen: Seen,
    full: _Full,
    work: RequestWork,
    wins: list[_SBins],
    tbar_full: float,
    nmax: int,
) -> tuple[list[_Components], list[_Components], _Components, float]:
    """Arrivals that find ``n >= n_max``: they wait for ``j = n - n_max + 1`` departures of the
    full batch (``Exp(mu) + N((j - 1) / mu, (j - 1 + Var j) / mu^2)``), then live ``ell`` full
    steps. Returns e2e and TPOT components per output length, the TTFT components, and the
    mean wait."""
    mu = full.mu_full
    jm = seen.j - 1.0
    wait_mean = jm / mu
    wait_var = (jm + seen.vj) / mu**2
    e2e: list[_Components] = []
    tpot: list[_Components] = []
    for g, pg, sb in zip(work.g_values, work.g_probs, wins, strict=True):
        win, s_w, s_v = sb.win, sb.w, sb.v
        ww = seen.share * pg * seen.wj[:, None] * s_w[None, :]
        ell = win.ell[None, :]
        life = ell * full.t_full
        lvar = ell * full.cp2_t * nmax / full.nu + tbar_full**2 * s_v[None, :]
        r = full.t_full
        e2e.append(_Components(ww, wait_mean[:, None] + r / 2 + life,
                               np.sqrt(wait_var[:, None] + r * r / 12 + lvar), mu))
        if g > 1:
            si = win.si[None, :]
            tm = si * full.t_full / (g - 1)
            tv = (si * full.cp2_t * nmax / full.nu + tbar_full**2 * s_v[None, :]) / (g - 1) ** 2
            tpot.append(_Components(ww, tm, np.sqrt(tv)))
    w_t = seen.share * seen.wj
    r = full.t_full
    ttft = _Components(w_t, wait_mean + r / 2 + full.t_pf_full, np.sqrt(wait_var + r * r / 12), mu)
    mean_wait = float((seen.wj * (wait_mean + 1.0 / mu)).sum())
    return e2e, tpot, ttft, mean_wait


# ---------------------------------------------------------------- 7. assembly


def _constant_lines(co: Coefficients) -> LocalLines:
    def lines(n: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
        shape = np.shape(n)
        return np.full(shape, co.a), np.full(shape, co.b), np.full(shape, co.c_p)

    return lines


def latency_distribution(
    co: Coefficients,
    work: RequestWork,
    law: BirthDeath,
    arrivals: ArrivalView,
    local: LocalLines | None = None,
    steps: Sequence[LocalSteps] | None = None,
) -> TailModel:
    """Mean and quantiles of e2e, TTFT and TPOT for one scenario at one rate.

    Parameters
    ----------
    co
        Coefficients (``a``, ``b``, ``c_p``, ``n_max``, ``prefill_steps``, ``c1p``).
    work
        Decode-steps law of a request.
    law
        Law of the number in system at this rate (must be stable; with ``joint`` per state
        when the arrivals have two).
    arrivals
        The replica's arrivals (:func:`sdsim.analytic.arrivals.arrival_view`).
    local
        ``n -> (a, b, c_p)``: the lines of the real step curve around ``n`` requests in system
        (the tangent there); without it, ``co``'s single lines are used.
    steps
        Per arrival state, the real steps around ``n`` others at that state's rate (the TTFT
        model prices the prefill step with them); without them, lines.

    Returns
    -------
    TailModel
    """
    if not law.stable:
        inf = {f"{m}_{s}": math.inf for m in ("e2e", "ttft", "tpot") for s in STATS}
        return TailModel(inf, 1.0, math.inf, co.n_max)
    P, nmax = co.prefill_steps, co.n_max
    lines = local if local is not None else _constant_lines(co)
    oth = _others(work, P)
    ng = work.g_values.shape[0]
    nstates = arrivals.states
    n0_bins = (N0_BINS if ng == 1 else N0_BINS // 3) // nstates
    s_bins = max(6, min(S_BINS, MAX_COMPONENTS // (n0_bins * nstates * ng)))
    wins = _windows(work, oth, P, s_bins)
    pn = law.pmf
    n_all = np.arange(pn.shape[0], dtype=np.float64)
    n_mean = float(n_all @ pn)
    disp = float(((n_all - n_mean) ** 2) @ pn) / n_mean if n_mean > 0 else 1.0
    # the others the law reaches (its support), at most n_max - 1 beside the tagged
    smooth = smoothed(lines, float(min(nmax - 1, pn.shape[0] - 1)), disp)
    # a prefill's cost spread by the prompt-length law (squared CV)
    cv2 = steps[0].chunk_cv2 if steps else 0.0
    full = _full(lines, work, P, nmax, cv2)
    q_full = nmax / full.nu
    g_e2e: list[_Components] = []
    g_tpot: list[_Components] = []
    g_ttft: list[_Components] = []
    u_ttft: list[tuple[FloatArray, FloatArray, FloatArray]] = []
    p_wait = mean_wait = 0.0
    for state in range(nstates):
        seen = seen_by_arrivals(law, arrivals, state, nmax, n0_bins)
        a_n, b_n, cp_n = lines(seen.n0)
        cap = steps[state].chunk_cap if steps else math.inf
        step = arrival_step(a_n, b_n, cp_n, seen.n0, seen.lam, cap, cv2)
        c = _lives(seen, arrivals, wins, work, smooth, lines, step, P, nmax, q_full, cv2)
        g_e2e.append(_Components(c.w, c.mean, np.sqrt(np.maximum(c.var, 0.0))))
        pf_mean = np.asarray(
            np.bincount(c.row, weights=c.t_pf, minlength=seen.n0.shape[0]), dtype=np.float64
        )
        tp = np.isfinite(c.tp_mean)
        if tp.any():
            g_tpot.append(
                _Components(c.w[tp], c.tp_mean[tp], np.sqrt(np.maximum(c.tp_var[tp], 0.0)))
            )
        tbar_full = float(c.tbar[c.row == c.row.max()].mean())
        if seen.p_wait > 1e-9:
            we, wt, wf, mw = _waits(seen, full, work, wins, tbar_full, nmax)
            g_e2e += we
            g_tpot += wt
            g_ttft.append(wf)
            p_wait += seen.share * seen.p_wait
            mean_wait += seen.share * mw
        steps_i = steps[state] if steps else None
        u_ttft.append(ttft_components(seen, arrivals, step, steps_i, cp_n, pf_mean, co.c1p, P))
    out: dict[str, float] = {"e2e_mean": sum(c.mean for c in g_e2e)}
    laws: dict[str, LatencyLaw] = {}
    e2e = _pool(g_e2e)
    laws["e2e"] = e2e
    out.update(zip((f"e2e_{q}" for q in STATS[1:]), e2e.quantiles(QUANTILES), strict=True))
    tpot_mass = sum(float(c.w.sum()) for c in g_tpot)
    if tpot_mass > 0:
        tpot = _pool(g_tpot)
        laws["tpot"] = tpot
        out["tpot_mean"] = sum(c.mean for c in g_tpot) / tpot_mass
        out.update(zip((f"tpot_{q}" for q in STATS[1:]), tpot.quantiles(QUANTILES), strict=True))
    else:
        out.update({f"tpot_{s}": math.nan for s in STATS})
    uw, ulo, uln = (np.concatenate(x) for x in zip(*u_ttft, strict=True))
    ttft = Mixture.uniforms(uw, ulo, uln)
    mean_ttft = float(uw @ (ulo + uln / 2))
    if g_ttft:
        ttft = ttft.plus(_pool(g_ttft))
        mean_ttft += sum(c.mean for c in g_ttft)
    laws["ttft"] = ttft
    out["ttft_mean"] = mean_ttft
    out.update(zip((f"ttft_{q}" for q in STATS[1:]), ttft.quantiles(QUANTILES), strict=True))
    mean_batch = float((np.minimum(n_all, nmax) * pn).sum()) * work.mean_steps / full.nu
    return TailModel(out, p_wait, mean_wait, mean_batch, laws)
