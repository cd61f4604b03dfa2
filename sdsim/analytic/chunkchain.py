"""Compiled stationary law of the prefill-chunk chain (numba), one small chain per row.

Given a decode batch ``n``, the number of prefill chunks in a step is a Markov chain ``q -> q'
~ Poisson(mu[q])`` with ``mu[q] = chunk_rate x mixed[n, q]`` (the chunks that arrive during a
step of ``q`` chunks). :func:`chain_rows` gives its stationary law on states ``0..Q-1``, the
last state absorbing the Poisson tail, for every row of ``mixed`` at its own chunk rate.

Why this algorithm: the law of one row is the stationary vector of a dense ``Q x Q`` stochastic
matrix (``Q`` 8..33). GTH (Grassmann-Taksar-Heyman) state reduction eliminates the states from
the top down, dividing by the off-diagonal row sums instead of ``1 - P[k, k]``: no subtraction,
no pivoting, nonnegative throughout, about ``Q^3 / 3`` multiply-adds. It is the numerically
stable way to get a small chain's stationary law (the mass of rarely visited top states keeps
its relative accuracy, which the truncation test below reads). The transition probabilities come
from the Poisson recursion ``p_j = p_(j-1) mu / j`` (one ``exp`` per state, not per entry) and the
tail column from the tail's own sum where it is small (not ``1 -`` the rest, which would lose it).

Truncation: a row keeps the first size of ``sizes`` whose stationary mass in the last state is
below ``tail_mass`` (the full ``mixed.shape[1]`` states otherwise); a size is tried only where the
step from its last state leaves it with chance below ``gate`` (a cheap test that it can pass).
Each row is computed on its own, so the floats of a row never depend on the rest of the batch.
"""

from __future__ import annotations

__all__ = ["chain_rows"]

import math

import numpy as np
import numpy.typing as npt

from sdsim._jit import jit, jit_eager

FloatArray = npt.NDArray[np.float64]

# below this mean the Poisson tail P(X >= m) (m > mu) is summed term by term (the terms fall at
# least geometrically); above it the tail is not small and 1 - the rest is accurate
_TAIL_SUM_RATIO = 0.5
# exp(-mu) underflows near mu = 745; beyond this the pmf is taken term by term in logs
_LOG_PMF_MU = 600.0
# a tail 1 - (the rest) above this keeps 1e-8 relative accuracy
_TAIL_DIRECT = 1e-8


@jit
def _gth(
    mu: FloatArray, size: int, b: FloatArray, pi: FloatArray, work: FloatArray
) -> None:  # compiled
    """Stationary law of the chain on states ``0..size-1`` (the last absorbing the tail) by GTH
    state reduction, into ``pi[:size]``; ``b`` (at least size x size) and ``work`` (at least 3 x
    size) are scratch.

    ``b[j, i] = P(i -> j)`` (the transpose, so the reduction's inner loop runs along a row).
    """
    m = size - 1
    big = False
    for i in range(size):
        if mu[i] > 0.0:
            b[0, i] = math.exp(-mu[i])
        else:
            b[0, i] = 1.0
        big = big or mu[i] >= _LOG_PMF_MU
    # p_j = p_(j-1) mu / j, all sources i at once (times 1/j: a division per entry costs more
    # than the rest of the row)
    for j in range(1, m):
        inv = 1.0 / j
        for i in range(size):
            b[j, i] = b[j - 1, i] * mu[i] * inv
    if big:  # exp(-mu) underflows: those sources term by term in logs
        for i in range(size):
            if mu[i] >= _LOG_PMF_MU:
                lm = math.log(mu[i])
                for j in range(m):
                    b[j, i] = math.exp(j * lm - math.lgamma(j + 1.0) - mu[i])
    # the tail column P(i -> >= m): 1 - the rest where that is not small, else its own sum
    acc = work[0]
    term = work[1]
    tail = work[2]
    for i in range(size):
        acc[i] = 0.0
    for j in range(m):
        for i in range(size):
            acc[i] += b[j, i]
    ratio = 0.0  # largest term ratio mu / (m + 1) among the tails summed
    for i in range(size):
        rest = 1.0 - acc[i]
        if rest > _TAIL_DIRECT or mu[i] <= 0.0 or mu[i] >= _TAIL_SUM_RATIO * m:
            b[m, i] = max(rest, 0.0)
            term[i] = 0.0
            tail[i] = -1.0  # (taken from the rest: left alone below)
        else:
            term[i] = b[m - 1, i] * mu[i] / m
            ratio = max(ratio, mu[i] / (m + 1))
            tail[i] = 0.0
    if ratio > 0.0:
        # terms after the first fall by at least `ratio` each (< 1/2): enough of them that the
        # rest is below 1e-16 of the sum, all tails at once
        terms = min(math.ceil(math.log(1e-16) / math.log(ratio)) + 1, 64)
        for n in range(terms):
            inv = 1.0 / (m + 1 + n)
            for i in range(size):
                tail[i] += term[i]
                term[i] = term[i] * mu[i] * inv
        for i in range(size):
            if tail[i] >= 0.0:
                b[m, i] = tail[i]
    f = term
    s_k = pi  # the reduction's sums, overwritten by the law from the bottom up
    for k in range(m, 0, -1):
        s = 0.0
        for j in range(k):
            s += b[j, k]
        # a state that cannot step down (its transitions underflowed) keeps the mass above it
        s = max(s, 1e-280)
        s_k[k] = s
        bk = b[k]
        for i in range(k):
            f[i] = bk[i] / s
        for j in range(k):
            c = b[j, k]
            bj = b[j]
            for i in range(k):
                bj[i] += f[i] * c
    pi[0] = 1.0
    total = 1.0
    for k in range(1, size):
        bk = b[k]
        a = 0.0
        for i in range(k):
            a += pi[i] * bk[i]
        pi[k] = a / s_k[k]
        total += pi[k]
        if total > 1e20:  # (a state that barely steps down: rescale before anything overflows)
            for i in range(k + 1):
                pi[i] /= total
            total = 1.0
    for k in range(size):
        pi[k] /= total


