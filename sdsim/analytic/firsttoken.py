"""An arrival's first moments: the batch it finds, the step it lands in, its first token.

Phases 2, 3 and 6 of the tagged-request model of :mod:`sdsim.analytic.tails`:

* :func:`seen_by_arrivals`: the others ``n0`` an arrival finds in the system, from the law of
  the number in system (binned), and the departures it waits for when the batch is full;
* :func:`arrival_step`: the step it lands in (a length-biased step, its residual);
* :func:`ttft_components`: its time to first token, a mixture of uniforms: the wait for the
  step in progress plus its own prefill step, both priced by the cost model with the chunk
  chain's law of the chunks in a step and, with prompts of random length, every chunk's own
  length (:func:`chunk_sums`): a step that carries another request's long prompt is long, and
  the more likely to be the one arrived in.
"""

from __future__ import annotations

__all__ = [
    "A_MAX",
    "ArrivalStep",
    "Seen",
    "arrival_step",
    "chunk_sums",
    "seen_by_arrivals",
    "ttft_components",
]

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import special

from sdsim.analytic.arrivals import ArrivalView
from sdsim.analytic.gps import BirthDeath
from sdsim.analytic.stepcurve import LocalSteps, poisson_pmf
from sdsim.analytic.work import bin_equal_mass, bin_equal_mass_rows, bin_moments

FloatArray = npt.NDArray[np.float64]

# Bins of the number of departures an arrival that finds the batch full waits for.
WAIT_BINS = 12
# Prefills counted in one step of the TTFT model (a step carries this many or fewer).
A_MAX = 12
# Points of the law of the summed cost of several prefill chunks of random length (TTFT), and
# the groups of n0 bins the TTFT model takes with random prompt lengths.
CHUNK_SUM_BINS = 16
TTFT_GROUPS = 24
# Mean arrival counts at which the law of the own prefill step is solved (random prompt
# lengths), and the points of that law.
TTFT_LEVELS = 12
OWN_STEP_BINS = 24


# ---------------------------------------------------------------- the batch an arrival finds


@dataclass(frozen=True)
class Seen:
    """What arrivals of one state find: ``n0`` bins below the cap (mean, weight, variance)
    and the waiting ones' departures to wait for (bins of ``j = n - n_max + 1``)."""

    share: float  # share of all arrivals that come in this state
    lam: float  # arrival rate in this state
    state: int
    n0: FloatArray
    w0: FloatArray
    v0: FloatArray
    p_wait: float
    j: FloatArray
    wj: FloatArray
    vj: FloatArray


def _geometric(mean: float, size: int) -> FloatArray:
    """Geometric pmf on ``0..size - 1`` with the given mean (the last entry holds the tail)."""
    if mean <= 0:
        out = np.zeros(size)
        out[0] = 1.0
        return out
    q = mean / (1.0 + mean)
    g = (1.0 - q) * q ** np.arange(size, dtype=np.float64)
    g[-1] += q**size
    return g


def seen_by_arrivals(
    law: BirthDeath, view: ArrivalView, state: int, nmax: int, n0_bins: int
) -> Seen:
    """What arrivals in ``state`` find: the law of the number in system they see (with their
    batch-mates ahead when arrivals come in clumps), ``n0`` in ``n0_bins`` equal-mass bins
    below the cap, the ones at or above it as bins of the departures they wait for.

    Parameters
    ----------
    law
        The law of the number in system (per state with ``joint``).
    view
        The arrivals (:func:`sdsim.analytic.arrivals.arrival_view`).
    state
        The arrival state.
    nmax
        Concurrency cap.
    n0_bins
        Bins of ``n0`` below the cap.

    Returns
    -------
    Seen
    """
    pn = law.seen_in(state)
    if view.batch > 1.0:
        # an arrival in a batch also finds its batch-mates ahead of it
        ahead, _ = view.batch_mates()
        g = _geometric(ahead, max(int(40 * (ahead + 1)), 8))
        pn = np.convolve(pn, g)
        pn = pn[: max(int(np.searchsorted(-np.cumsum(pn[::-1])[::-1], -1e-13)), nmax + 1)]
    n_all = np.arange(pn.shape[0], dtype=np.float64)
    free = pn[:nmax]
    n0, w0, v0 = bin_moments(n_all[1:nmax], free[1:], n0_bins)
    p_wait = float(pn[nmax:].sum())
    j, wj, vj = bin_moments(n_all[nmax:] - nmax + 1.0, pn[nmax:], WAIT_BINS)
    return Seen(float(view.arrival_share[state]), float(view.rates[state]), state,
                 np.concatenate(([0.0], n0)), np.concatenate(([float(free[0])], w0)),
                 np.concatenate(([0.0], v0)), p_wait, j, wj, vj)


