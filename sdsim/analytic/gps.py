"""Continuous batching as Cohen's generalised processor sharing (GPS): a birth-death model.

Each of the ``n`` requests in the batch advances one step per ``t(n)`` seconds, so a request that
needs ``nu`` steps on average leaves at total rate ``phi(n) = n / (nu t(n))``. With Poisson
arrivals at rate lambda the number in system is a birth-death process whose stationary law is
insensitive to the law of the work (J.W. Cohen, Acta Informatica 12, 1979)::

    pi(n) = pi(0) prod_{i=1..n} lambda nu t(i) / i.

For ``t(n) = a + b n`` and ``rho = lambda nu b < 1`` this is negative binomial with
``r = a / b + 1`` and ``p = rho``: ``E[N] = r rho / (1 - rho)`` and the exact mean sojourn
``E[T] = E[N] / lambda = (a + b) nu / (1 - rho)`` -- the mean-field formula with the request counted
in its own batch. This module also caps the batch at ``n_max`` (the server's ``max_num_seqs`` or
token budget): above it requests wait and the service rate stays at ``phi(n_max)``, which gives the
probability of waiting for admission. With a cap, or with a step time that is not linear in n (a
roofline or measured profile), the birth-death mean is the better one; with a linear step and no
cap the two coincide.
"""

from __future__ import annotations

__all__ = [
    "BirthDeath",
    "birth_death",
    "modulated_birth_death",
    "negative_binomial_law",
    "noisy",
]

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import numpy.typing as npt
from scipy import stats

from sdsim._jit import jit

# Stop extending the law once the remaining tail mass is below this (relative to the total).
_TAIL = 1e-12
_N_LIMIT = 200_000


@dataclass(frozen=True)
class BirthDeath:
    """Stationary law of the number of requests in system.

    Attributes
    ----------
    pmf
        ``pmf[n] = P(N = n)`` (truncated where the tail is below 1e-12).
    rate
        Arrival rate (req/s).
    n_max
        Concurrency cap (requests beyond it wait).
    stable
        False when the arrival rate reaches the capped service rate (no stationary law; ``pmf`` is
        then empty and the means are infinite).
    joint
        With arrival states (:func:`modulated_birth_death`): ``joint[n, i] = P(N = n, state
        i)``; ``None`` for one state.
    """

    pmf: npt.NDArray[np.float64]
    rate: float
    n_max: int
    stable: bool
    joint: npt.NDArray[np.float64] | None = None

    def seen_in(self, state: int) -> npt.NDArray[np.float64]:
        """The law of N an arrival in ``state`` sees: ``P(N = n | state)`` (Poisson arrivals
        within a state see its time average); ``pmf`` with one state."""
        if self.joint is None:
            return self.pmf
        col = self.joint[:, state]
        return np.asarray(col / col.sum())

    @cached_property
    def mean(self) -> float:
        """E[N], time-average number in system."""
        if not self.stable:
            return math.inf
        return float(np.arange(self.pmf.shape[0]) @ self.pmf)

    @cached_property
    def var(self) -> float:
        """Var[N]."""
        if not self.stable:
            return math.inf
        n = np.arange(self.pmf.shape[0], dtype=np.float64)
        m = float(n @ self.pmf)
        return float((n * n) @ self.pmf - m * m)

    @property
    def mean_sojourn(self) -> float:
        """Exact mean time in system by Little's law, ``E[N] / lambda``."""
        return self.mean / self.rate

    @property
    def p_wait(self) -> float:
        """P(an arrival finds the batch full) = P(N >= n_max) (PASTA)."""
        if not self.stable:
            return 1.0
        return float(self.pmf[self.n_max :].sum())


