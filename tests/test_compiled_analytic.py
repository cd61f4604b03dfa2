"""The compiled (numba) kernels of the analytic model compute what they replaced.

* ``acceptance.steps_to_finish_table``: the compiled DP gives the numpy row-update DP's floats
  exactly (the same two roundings per term, in the same order);
* the prefill-chunk chain (GTH state reduction, :mod:`sdsim.analytic.chunkchain`) gives the
  stationary law of the truncated chain to rounding: checked against scipy's Poisson pmf and
  survival function, a dense solve and iterative refinement (independent of GTH), including
  the extremes (a zero rate, a mean so large that ``exp(-mu)`` underflows).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import special

from sdsim.acceptance import steps_to_finish_table, tokens_per_step_pmf
from sdsim.analytic.chunkchain import chain_rows


def _numpy_table(n_max: int, alpha: float | list[float], k: int) -> np.ndarray:
    """The DP as it was written with numpy row updates (before it was compiled)."""
    pmf = tokens_per_step_pmf(alpha, k)
    table = np.zeros((n_max + 1, n_max + 1))
    table[0, 0] = 1.0
    for n in range(1, n_max + 1):
        row = table[n]
        for x in range(1, k + 2):
            p = pmf[x - 1]
            if p == 0.0:
                continue
            row[1:] += p * table[max(n - x, 0), :-1]
    return table


@pytest.mark.parametrize(
    ("n_max", "alpha", "k"),
    [
        (255, 0.7, 4),
        (300, 0.5, 10),
        (120, [0.9, 0.8, 0.3], 3),
        (60, 1.0, 2),
        (40, 0.0, 3),
        (0, 0.5, 2),
        (5, 0.5, 0),
        (400, 0.95, 7),
    ],
)
def test_steps_table_is_the_numpy_dp_bit_for_bit(
    n_max: int, alpha: float | list[float], k: int
) -> None:
    assert np.array_equal(steps_to_finish_table(n_max, alpha, k), _numpy_table(n_max, alpha, k))


def _reference(mu: np.ndarray) -> np.ndarray:
    """Stationary law of ``q -> Poisson(mu[q])`` on ``len(mu)`` states, the last lumping the
    tail: scipy's Poisson pmf/sf, one dense solve, then iterative refinement of the residual."""
    nq = mu.shape[0]
    j = np.arange(nq - 1, dtype=np.float64)
    p = np.empty((nq, nq))
    lmu = special.xlogy(j[None, :], mu[:, None])
    p[:, :-1] = np.exp(lmu - special.gammaln(j + 1.0) - mu[:, None])
    p[:, -1] = special.pdtrc(nq - 2.0, mu)  # P(X > nq - 2) = P(X >= nq - 1)
    a = p.T - np.eye(nq)
    a[-1, :] = 1.0
    rhs = np.zeros(nq)
    rhs[-1] = 1.0
    x = np.linalg.solve(a, rhs)
    for _ in range(3):
        x += np.linalg.solve(a, rhs - a @ x)
    return np.asarray(x / x.sum())


@pytest.mark.parametrize("size", [8, 16, 33])
@pytest.mark.parametrize(("a", "b"), [(0.05, 0.05), (0.5, 0.3), (2.0, 0.5), (4.0, 0.8)])
def test_chain_matches_a_refined_dense_solve(size: int, a: float, b: float) -> None:
    mu = a + b * np.arange(size, dtype=np.float64)
    mixed = mu[None, :] / 3.0  # chunk rate 3 per second
    pq, t = chain_rows(mixed, np.array([3.0]), (), 1e-15, 1e-6)
    ref = _reference(mu)
    # 1e-13 absolute on a probability vector summing to 1: rounding of ~size^2 operations
    np.testing.assert_allclose(pq[0], ref, rtol=0, atol=1e-13)
    assert pq[0].min() >= 0.0 and abs(pq[0].sum() - 1.0) < 1e-14
    assert t[0] == pytest.approx(float(ref @ mixed[0]), rel=1e-13)


def test_chain_extremes() -> None:
    mixed = np.vstack([np.linspace(1.0, 2.0, 33), np.full(33, 0.01), np.linspace(300.0, 900.0, 33)])
    pq, t = chain_rows(mixed, np.array([0.0, 1.0, 1.0]), (8, 16), 1e-15, 1e-6)
    # a zero rate: no chunk ever
    assert pq[0, 0] == 1.0 and pq[0, 1:].sum() == 0.0 and t[0] == mixed[0, 0]
    # mu = 0.01: the 8-state chain passes (mass at 7 far below 1e-15), the rest is zero
    assert np.count_nonzero(pq[1]) <= 8
    # (the dense reference is good to ~1e-17 absolute; GTH keeps the tiny top mass relative:
    # it is ~ P(X >= 7) = 0.01^7 / 7! nearly exactly, as the chain almost always sits at 0)
    np.testing.assert_allclose(pq[1, :8], _reference(mixed[1, :8]), rtol=1e-12, atol=1e-16)
    assert pq[1, 7] == pytest.approx(0.01**7 / 5040, rel=1e-2)
    # exp(-mu) underflows (mu 300..900): all mass in the top state, finite, no NaN
    assert np.isfinite(pq[2]).all() and pq[2, -1] == pytest.approx(1.0, abs=1e-12)


def test_rows_are_independent_of_the_batch() -> None:
    rng = np.random.default_rng(20261129)  # any seed: the check is exact equality
    mixed = np.cumsum(rng.uniform(0.01, 0.05, size=(40, 33)), axis=1)
    rates = rng.uniform(0.0, 30.0, size=40)
    pq, t = chain_rows(mixed, rates, (8, 12, 16, 20, 24, 28), 1e-15, 1e-6)
    for r in (0, 7, 39):
        pq1, t1 = chain_rows(mixed[[r]], rates[[r]], (8, 12, 16, 20, 24, 28), 1e-15, 1e-6)
        assert t1[0] == t[r] and np.array_equal(pq1[0], pq[r])