# ---------------------------------------------------------------- the step it arrives in


@dataclass(frozen=True)
class ArrivalStep:
    """Per n0 bin: the arrival step's decode part, the prefills it carries on average, and the
    residual the tagged waits (mean, variance) and the mean length of that step."""

    d0: FloatArray
    mu_pf: FloatArray
    r_mean: FloatArray
    r_var: FloatArray
    d_biased: FloatArray
    cap: float


def arrival_step(
    a_n: FloatArray,
    b_n: FloatArray,
    cp_n: FloatArray,
    n0: FloatArray,
    lam: float,
    cap: float,
    cv2: float = 0.0,
) -> ArrivalStep:
    """The step an arrival lands in: ``d0`` plus Poisson many prefills of cost ``c_p`` (squared
    CV ``cv2`` with random prompt lengths; third moment as if unskewed), length-biased.

    Parameters
    ----------
    a_n, b_n, cp_n
        The step line at each ``n0`` bin (seconds, seconds per request, seconds per prefill).
    n0
        Others found (bin means).
    lam
        Arrival rate (req/s).
    cap
        Most prefills one step takes.
    cv2
        Squared CV of a prefill's cost.

    Returns
    -------
    ArrivalStep
    """
    tax = np.maximum(1.0 - lam * cp_n, 1e-6)
    d0 = a_n + b_n * n0
    # arrivals in the previous step, prefilled in the arrival step: at most what the token
    # budget takes (``cap``; a burst faster than prefill can go leaves the rest waiting)
    mu_pf = np.minimum(lam * d0 / tax, cap)
    ed = d0 + cp_n * mu_pf
    ed2 = ed**2 + cp_n**2 * (1.0 + cv2) * mu_pf
    # E[S^2], E[S^3] of the compound Poisson prefill part, over c_p^2 and c_p^3
    es2 = mu_pf * (1.0 + cv2) + mu_pf**2
    es3 = mu_pf * (1.0 + 3.0 * cv2) + 3.0 * mu_pf**2 * (1.0 + cv2) + mu_pf**3
    ed3 = d0**3 + 3 * d0**2 * cp_n * mu_pf + 3 * d0 * cp_n**2 * es2 + cp_n**3 * es3
    busy = (n0 > 0).astype(np.float64)
    r_mean = busy * ed2 / (2 * ed)
    r_var = busy * np.maximum(ed3 / (3 * ed) - (ed2 / (2 * ed)) ** 2, 0.0)
    return ArrivalStep(d0, mu_pf, r_mean, r_var, busy * ed2 / ed, cap)


# ---------------------------------------------------------------- TTFT of free arrivals


