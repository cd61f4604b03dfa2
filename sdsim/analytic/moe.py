"""Mixture-of-experts: expert coverage and the implicit mean-latency equation.

With M experts, m routed per token and T tokens in a step, the expected fraction of experts a step
touches under uniform routing is ``phi(T) = 1 - (1 - m / M)^T``: a decode step of few tokens reads
few experts' weights. Splitting each coefficient into a part that does not depend on the experts
read (attention, dense layers, overhead: ``C_u``) and a part proportional to the expert weights
read (``C_s``), ``C = C_u + phi C_s``. A step routes ``T ≈ B (k + 1)`` tokens with ``B = lambda L``
requests in flight (at least the request itself), so ``L = C1(phi) / (1 - lambda C2(phi))`` is an
implicit equation in L, solved here by damped fixed-point iteration (with a bracketing fallback).

The model registry that knows M and m is separate; here they are explicit inputs.
"""

from __future__ import annotations

__all__ = ["MoEResult", "expert_fraction", "moe_mean_latency"]

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import optimize

from sdsim.errors import ScenarioError


def expert_fraction(
    tokens: float | npt.ArrayLike, experts: int, active: int
) -> npt.NDArray[np.float64]:
    """``phi(T) = 1 - (1 - m / M)^T``: expected fraction of experts touched by T routed tokens.

    Parameters
    ----------
    tokens
        Tokens routed in the step (T >= 0; real-valued allowed).
    experts
        M, experts per MoE layer (>= 1).
    active
        m, experts per token (1 <= m <= M).
    """
    if experts < 1 or not 1 <= active <= experts:
        raise ScenarioError("moe", f"need 1 <= active <= experts (got m={active}, M={experts})")
    t = np.asarray(tokens, dtype=np.float64)
    if np.any(t < 0):
        raise ScenarioError("moe", "tokens must be >= 0")
    return 1.0 - np.power(1.0 - active / experts, t)


@dataclass(frozen=True)
class MoEResult:
    """Solution of the implicit MoE latency equation.

    Attributes
    ----------
    latency
        Mean latency L (seconds; inf when saturated).
    phi
        Expert fraction at the solution.
    tokens
        Tokens per step ``max(lambda L, 1) (k + 1)`` at the solution.
    c1, c2
        Effective coefficients ``C_u + phi C_s``.
    iterations
        Fixed-point iterations used.
    converged
        Whether the iteration met the tolerance.
    """

    latency: float
    phi: float
    tokens: float
    c1: float
    c2: float
    iterations: int
    converged: bool


def moe_mean_latency(
    rate: float,
    c1: tuple[float, float],
    c2: tuple[float, float],
    experts: int,
    active: int,
    k: int,
    tol: float = 1e-10,
    max_iter: int = 500,
) -> MoEResult:
    """Mean latency of an MoE server by fixed-point iteration on ``L``.

    Parameters
    ----------
    rate
        Arrival rate lambda (req/s, >= 0).
    c1, c2
        ``(C_u, C_s)`` splits of C1 and C2 (seconds): expert-independent part and the part that
        scales with the fraction of expert weights read.
    experts, active
        M and m.
    k
        Draft length (the verifier routes k + 1 tokens per request per step).
    tol
        Relative tolerance on L.
    max_iter
        Iteration cap before the bracketing fallback.

    Returns
    -------
    MoEResult
    """
    if rate < 0:
        raise ScenarioError("workload.rate", f"must be >= 0 (got {rate})")
    width = k + 1

    def coeffs(lat: float) -> tuple[float, float, float, float]:
        t = max(rate * lat, 1.0) * width
        ph = float(expert_fraction(t, experts, active))
        return c1[0] + ph * c1[1], c2[0] + ph * c2[1], ph, t

    def g(lat: float) -> float:
        a1, a2, _, _ = coeffs(lat)
        den = 1.0 - rate * a2
        return a1 / den if den > 0 else math.inf

    # saturated even at full expert coverage and at the lone-request coverage? then no solution
    lat = g(0.0)
    if not math.isfinite(lat):
        a1, a2, ph, t = coeffs(0.0)
        return MoEResult(math.inf, ph, t, a1, a2, 0, False)
    it = 0
    converged = False
    for it in range(1, max_iter + 1):  # noqa: B007 - the count is reported
        new = g(lat)
        if not math.isfinite(new):
            break
        nxt = 0.5 * lat + 0.5 * new  # damping: phi grows with L, so plain iteration can overshoot
        if abs(nxt - lat) <= tol * max(abs(lat), 1e-30):
            lat = nxt
            converged = True
            break
        lat = nxt
    if not converged:
        # L - g(L) changes sign between the lone-request latency and the first divergence point
        hi = lat
        f = lambda x: x - g(x)  # noqa: E731
        lo = g(0.0)
        hi = lo
        while math.isfinite(g(hi)) and f(hi) < 0 and hi < 1e9:
            hi *= 2.0
        if math.isfinite(g(hi)) and f(hi) >= 0:
            lat = float(optimize.brentq(f, lo, hi, xtol=1e-14, rtol=1e-12))
            converged = True
        else:
            lat = math.inf
    a1, a2, ph, t = coeffs(lat if math.isfinite(lat) else 1e30)
    return MoEResult(lat, ph, t, a1, a2, it, converged)
