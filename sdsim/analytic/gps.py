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

__all__ = ["BirthDeath", "birth_death", "negative_binomial_law"]

import math
from collections.abc import Callable
from dataclasses import dataclass

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
    """

    pmf: npt.NDArray[np.float64]
    rate: float
    n_max: int
    stable: bool

    @property
    def mean(self) -> float:
        """E[N], time-average number in system."""
        if not self.stable:
            return math.inf
        return float(np.arange(self.pmf.shape[0]) @ self.pmf)

    @property
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
        arrivals and departures the noise that drives ``N`` has there. Each log-ratio
        ``log(lambda / phi(n))`` is divided by it: near the mode, where the birth-death law is
        the diffusion with drift ``lambda - phi(n)`` and variance ``lambda + phi(n)``, this
        scales the variance by ``F`` and keeps the mode (``F = 1``: the plain law). Above the
        cap the tail takes ``F(n_max)``.

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
        ratio = np.exp(np.log(ratio) / np.asarray(dispersion, dtype=np.float64))
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
    more than the arithmetic)."""  # pragma: no cover - compiled
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