def chunk_sums(pw: FloatArray, shift: FloatArray, mmax: int) -> tuple[FloatArray, FloatArray]:
    """The law of the summed extra cost of ``m = 0..mmax`` prefill chunks of random length
    over ``m`` mean chunks (the step curve's, priced at the prompt law's mean cost): ``m``-fold
    convolutions of the per-chunk law ``(shift, pw)`` (seconds, probabilities), each binned to
    :data:`CHUNK_SUM_BINS` points (equal mass in the bulk, finer in the upper tail, where a step
    carrying a long prompt decides a TTFT p99).

    Parameters
    ----------
    pw, shift
        The per-chunk law: probabilities and extra costs (seconds), sorted by cost.
    mmax
        Most chunks.

    Returns
    -------
    values, probs
        ``[mmax + 1, bins]`` (zero-padded); for a fixed length one point per ``m``.
    """
    if pw.shape[0] < 2:
        count = np.arange(mmax + 1, dtype=np.float64)[:, None]
        return count * float(shift[0]), np.ones((mmax + 1, 1))
    vals = np.zeros((mmax + 1, CHUNK_SUM_BINS))
    probs = np.zeros((mmax + 1, CHUNK_SUM_BINS))
    probs[0, 0] = 1.0
    v, p = np.zeros(1), np.ones(1)
    for m in range(1, mmax + 1):
        v = (v[:, None] + shift[None, :]).ravel()
        p = (p[:, None] * pw[None, :]).ravel()
        order = np.argsort(v, kind="stable")
        # the running sum kept on a finer grid than the output, so that the variance binning
        # drops does not compound over m (one rebinning per output law)
        v, p = bin_equal_mass(v[order], p[order], 4 * CHUNK_SUM_BINS)
        bv, bp = bin_equal_mass(v, p, CHUNK_SUM_BINS)
        vals[m, : bv.shape[0]], probs[m, : bp.shape[0]] = bv, bp
    return vals, probs



def _clumps(arrivals: FloatArray, batch: float) -> FloatArray:
    """``P(total = a)``, ``a = 0..A_MAX``, of Poisson many geometric clumps (mean size ``batch``)
    with ``arrivals`` requests on average (one row per entry): the compound recursion (Panjer),
    ``f(0) = exp(-L)``, ``f(a) = L / a sum_k k g(k) f(a - k)`` with ``L = arrivals / batch``."""
    A = np.arange(A_MAX + 1, dtype=np.float64)
    p = 1.0 / batch
    lam_b = np.asarray(arrivals, dtype=np.float64) / batch
    gk = p * (1.0 - p) ** (A[1:] - 1.0)  # P(size = k), k = 1..A_MAX
    f = np.zeros((*lam_b.shape, A_MAX + 1))
    f[..., 0] = np.exp(-lam_b)
    for a in range(1, A_MAX + 1):
        k = np.arange(1, a + 1)
        f[..., a] = lam_b / a * (f[..., a - k] * (k * gk[k - 1])).sum(axis=-1)
    return f


def _others_in_prefill_step(arrivals: FloatArray, view: ArrivalView) -> FloatArray:
    """``P(A' = a)``, ``a = 0..A_MAX``, of the others prefilled in the tagged's step, given the
    mean arrivals during the step it arrived in (one value per entry of ``arrivals``): Poisson;
    with batches, the tagged's batch-mates (ahead and behind: ``NB(2, p)``) plus the other
    batches of the step (Poisson many, geometric sizes: Polya-Aeppli), by convolution."""
    A = np.arange(A_MAX + 1, dtype=np.float64)
    if view.batch <= 1.0 and view.ca2 < 1.0:
        # gaps more regular than exponential (round-robin replicas, constant or gamma gaps of
        # CV < 1): the count of a renewal process over the window from an arrival, gamma gaps
        # of shape 1 / ca2, P(N >= j) = P(j gaps <= window) (Poisson's law when ca2 = 1)
        shape = 1.0 / max(view.ca2, 1e-3)
        x = np.asarray(arrivals, dtype=np.float64)[..., None] * shape
        at_least = np.where(A > 0, special.gammainc(np.maximum(A, 1e-300) * shape, x), 1.0)
        nxt = special.gammainc((A + 1.0) * shape, x)
        return np.asarray(np.maximum(at_least - nxt, 0.0))
    if view.batch <= 1.0:
        return poisson_pmf(A, arrivals[..., None])
    size = A_MAX + 1
    p = 1.0 / view.batch
    f = _clumps(arrivals, view.batch)
    # the tagged's batch-mates: the size-biased batch less the tagged, NB(2, p) on 0, 1, ...
    nb = (A + 1.0) * p * p * (1.0 - p) ** A
    out = np.zeros_like(f)
    for j in range(size):
        out[..., j:] += nb[j] * f[..., : size - j]
    return out