def birth_death(
    rate: float,
    nu: float,
    step_time: Callable[[npt.NDArray[np.float64]], npt.NDArray[np.float64]],
    n_max: int,
    dispersion: npt.NDArray[np.float64] | None = None,
) -> BirthDeath:
    """Stationary law of the GPS birth-death model with a concurrency cap.

    Parameters
    ----------
    rate
        Arrival rate lambda (req/s), > 0.
    nu
        Mean steps a request spends in the batch.
    step_time
        ``t(n)``: seconds per step with n requests in the batch (vectorised over n >= 1).
    n_max
        Concurrency cap; states above it wait at the service rate of ``n_max``.
    dispersion
        ``F(n)`` for ``n = 1..n_max`` (> 0): how many times more variance than Poisson
        arrivals and departures the noise that drives ``N`` has there (:func:`noisy`; ``F = 1``:
        the plain law). Above the cap the tail takes ``F(n_max)``.

    Returns
    -------
    BirthDeath
    """
    if rate <= 0 or nu <= 0:
        raise ValueError(f"rate and nu must be > 0 (rate={rate}, nu={nu})")
    n = np.arange(1, n_max + 1, dtype=np.float64)
    t = np.asarray(step_time(n), dtype=np.float64)
    # birth/death ratio lambda / phi(n) with phi(n) = n / (nu t(n))
    ratio = rate * nu * t / n
    if dispersion is not None:
        up, down = noisy(rate, n / (nu * t), np.asarray(dispersion, dtype=np.float64))
        ratio = up / down
    top = float(ratio[-1])
    if top >= 1.0:
        return BirthDeath(np.zeros(0), rate, n_max, False)
    # geometric tail above the cap, cut where its mass is negligible
    extra = 0
    if top > 0:
        extra = int(min(_N_LIMIT, math.ceil(math.log(_TAIL) / math.log(top)) + 1))
    return BirthDeath(_law(ratio, extra, _TAIL), rate, n_max, True)


@jit
def _law(ratio: npt.NDArray[np.float64], extra: int, cut: float) -> npt.NDArray[np.float64]:
    """``pi(n) ~ prod_{i <= n} ratio[i - 1]`` for ``n <= len(ratio)``, then ``extra`` states
    of the geometric tail at ``ratio[-1]``, normalised, the far tail (mass below ``cut``) dropped
    and the rest normalised again (compiled: a dozen numpy calls on a few hundred entries cost
    more than the arithmetic)."""  # compiled
    n_max = ratio.shape[0]
    size = n_max + 1 + extra
    logp = np.empty(size)
    logp[0] = 0.0
    for i in range(n_max):
        logp[i + 1] = logp[i] + math.log(ratio[i])
    if extra > 0:
        lt = math.log(ratio[n_max - 1])
        for j in range(1, extra + 1):
            logp[n_max + j] = logp[n_max] + lt * j
    mx = logp[0]
    for i in range(size):
        mx = max(mx, logp[i])
    total = 0.0
    for i in range(size):
        logp[i] = math.exp(logp[i] - mx)
        total += logp[i]
    for i in range(size):
        logp[i] /= total
    # drop the far tail for compactness (the mass there is below cut)
    last = size
    tail = 0.0
    for i in range(size - 1, -1, -1):
        tail += logp[i]
        if tail > cut:
            last = i + 1
            break
    last = max(last, 1)
    p = logp[:last].copy()
    total = 0.0
    for i in range(last):
        total += p[i]
    for i in range(last):
        p[i] /= total
    return p