@jit
def _poisson_tail(mu: float, m: int) -> float:  # compiled
    """``P(X >= m)`` for ``X ~ Poisson(mu)`` (the truncation gate: 1e-6 accuracy is plenty)."""
    if mu <= 0.0:
        return 0.0
    if mu >= _LOG_PMF_MU:
        return 1.0
    p = math.exp(-mu)
    s = p
    for j in range(1, m):
        p = p * mu / j
        s += p
    return max(1.0 - s, 0.0)


@jit_eager("void(f8[:, ::1], f8[::1], i8[::1], f8, f8, f8[:, ::1], f8[::1])")
def _chain_rows(
    mixed: FloatArray,
    rates: FloatArray,
    sizes: npt.NDArray[np.int64],
    tail_mass: float,
    gate: float,
    pq: FloatArray,
    t: FloatArray,
) -> None:  # compiled
    rows, nq = mixed.shape
    a = np.empty((nq, nq))
    pi = np.empty(nq)
    mu = np.empty(nq)
    work = np.empty((3, nq))
    for r in range(rows):
        for q in range(nq):
            pq[r, q] = 0.0
        lam = rates[r]
        if lam <= 0.0:
            pq[r, 0] = 1.0
            t[r] = mixed[r, 0]
            continue
        for q in range(nq):
            mu[q] = lam * mixed[r, q]
        done = False
        for i in range(sizes.shape[0] + 1):
            size = nq if i == sizes.shape[0] else sizes[i]
            if size >= nq and i < sizes.shape[0]:
                continue
            if size < nq and _poisson_tail(mu[size - 1], size) >= gate:
                continue
            _gth(mu, size, a, pi, work)
            if size == nq or pi[size - 1] < tail_mass:
                for q in range(size):
                    pq[r, q] = pi[q]
                done = True
                break
        if not done:  # the full size always ends the loop
            continue
        acc = 0.0
        for q in range(nq):
            acc += pq[r, q] * mixed[r, q]
        t[r] = acc


def chain_rows(
    mixed: FloatArray,
    rates: FloatArray,
    sizes: tuple[int, ...],
    tail_mass: float,
    gate: float,
) -> tuple[FloatArray, FloatArray]:
    """Stationary chunk law of each row of ``mixed`` at its own chunk rate.

    Parameters
    ----------
    mixed
        ``mixed[r, q]``: the step time (seconds) of row ``r`` with ``q`` prefill chunks.
    rates
        Chunk arrival rate (chunks/s) per row; a rate <= 0 gives the empty chain (``q = 0``).
    sizes
        Shorter chain sizes tried in turn before the full one (ascending).
    tail_mass
        A shorter size is kept when its last state's stationary mass is below this.
    gate
        A shorter size is tried only when ``P(Poisson(mu[size-1]) >= size)`` is below this.

    Returns
    -------
    pq, t
        ``pq[r, q]`` the stationary law (zeros past the size kept) and ``t[r] = sum_q pq[r, q]
        mixed[r, q]``, the mean step.
    """
    m = np.ascontiguousarray(mixed, dtype=np.float64)
    lam = np.ascontiguousarray(rates, dtype=np.float64)
    pq = np.empty(m.shape)
    t = np.empty(m.shape[0])
    _chain_rows(m, lam, np.asarray(sizes, dtype=np.int64), float(tail_mass), float(gate), pq, t)
    return pq, t
