"""Acceptance maths against brute force, and the sampler against the pmf."""

from __future__ import annotations

import itertools
from functools import cache

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sdsim.acceptance import (
    AcceptanceSampler,
    expected_tokens_per_step,
    steps_to_finish_moments,
    steps_to_finish_pmf,
    tokens_per_step_pmf,
    tokens_per_step_var,
)


def brute_pmf(alphas: list[float], k: int) -> np.ndarray:
    """Enumerate all 2^k accept/reject patterns; verification stops at the first rejection."""
    pmf = np.zeros(k + 1)
    for pattern in itertools.product([0, 1], repeat=k):
        p = 1.0
        for j, acc in enumerate(pattern):
            p *= alphas[j] if acc else 1 - alphas[j]
        accepted = next((j for j, a in enumerate(pattern) if not a), k)
        pmf[accepted] += p  # X = accepted + 1 -> index accepted
    return pmf


@given(
    k=st.integers(0, 7),
    alphas=st.lists(st.floats(0, 1), min_size=8, max_size=8),
)
@settings(max_examples=60, deadline=None)
def test_pmf_matches_enumeration_per_position(k: int, alphas: list[float]) -> None:
    got = tokens_per_step_pmf(alphas, k)
    np.testing.assert_allclose(got, brute_pmf(alphas, k), atol=1e-12)
    assert got.sum() == pytest.approx(1.0)


@given(k=st.integers(0, 10), alpha=st.floats(0, 1))
@settings(max_examples=80, deadline=None)
def test_mean_and_variance_closed_forms(k: int, alpha: float) -> None:
    pmf = brute_pmf([alpha] * max(k, 1), k)
    x = np.arange(1, k + 2)
    mean = float(pmf @ x)
    var = float(pmf @ x**2 - mean**2)
    assert expected_tokens_per_step(alpha, k) == pytest.approx(mean, abs=1e-10)
    assert tokens_per_step_var(alpha, k) == pytest.approx(var, abs=1e-9)
    if alpha < 0.999:
        # THEORY.md's closed form of the variance
        closed = (alpha - (2 * k + 1) * (1 - alpha) * alpha ** (k + 1) - alpha ** (2 * k + 2)) / (
            1 - alpha
        ) ** 2
        assert closed == pytest.approx(var, abs=1e-7)


def test_mean_limits() -> None:
    assert expected_tokens_per_step(1.0, 4) == 5.0
    assert expected_tokens_per_step(0.0, 4) == 1.0
    assert expected_tokens_per_step(0.7, 0) == 1.0
    assert expected_tokens_per_step(0.7, 4) == pytest.approx((1 - 0.7**5) / 0.3)


def brute_steps(n: int, alpha: float, k: int) -> dict[int, float]:
    """Exact steps-to-finish law by recursion over tokens remaining (independent of the DP)."""
    pmf = brute_pmf([alpha] * max(k, 1), k)

    @cache
    def law(r: int) -> tuple[tuple[int, float], ...]:
        if r <= 0:
            return ((0, 1.0),)
        acc: dict[int, float] = {}
        for x in range(1, k + 2):
            for s, p in law(r - x):
                acc[s + 1] = acc.get(s + 1, 0.0) + pmf[x - 1] * p
        return tuple(sorted(acc.items()))

    return dict(law(n))


@pytest.mark.parametrize(
    ("n", "alpha", "k"), [(1, 0.5, 3), (7, 0.7, 4), (12, 0.3, 2), (10, 0.9, 5)]
)
def test_steps_to_finish_exact(n: int, alpha: float, k: int) -> None:
    got = steps_to_finish_pmf(n, alpha, k)
    ref = brute_steps(n, alpha, k)
    for s, p in ref.items():
        assert got[s] == pytest.approx(p, abs=1e-12)
    assert got.sum() == pytest.approx(1.0)
    mean, var = steps_to_finish_moments(n, alpha, k)
    s = np.arange(got.shape[0])
    assert mean[n] == pytest.approx(float(got @ s))
    assert var[n] == pytest.approx(float(got @ s**2 - (got @ s) ** 2), abs=1e-9)


def test_steps_mean_matches_renewal_overshoot() -> None:
    # Wald's identity with the lattice overshoot E[X(X-1)] / (2 E[X]) gives the exact mean for
    # large n; the DP must reproduce it (an independent check of the end effect). Note: the end
    # effect is ~0.5% at g = 256, k = 4, alpha = 0.7, not the 2-3% THEORY.md quotes.
    mu = expected_tokens_per_step(0.7, 4)
    ex2 = tokens_per_step_var(0.7, 4) + mu * mu
    mean, _ = steps_to_finish_moments(256, 0.7, 4)
    assert mean[256] == pytest.approx((256 + (ex2 - mu) / (2 * mu)) / mu, rel=1e-9)
    assert mean[256] > 256 / mu


def test_alpha_extremes_steps() -> None:
    assert steps_to_finish_pmf(10, 1.0, 4)[2] == pytest.approx(1.0)  # ceil(10 / 5) = 2
    mean, var = steps_to_finish_moments(10, 1.0, 4)
    assert mean[10] == 2.0 and var[10] == 0.0
    mean0, _ = steps_to_finish_moments(10, 0.0, 4)
    assert mean0[10] == 10.0


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.7, 0.95, 1.0])
def test_sampler_matches_pmf(alpha: float) -> None:
    # 200k draws; the frequencies' standard error is < 0.0012, so 0.005 is > 4 sigma (seeded).
    rng = np.random.default_rng(7)
    u = rng.random(200_000)
    u = np.clip(u, 1e-300, None)
    k = 4
    acc = AcceptanceSampler().sample(u, k, np.full(u.shape, alpha))
    freq = np.bincount(acc, minlength=k + 1) / u.size
    np.testing.assert_allclose(freq, tokens_per_step_pmf(alpha, k), atol=0.005)


def test_sampler_per_position() -> None:
    rng = np.random.default_rng(8)
    pos = np.array([0.9, 0.6, 0.5, 0.3])
    u = rng.random(200_000)
    acc = AcceptanceSampler(pos).sample(u, 4)
    freq = np.bincount(acc, minlength=5) / u.size
    np.testing.assert_allclose(freq, tokens_per_step_pmf(pos, 4), atol=0.005)


def test_sampler_monotone_in_alpha() -> None:
    u = np.random.default_rng(3).random(10_000)
    s = AcceptanceSampler()
    lo = s.sample(u, 5, np.full(u.shape, 0.5))
    hi = s.sample(u, 5, np.full(u.shape, 0.8))
    assert np.all(hi >= lo)
