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
   steps admit more arrivals) stretches the result by ``1 / (1 - lambda K / l)``;
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
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from sdsim.analytic.coefficients import Coefficients
from sdsim.analytic.gps import BirthDeath
from sdsim.analytic.mixtures import LatencyLaw, NormalMixture, UniformExpMixture
from sdsim.analytic.stepcurve import poisson_pmf
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


def latency_distribution(
    co: Coefficients,
    work: RequestWork,
    law: BirthDeath,
    rate: float,
    ca2: float = 1.0,
    local: LocalLines | None = None,
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
    if local is not None:
        a_n, b_n, cp_n = local(n0)
        a_t, b_t, cp_t = (float(v[0]) for v in local(np.array([float(nmax - 1)])))
    else:
        a_n, b_n, cp_n = (np.full_like(n0, v) for v in (co.a, co.b, co.c_p))
        a_t, b_t, cp_t = co.a, co.b, co.c_p
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
    for g, pg, spmf in zip(work.g_values, work.g_probs, work.steps_pmf, strict=True):
        s_vals, s_w, s_v = _bin(np.arange(spmf.shape[0], dtype=np.float64), spmf, s_bins)
        si = np.rint(s_vals).astype(np.int64)
        ell = si + P
        # per-n0 lines (columns broadcast against the s axis)
        a, b, cp = a_n[:, None], b_n[:, None], cp_n[:, None]
        # new arrivals' contribution (per unit of lambda t-bar): full life and decode window
        k_full = cp * (si + 1) + b * CM1[si]
        k2_full = cp**2 * (si + 1) + 2 * cp * b * CM1[si] + b**2 * CM2[si]
        k_dec = cp * si + b * CM1[si]
        k2_dec = cp**2 * si + 2 * cp * b * (CM1[si] - M1[si]) + b**2 * CM2[si]
        # survivors' decoding steps inside the life [1, ell] and the decode window [P+1, ell]
        c_full, cv_full = _window_count_moments(cq, cjq, 1, ell)
        c_dec, cv_dec = _window_count_moments(cq, cjq, P + 1, ell)
        c_pf, _ = _window_count_moments(cq, cjq, 1, np.full_like(ell, P))

        # grid (n0 x s)
        N0 = n0[:, None]
        base_full = ell * a + cp + si * b + b * N0 * c_full
        den = 1.0 - lam * k_full / np.maximum(ell, 1)
        den = np.maximum(den, 1e-6)
        # cap: the batch cannot hold more than n_max decoding requests on average
        t_full_life = base_full / den
        tbar = t_full_life / np.maximum(ell, 1)
        others_mean = (N0 * c_full + lam * tbar * CM1[si]) / np.maximum(ell, 1)
        over = np.maximum(others_mean - (nmax - 1), 0.0)
        t_life = t_full_life - b * over * ell
        tbar = t_life / np.maximum(ell, 1)
        amp = 1.0 / den
        var_life = amp**2 * (
            b**2 * N0 * cv_full + lam * tbar * k2_full + b**2 * c_full**2 * v0[:, None]
        )
        # decode window (TPOT) and prefill window (TTFT part)
        t_dec = si * (a + b) + b * N0 * c_dec + lam * tbar * k_dec - b * over * si
        var_dec = amp**2 * (
            b**2 * N0 * cv_dec + lam * tbar * k2_dec + b**2 * c_dec**2 * v0[:, None]
        )
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
    pa = poisson_pmf(A[None, :], mu_pf[busy][:, None])
    dur = d0[busy][:, None] + cpb * A[None, :]
    wb = pa * dur
    wb /= wb.sum(axis=1, keepdims=True)
    # base of the prefill step beyond the Poisson prefills of others (from the tagged model)
    pf_base = pf_mean[busy] - cp_n[busy] * lam * (wb * dur).sum(axis=1)
    pa2 = poisson_pmf(A[None, None, :], lam * dur[:, :, None])
    lo3 = pf_base[:, None, None] + cpb[:, :, None] * A[None, None, :]
    ww = wb[:, :, None] * pa2 * w0[busy][:, None, None]
    n_idle = int(idle.sum())
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
