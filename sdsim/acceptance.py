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

From measurements back to the model (what ``sdsim acceptance fit`` does):

* the **acceptance length** ``E[X]`` at draft length k (vLLM's "mean acceptance length", EAGLE's
  tau) gives one constant alpha: :func:`alpha_for_length`;
* acceptance lengths at several k give per-position ``alpha_j``: :func:`fit_positions`;
* vLLM's **per-position acceptance rates** ("acceptance at token j": drafts whose position j was
  accepted, over all drafts) are the survival ``alpha_1 ... alpha_j``:
  :func:`alphas_from_position_rates`; EAGLE's "n-alpha" is already the conditional ``alpha_j``;
* the **draft acceptance rate** (accepted over drafted tokens, vLLM's "draft acceptance rate",
  the simulation summary's ``draft_acceptance_rate``) is ``(E[X] - 1) / k``, a measured quantity
  that falls with k even when alpha does not: :func:`draft_acceptance_rate`. It is not alpha.
"""

from __future__ import annotations

__all__ = [
    "AcceptanceSampler",
    "alpha_for_length",
    "alphas_from_position_rates",
    "draft_acceptance_rate",
    "expected_tokens_per_step",
    "fit_positions",
    "position_probs",
    "position_rates",
    "steps_to_finish_moments",
    "steps_to_finish_pmf",
    "steps_to_finish_table",
    "tokens_per_step_pmf",
    "tokens_per_step_var",
]

import itertools
import math
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


def draft_acceptance_rate(alpha: AlphaLike, k: int) -> float:
    """Accepted over drafted tokens, ``(E[X] - 1) / k``: what a server measures and reports as its
    acceptance rate (NaN at k = 0). For a constant alpha it is below alpha for every k > 1."""
    return (expected_tokens_per_step(alpha, k) - 1.0) / k if k > 0 else math.nan


def position_rates(alpha: AlphaLike, k: int) -> npt.NDArray[np.float64]:
    """``P(draft position j accepted)`` for j = 1..k: ``alpha_1 ... alpha_j`` (vLLM's
    per-position acceptance rates)."""
    return np.asarray(np.cumprod(position_probs(alpha, k)), dtype=np.float64)


def alpha_for_length(length: float, k: int) -> float:
    """The constant alpha whose acceptance length at draft length ``k`` is ``length``.

    Solves ``(1 - alpha^(k+1)) / (1 - alpha) = length`` (increasing in alpha) by bisection to
    1e-12.

    Raises
    ------
    ValueError
        ``k < 1`` or ``length`` outside ``[1, k + 1]``.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1 to fit alpha, got {k}")
    if not 1.0 <= length <= k + 1:
        raise ValueError(f"acceptance length must lie in [1, k+1] = [1, {k + 1}], got {length}")
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if expected_tokens_per_step(mid, k) < length:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def alphas_from_position_rates(rates: Sequence[float]) -> list[float]:
    """Per-position alpha from per-position acceptance rates ``r_j = alpha_1 ... alpha_j``.

    ``alpha_1 = r_1``, ``alpha_j = r_j / r_(j-1)`` (1 where ``r_(j-1)`` is 0).

    Raises
    ------
    ValueError
        Rates outside [0, 1] or increasing with j (a draft cannot be accepted at position j more
        often than at j - 1; rates rounded to two digits may tie, which is allowed).
    """
    r = [float(x) for x in rates]
    if not r:
        raise ValueError("no per-position rates given")
    if any(not 0.0 <= x <= 1.0 for x in r):
        raise ValueError("per-position rates must lie in [0, 1]")
    if any(b > a + 1e-12 for a, b in itertools.pairwise(r)):
        raise ValueError(f"per-position rates must not increase with the position, got {r}")
    out = [r[0]]
    for prev, cur in itertools.pairwise(r):
        out.append(cur / prev if prev > 0 else 1.0)
    return out


def fit_positions(lengths: dict[int, float], smoothness: float = 0.05) -> list[float]:
    """Per-position alpha (positions 1..max k) from acceptance lengths measured at several k.

    Least squares on the relative errors of ``E[X](alpha, k)`` against each measured length,
    with ``alpha_j`` in [0, 1] and a weak penalty ``smoothness * (alpha_(j+1) - alpha_j)`` that
    settles what the lengths leave open (positions 1 and 2 when the smallest k measured is 2) and
    damps the noise of lengths rounded to two digits. With one k it returns the constant alpha of
    :func:`alpha_for_length` at every position.

    Parameters
    ----------
    lengths
        Draft length k -> measured acceptance length (tokens per step).
    smoothness
        Weight of the penalty on neighbouring differences.

    Returns
    -------
    list of float
        ``alpha_1 .. alpha_K``, K the largest k measured.
    """
    if not lengths:
        raise ValueError("no acceptance lengths given")
    for k, length in lengths.items():
        if k < 1 or not 1.0 <= length <= k + 1:
            raise ValueError(f"acceptance length at k={k} must lie in [1, {k + 1}], got {length}")
    kmax = max(lengths)
    if len(lengths) == 1:
        return [alpha_for_length(lengths[kmax], kmax)] * kmax
    from scipy.optimize import least_squares  # only fitting needs it

    ks = sorted(lengths)
    target = np.array([lengths[k] for k in ks])

    def residuals(a: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        surv = np.cumprod(a)
        model = np.array([1.0 + surv[:k].sum() for k in ks])
        return np.concatenate(((model - target) / target, smoothness * np.diff(a)))

    x0 = np.full(kmax, alpha_for_length(lengths[kmax], kmax))
    res = least_squares(residuals, x0, bounds=(0.0, 1.0), xtol=1e-12, ftol=1e-12, gtol=1e-12)
    return [float(v) for v in res.x]


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
