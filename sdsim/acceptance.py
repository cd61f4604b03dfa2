"""Truncated-geometric acceptance: the law of tokens per step and of steps per request.

Draft position j (1-based) is accepted with probability ``alpha_j`` given positions before it were;
verification stops at the first rejection and the verifier always adds one token (the bonus token
when all k were accepted, the correction token otherwise). Tokens emitted per step
``X = accepted + 1`` take values 1..k+1 with

    P(X = a + 1) = (alpha_1 ... alpha_a) (1 - alpha_{a+1})   for a < k,
    P(X = k + 1) = alpha_1 ... alpha_k.

A constant alpha is the i.i.d. case of Leviathan et al. (ICML 2023):
``E[X] = (1 - alpha^(k+1)) / (1 - alpha)``.

A request that still needs ``r`` tokens emits ``min(X, r)``; :func:`steps_to_finish_pmf` gives the
exact law of the number of steps to emit N tokens by dynamic programming over tokens remaining.
"""

from __future__ import annotations

__all__ = [
    "AcceptanceSampler",
    "expected_tokens_per_step",
    "position_probs",
    "steps_to_finish_moments",
    "steps_to_finish_pmf",
    "steps_to_finish_table",
    "tokens_per_step_pmf",
    "tokens_per_step_var",
]

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from sdsim._jit import jit

AlphaLike = float | Sequence[float] | npt.NDArray[np.float64]