def noisy(
    births: npt.ArrayLike, deaths: npt.ArrayLike, dispersion: npt.ArrayLike
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Birth and death rates with the same drift and the arrivals' noise scaled.

    A birth-death process is, near any level, a diffusion with drift ``lambda - phi`` and
    variance ``lambda + phi``. Arrivals whose noise is larger than Poisson's (clusters: the
    prefill bursts, clumped arrivals) add to the births' part: variance ``lambda (2 F - 1) +
    phi``, which at the law's mode (``lambda = phi``) is ``F`` times the plain one and far above
    it (``phi >> lambda``) the departures' own. With the drift kept, that is ``lambda' = lambda
    F`` and ``phi' = phi + lambda (F - 1)``. ``F < 1`` (regular arrivals) lowers the variance
    down to what the drift allows (``|lambda - phi|``; a birth-death process has no less).
    """
    phi = np.ascontiguousarray(deaths, dtype=np.float64)
    lam = np.ascontiguousarray(np.broadcast_to(np.asarray(births, dtype=np.float64), phi.shape))
    f = np.ascontiguousarray(np.broadcast_to(np.asarray(dispersion, dtype=np.float64), phi.shape))
    up, down = np.empty_like(phi), np.empty_like(phi)
    _noisy(lam.ravel(), phi.ravel(), f.ravel(), up.ravel(), down.ravel())
    return up, down


@jit
def _noisy(
    lam: npt.NDArray[np.float64],
    phi: npt.NDArray[np.float64],
    f: npt.NDArray[np.float64],
    up: npt.NDArray[np.float64],
    down: npt.NDArray[np.float64],
) -> None:  # compiled
    """:func:`noisy` element by element (its numpy form costs a dozen calls per law)."""
    for i in range(lam.shape[0]):
        drift = lam[i] - phi[i]
        var = max(lam[i] * (2.0 * f[i] - 1.0) + phi[i], abs(drift) + 1e-9 * (lam[i] + phi[i]))
        up[i] = 0.5 * (var + drift)
        down[i] = 0.5 * (var - drift)


def modulated_birth_death(
    births: npt.NDArray[np.float64],
    deaths: npt.NDArray[np.float64],
    leave: npt.NDArray[np.float64],
    rate: float,
) -> BirthDeath:
    """Stationary law of a birth-death process whose rates depend on a two-state Markov chain.

    A quasi-birth-death process on (number in system ``n``, state ``i``): births from ``n``
    at ``births[i, n]``, deaths from ``n`` at ``deaths[i, n - 1]`` for ``n = 1..n_max`` (the
    last column of each continuing above the cap, where requests wait), state ``i`` left at
    ``leave[i]``. Solved by linear level reduction (``pi_{n+1} = pi_n R_n``, ``R_n`` from the
    top level down), compiled; levels above the cap are added until the law's mass beyond
    them is below 1e-12.

    Parameters
    ----------
    births, deaths
        ``(2, n_max)`` each: rates out of level ``n`` up (``n = 0..n_max - 1``) and out of
        level ``n`` down (``n = 1..n_max``), per state.
    leave
        Rate of leaving each state.
    rate
        Mean arrival rate (recorded on the law).

    Returns
    -------
    BirthDeath
        With ``joint`` set; ``stable`` False when no stationary law exists within 2e6 levels
        above the cap (the mean arrival rate reaches the mean capped service rate).
    """
    n_max = deaths.shape[1]
    occ = np.array([leave[1], leave[0]]) / (leave[0] + leave[1])
    up, down = births[:, -1], deaths[:, -1]
    if float(occ @ up) >= float(occ @ down):
        return BirthDeath(np.zeros(0), rate, n_max, False)
    extra = max(4 * n_max, 1024)
    while True:
        levels = n_max + extra
        b = np.concatenate((births, np.repeat(up[:, None], extra, axis=1)), axis=1)
        d = np.concatenate((deaths, np.repeat(down[:, None], extra, axis=1)), axis=1)
        joint = _qbd_law(np.ascontiguousarray(b, dtype=np.float64),
                         np.ascontiguousarray(d, dtype=np.float64),
                         np.ascontiguousarray(leave, dtype=np.float64), levels)
        tail = float(joint[-max(levels // 100, 1) :].sum())
        if tail < 1e-13 or extra >= 2_000_000:
            break
        extra *= 4
    if tail >= 1e-9:
        return BirthDeath(np.zeros(0), rate, n_max, False)
    marg = joint.sum(axis=1)
    # the far tail (mass below 1e-12) dropped, as birth_death does
    cum = np.cumsum(marg[::-1])[::-1]
    last = max(int(np.searchsorted(-cum, -_TAIL)), n_max + 1)
    joint = joint[:last] / joint[:last].sum()
    return BirthDeath(joint.sum(axis=1), rate, n_max, True, joint)


@jit
def _qbd_law(
    births: npt.NDArray[np.float64],
    deaths: npt.NDArray[np.float64],
    leave: npt.NDArray[np.float64],
    levels: int,
) -> npt.NDArray[np.float64]:  # compiled
    """``pi[n, i]`` for ``n = 0..levels`` of the two-state QBD (births[i, n] from level ``n``,
    deaths[i, n - 1] from level ``n``, leave), the top level reflecting. Linear level reduction
    with 2x2 blocks: ``R_{L-1} = A0 (-A1(L))^-1``, ``R_{n-1} = A0 (-A1(n) - R_n
    A2(n+1))^-1``, ``pi_0`` from ``pi_0 (A1(0) + R_0 A2(1)) = 0``, ``pi_{n+1} = pi_n R_n``,
    each level rescaled as it is made (the law may span more than a double's range), then
    normalised."""
    L = levels
    R = np.zeros((L, 2, 2))
    # M = -A1(n) - R_n A2(n+1) for the current n, going down
    for n in range(L, 0, -1):
        up0 = births[0, n] if n < L else 0.0
        up1 = births[1, n] if n < L else 0.0
        m00 = leave[0] + up0 + deaths[0, n - 1]
        m11 = leave[1] + up1 + deaths[1, n - 1]
        m01 = -leave[0]
        m10 = -leave[1]
        if n < L:
            # minus R_n A2(n+1): A2 diagonal (deaths at level n+1)
            m00 -= R[n, 0, 0] * deaths[0, n]
            m01 -= R[n, 0, 1] * deaths[1, n]
            m10 -= R[n, 1, 0] * deaths[0, n]
            m11 -= R[n, 1, 1] * deaths[1, n]
        det = m00 * m11 - m01 * m10
        i00, i01, i10, i11 = m11 / det, -m01 / det, -m10 / det, m00 / det
        # R_{n-1} = A0(n-1) M^-1, A0 = diag(births at level n - 1)
        R[n - 1, 0, 0] = births[0, n - 1] * i00
        R[n - 1, 0, 1] = births[0, n - 1] * i01
        R[n - 1, 1, 0] = births[1, n - 1] * i10
        R[n - 1, 1, 1] = births[1, n - 1] * i11
    # level 0: pi_0 (A1(0) + R_0 A2(1)) = 0, A1(0) has no deaths
    a00 = -leave[0] - births[0, 0] + R[0, 0, 0] * deaths[0, 0]
    a01 = leave[0] + R[0, 0, 1] * deaths[1, 0]
    pi = np.zeros((L + 1, 2))
    # the left null vector of [[a00, a01], [a10, a11]]: (-a10... ) from the first column
    # (pi_0 a00 + pi_1 a10 = 0 with a10 = leave[1] + R[0, 1, 0] deaths[0, 0])
    a10 = leave[1] + R[0, 1, 0] * deaths[0, 0]
    if abs(a00) + abs(a10) > 0:
        pi[0, 0] = a10
        pi[0, 1] = -a00
    else:
        pi[0, 0] = -a01
        pi[0, 1] = 1.0
    s = abs(pi[0, 0]) + abs(pi[0, 1])
    pi[0, 0] /= s
    pi[0, 1] /= s
    logscale = np.zeros(L + 1)
    for n in range(L):
        x0 = pi[n, 0] * R[n, 0, 0] + pi[n, 1] * R[n, 1, 0]
        x1 = pi[n, 0] * R[n, 0, 1] + pi[n, 1] * R[n, 1, 1]
        sc = abs(x0) + abs(x1)
        if sc > 0:
            pi[n + 1, 0] = x0 / sc
            pi[n + 1, 1] = x1 / sc
            logscale[n + 1] = logscale[n] + math.log(sc)
        else:
            logscale[n + 1] = -1e300
    mx = logscale.max()
    total = 0.0
    for n in range(L + 1):
        f = math.exp(logscale[n] - mx) if logscale[n] > -1e299 else 0.0
        pi[n, 0] = max(pi[n, 0], 0.0) * f
        pi[n, 1] = max(pi[n, 1], 0.0) * f
        total += pi[n, 0] + pi[n, 1]
    for n in range(L + 1):
        pi[n, 0] /= total
        pi[n, 1] /= total
    return pi


def negative_binomial_law(a: float, b: float, rate: float, nu: float) -> stats.rv_discrete:
    """The closed form for ``t(n) = a + b n`` without a cap: NB(r = a/b + 1, p = rho).

    Parameters
    ----------
    a, b
        Step time line (seconds, seconds per request); b > 0.
    rate
        Arrival rate (req/s).
    nu
        Mean steps per request.

    Returns
    -------
    scipy.stats frozen distribution of N (``scipy.stats.nbinom`` counts failures, so its success
    probability is ``1 - rho``).
    """
    rho = rate * nu * b
    if not 0 < rho < 1:
        raise ValueError(f"rho = lambda nu b must lie in (0, 1), got {rho}")
    return stats.nbinom(a / b + 1.0, 1.0 - rho)