def _own_step(
    mixed1: FloatArray, sv: FloatArray, sp: FloatArray, mu: FloatArray, view: ArrivalView
) -> tuple[FloatArray, FloatArray]:
    """The law of the tagged's own prefill step with random prompt lengths: ``mixed1[r, A']``
    (a step of ``1 + A'`` mean-length chunks at row ``r``) plus the extra cost of those ``1 +
    A'`` chunks (:func:`_chunk_sums` ``sv, sp``), with ``A'`` the others that arrived during
    the arrival step (``mu`` on average, one value per ``(r, A, k)`` cell of that step).

    Rather than one law per cell, it is solved at :data:`TTFT_LEVELS` values of ``mu``
    (log-spaced over the cells' range), binned (:func:`~sdsim.analytic.work.
    bin_equal_mass_rows`), and each cell takes the two levels around its ``mu`` with linear
    weights (a mixture with the same mean count). Returns the step lengths and their
    probabilities, ``[*mu.shape, 2 x bins]``.
    """
    lo, hi = max(float(mu.min()), 1e-12), max(float(mu.max()), 1e-12)
    levels = np.geomspace(lo, max(hi, lo * 1.001), TTFT_LEVELS)
    pa2 = _others_in_prefill_step(levels, view)  # [level, A']
    rows, nl = mixed1.shape[0], levels.shape[0]
    v = np.broadcast_to(mixed1[:, None, :, None] + sv[None, None, 1:, :],
                        (rows, nl, *sv[1:].shape)).reshape(rows * nl, -1)
    p = np.broadcast_to(pa2[None, :, :, None] * sp[None, None, 1:, :],
                        (rows, nl, *sp[1:].shape)).reshape(rows * nl, -1)
    order = np.argsort(v, axis=1, kind="stable")
    bv, bp = bin_equal_mass_rows(
        np.take_along_axis(v, order, 1), np.take_along_axis(p, order, 1), OWN_STEP_BINS
    )
    bv, bp = bv.reshape(rows, nl, -1), bp.reshape(rows, nl, -1)
    # the two levels around each cell's mu, weighted linearly in mu (the mean count kept)
    m = np.clip(mu, levels[0], levels[-1])
    i = np.clip(np.searchsorted(levels, m, side="right") - 1, 0, nl - 2)
    f = ((m - levels[i]) / (levels[i + 1] - levels[i]))[..., None]
    ri = np.arange(rows).reshape(rows, *([1] * (mu.ndim - 1)))
    own = np.concatenate((bv[ri, i], bv[ri, i + 1]), axis=-1)
    weight = np.concatenate(((1.0 - f) * bp[ri, i], f * bp[ri, i + 1]), axis=-1)
    return own, weight