def position_probs(alpha: AlphaLike, k: int) -> npt.NDArray[np.float64]:
    """Per-position acceptance probabilities ``alpha_1..alpha_k`` as an array.

    Parameters
    ----------
    alpha
        One probability (i.i.d.) or a per-position sequence at least k long.
    k
        Draft length (>= 0).
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    arr = np.asarray(alpha, dtype=np.float64)
    if arr.ndim == 0:
        a = np.full(k, float(arr))
    else:
        if arr.shape[0] < k:
            raise ValueError(f"per-position alpha has {arr.shape[0]} entries, needs >= k={k}")
        a = arr[:k].copy()
    if np.any((a < 0) | (a > 1)) or not np.all(np.isfinite(a)):
        raise ValueError("alpha must lie in [0, 1]")
    return a


def tokens_per_step_pmf(alpha: AlphaLike, k: int) -> npt.NDArray[np.float64]:
    """P(X = x) for x = 1..k+1 (index 0 holds x = 1).

    Parameters
    ----------
    alpha
        Constant or per-position acceptance probabilities.
    k
        Draft length.

    Returns
    -------
    numpy.ndarray
        Length k+1, sums to 1.
    """
    a = position_probs(alpha, k)
    surv = np.concatenate(([1.0], np.cumprod(a)))  # P(accepted >= m), m = 0..k
    pmf = surv.copy()
    pmf[:-1] -= surv[1:]
    return pmf


def expected_tokens_per_step(alpha: AlphaLike, k: int) -> float:
    """E[X], tokens emitted per step (accepted + 1).

    For constant alpha this is ``(1 - alpha^(k+1)) / (1 - alpha)`` (``k + 1`` at alpha = 1).
    """
    arr = np.asarray(alpha, dtype=np.float64)
    if arr.ndim == 0:
        al = float(arr)
        if not 0.0 <= al <= 1.0:
            raise ValueError("alpha must lie in [0, 1]")
        if al == 1.0:
            return float(k + 1)
        return (1.0 - al ** (k + 1)) / (1.0 - al)
    a = position_probs(alpha, k)
    return float(1.0 + np.cumprod(a).sum())


def tokens_per_step_var(alpha: AlphaLike, k: int) -> float:
    """Var[X] of tokens per step (from the pmf; THEORY.md's closed form for constant alpha)."""
    pmf = tokens_per_step_pmf(alpha, k)
    x = np.arange(1, k + 2, dtype=np.float64)
    m = float(pmf @ x)
    return float(pmf @ (x * x) - m * m)


def steps_to_finish_moments(
    n_max: int, alpha: AlphaLike, k: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Exact mean and variance of the steps needed to emit n tokens, for every n = 0..n_max.

    Uses ``S(n) = 1 + S(n - X)`` with ``S(m <= 0) = 0``; O(n_max * k).

    Returns
    -------
    mean, var
        Arrays of length n_max + 1.
    """
    pmf = tokens_per_step_pmf(alpha, k)
    m1 = np.zeros(n_max + 1)
    m2 = np.zeros(n_max + 1)
    for n in range(1, n_max + 1):
        prev = np.maximum(n - np.arange(1, k + 2), 0)
        e1 = m1[prev]
        e2 = m2[prev]
        m1[n] = 1.0 + pmf @ e1
        m2[n] = 1.0 + 2.0 * (pmf @ e1) + pmf @ e2
    return m1, np.maximum(m2 - m1 * m1, 0.0)


def steps_to_finish_table(n_max: int, alpha: AlphaLike, k: int) -> npt.NDArray[np.float64]:
    """Exact law of steps to emit n tokens for all n <= n_max.

    Returns
    -------
    numpy.ndarray
        ``T[n, s] = P(S(n) = s)``, shape (n_max + 1, n_max + 1). Memory is quadratic in n_max, so
        keep n_max to a few thousand.
    """
    if n_max > 8192:
        raise ValueError(f"n_max={n_max} too large for the exact table (<= 8192)")
    pmf = np.ascontiguousarray(tokens_per_step_pmf(alpha, k), dtype=np.float64)
    table = np.zeros((n_max + 1, n_max + 1))
    table[0, 0] = 1.0
    _steps_table(table, pmf)
    return table


@jit
def _steps_table(table: npt.NDArray[np.float64], pmf: npt.NDArray[np.float64]) -> None:
    """Fill rows 1.. of ``table`` (row 0 given): ``T[n, s] = sum_x pmf[x-1] T[max(n-x, 0), s-1]``
    (compiled; the same two roundings per term, in the same order, as the numpy row update
    ``row[1:] += p * table[prev, :-1]`` it replaced, so the same floats)."""
    n_max = table.shape[0] - 1
    for n in range(1, n_max + 1):
        for x in range(1, pmf.shape[0] + 1):
            p = pmf[x - 1]
            if p == 0.0:
                continue
            prev = max(n - x, 0)
            # one more step than from `prev` tokens remaining; T[prev, s] is 0 for s > prev
            # (at most one step per token), and adding p * 0 leaves a term unchanged
            for s in range(1, min(prev + 1, n_max) + 1):
                table[n, s] += p * table[prev, s - 1]


def steps_to_finish_pmf(n: int, alpha: AlphaLike, k: int) -> npt.NDArray[np.float64]:
    """Exact pmf of the number of steps to emit n tokens: ``out[s] = P(S(n) = s)``."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return steps_to_finish_table(n, alpha, k)[n]


class AcceptanceSampler:
    """Vectorised sampler of accepted draft tokens, driven by externally supplied uniforms.

    Each draw inverts the truncated-geometric CDF with one uniform, so the same uniform gives a
    (weakly) larger acceptance for a larger alpha: common random numbers across alpha and k.

    Parameters
    ----------
    positions
        Per-position probabilities (length >= any k used) or ``None`` for per-request alpha.
    """

    def __init__(self, positions: npt.NDArray[np.float64] | None = None) -> None:
        self._survival = None if positions is None else np.cumprod(positions)

    def sample(
        self, u: npt.NDArray[np.float64], k: int, alpha: npt.NDArray[np.float64] | None = None
    ) -> npt.NDArray[np.int64]:
        """Accepted draft tokens (0..k) per request.

        Parameters
        ----------
        u
            Uniforms in (0, 1), one per request.
        k
            Draft length this step.
        alpha
            Per-request constant alpha (ignored when per-position probabilities were given).
        """
        if k == 0:
            return np.zeros(u.shape, dtype=np.int64)
        if self._survival is not None:
            # accepted >= m  <=>  u < alpha_1 ... alpha_m ; survival is non-increasing in m
            return np.asarray((u[:, None] < self._survival[None, :k]).sum(axis=1), dtype=np.int64)
        if alpha is None:
            raise ValueError("alpha is required without per-position probabilities")
        # P(accepted >= m) = alpha^m, so accepted = min(floor(log u / log alpha), k).
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.log(u) / np.log(alpha)
        ratio = np.where(alpha >= 1.0, k, np.where(alpha <= 0.0, 0, ratio))
        return np.minimum(np.floor(ratio), k).astype(np.int64)