def ttft_components(
    seen: Seen,
    view: ArrivalView,
    step: ArrivalStep,
    steps: LocalSteps | None,
    cp_n: FloatArray,
    pf_mean: FloatArray,
    c1p: float,
    P: int,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """TTFT of free arrivals: a mixture of uniforms (w, lo, ln).

    For each busy n0 bin the arrival step carries ``A`` prefills and is picked length-biased,
    the tagged waits a uniform part of it, and its own prefill step carries the ``A'`` other
    prefills that arrived during it (Poisson). With the step table (one chunk per prompt) the
    law of ``A`` is the chunk chain's at that batch, both steps are priced by the cost model
    itself (a step of several chunks turns compute-bound) and every chunk's length follows the
    prompt-length law (:func:`_chunk_sums`: a step that carries another request's long prompt
    is long, and more likely to be the one arrived in); else ``A`` is Poisson and the steps are
    linear in it. An arrival at an idle engine has a prefill-only step.

    Parameters
    ----------
    seen, view, step
        What arrivals find, the arrivals, the step they land in.
    steps
        The real steps around ``n`` others (``None``: lines).
    cp_n, pf_mean
        Per ``n0`` bin: a prefill's cost and the life model's mean prefill window (the line
        path's base).
    c1p
        The prefill step of a request alone.
    P
        Prefill steps per request (chunks of a prompt).

    Returns
    -------
    w, lo, ln
        Uniform components on ``[lo, lo + ln]`` with weights ``w`` (point masses where
        ``ln = 0``).
    """
    A = np.arange(A_MAX + 1, dtype=np.float64)
    idle = seen.n0 == 0
    busy = ~idle
    w0 = seen.w0[busy]
    if steps is not None and P == 1:
        n0, mu_pf = seen.n0[busy], step.mu_pf[busy]
        if steps.prompt_w.shape[0] > 1:
            # random prompt lengths multiply the cells: the n0 bins in fewer groups (the
            # steps change slowly with the batch; the TTFT quantiles move by < 0.5%)
            grp = np.minimum((np.cumsum(w0) - 0.5 * w0) / w0.sum() * TTFT_GROUPS, TTFT_GROUPS - 1)
            grp = grp.astype(np.int64)
            wg = np.bincount(grp, weights=w0)
            ok = wg > 0
            n0 = (np.bincount(grp, weights=w0 * n0) / np.where(ok, wg, 1.0))[ok]
            mu_pf = (np.bincount(grp, weights=w0 * mu_pf) / np.where(ok, wg, 1.0))[ok]
            w0 = wg[ok]
        r = steps.rows(n0)
        pq = steps.pq[r, : A_MAX + 1]
        if view.batch > 1.0:
            # the chunk chain assumes Poisson arrivals: in clumps, the arrival step carries
            # the clumps of the step before it
            pq = _clumps(mu_pf, view.batch)
        pa = pq / pq.sum(axis=1, keepdims=True)
        # the chunks' extra cost over mean chunks (nearly the same at every batch: a
        # prefill chunk is compute-bound on its own), m = 0..A_MAX + 1 chunks
        mid = int(steps.rows(np.array([float(seen.n0 @ seen.w0) / float(seen.w0.sum())]))[0])
        sv, sp = chunk_sums(steps.prompt_w, steps.prompt_shift[mid], A_MAX + 1)
        # the arrival step: A chunks whose extra cost is sv[A, k] (probability sp[A, k]),
        # picked length-biased
        dur = steps.mixed[r, : A_MAX + 1][:, :, None] + sv[None, : A_MAX + 1, :]
        wb = pa[:, :, None] * sp[None, : A_MAX + 1, :] * dur
        wb /= wb.sum(axis=(1, 2), keepdims=True)
        # its own step: itself and the A' that arrived during the arrival step, 1 + A' chunks
        if steps.prompt_w.shape[0] > 1:
            own, ow = _own_step(steps.mixed[r, 1 : A_MAX + 2], sv, sp, seen.lam * dur, view)
            w = wb[..., None] * ow * w0[:, None, None, None]
            dur = dur[..., None]
        else:
            pa2 = _others_in_prefill_step(seen.lam * dur, view)
            own = steps.mixed[r, 1 : A_MAX + 2][:, None, None, :, None]
            w = (wb[..., None] * pa2 * w0[:, None, None, None])[..., None]
            dur = dur[..., None, None]
        pw, sh0 = steps.prompt_w, steps.prompt_shift[0]
    else:
        cpb = cp_n[busy][:, None]
        pa = poisson_pmf(A[None, :], step.mu_pf[busy][:, None])
        dur = step.d0[busy][:, None] + cpb * A[None, :]
        wb = pa * dur
        wb /= wb.sum(axis=1, keepdims=True)
        pa2 = _others_in_prefill_step(seen.lam * dur, view)
        # the prefill step beyond the other prefills: the life model's prefill window
        pf_base = pf_mean[busy] - cp_n[busy] * seen.lam * (wb * dur).sum(axis=1)
        own = pf_base[:, None, None] + cpb[:, :, None] * A[None, None, :]
        w = wb[:, :, None] * pa2 * w0[:, None, None]
        dur = dur[:, :, None]
        pw, sh0 = np.ones(1), np.zeros(1)
    keep = w > 1e-13 * float(seen.w0.sum())
    lo4 = np.broadcast_to(own, w.shape)[keep]
    ln4 = np.broadcast_to(dur, w.shape)[keep]
    n_idle = int(idle.sum())
    w_all = seen.share * np.concatenate(((seen.w0[idle][:, None] * pw).ravel(), w[keep]))
    lo = np.concatenate((np.broadcast_to(c1p + sh0, (n_idle, pw.shape[0])).ravel(), lo4))
    ln = np.concatenate((np.zeros(n_idle * pw.shape[0]), ln4))
    return w_all, lo, ln
