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


def test_interp_at_is_numpy_interp_bit_for_bit() -> None:
    from sdsim.analytic.coefficients import _interp_at

    rng = np.random.default_rng(7)  # any seed: the check is exact equality
    fp = np.cumsum(rng.uniform(-1.0, 2.0, size=257))
    xs = np.concatenate([rng.uniform(0.0, 256.0, size=2000), np.arange(257.0), [255.999999]])
    want = np.interp(xs, np.arange(257.0), fp)
    got = np.array([_interp_at(fp, float(x)) for x in xs])
    assert np.array_equal(got, want)


def test_tangent_kernel_matches_the_numpy_reading() -> None:
    """The compiled weighted means and line error equal numpy's to rounding (1e-12 relative:
    sums of a few hundred positive terms in another order)."""
    from sdsim.analytic.coefficients import _tangent

    rng = np.random.default_rng(11)  # any seed
    n = 257
    curves = [np.cumsum(rng.uniform(0.001, 0.01, size=n)) for _ in range(6)]
    verify, draft, gv, gd, cost, decode = curves
    x = np.clip(np.sort(rng.uniform(0.5, 300.0, size=120)), 1.0, 256.0)
    w = rng.uniform(0.0, 1.0, size=120)
    w /= w.sum()
    got = _tangent(x, w, verify, draft, gv, gd, cost, decode, 0.004)
    grid = np.arange(n, dtype=np.float64)
    n_op = float(w @ x)
    e_v, e_d = float(w @ np.interp(x, grid, verify)), float(w @ np.interp(x, grid, draft))
    s_v, s_d = float(w @ np.interp(x, grid, gv)), float(w @ np.interp(x, grid, gd))
    a = 0.004 + (e_v - s_v * n_op) + (e_d - s_d * n_op)
    b = s_v + s_d
    cum = np.cumsum(w)
    lo = x[min(int(np.searchsorted(cum, 0.01)), x.shape[0] - 1)]
    hi = x[min(int(np.searchsorted(cum, 0.99)), x.shape[0] - 1)]
    span = np.arange(int(np.floor(lo)), int(np.ceil(hi)) + 1)
    span = span[(span >= 1) & (span <= n - 1)]
    err = float(np.max(np.abs(a + b * span - decode[span]) / decode[span]))
    cp = float(w @ np.interp(x, grid, cost))
    np.testing.assert_allclose(got, (n_op, e_v, e_d, s_v, s_d, a, b, err, cp), rtol=1e-12)


def _numpy_birth_death(rate: float, nu: float, t: np.ndarray) -> np.ndarray:
    """The stationary law as it was computed with numpy before the core was compiled."""
    n = np.arange(1, t.shape[0] + 1, dtype=np.float64)
    ratio = rate * nu * t / n
    top = float(ratio[-1])
    logp = np.concatenate(([0.0], np.cumsum(np.log(ratio))))
    extra = int(min(200_000, np.ceil(np.log(1e-12) / np.log(top)) + 1))
    logp = np.concatenate((logp, logp[-1] + np.log(top) * np.arange(1, extra + 1)))
    p = np.exp(logp - logp.max())
    p /= p.sum()
    cum = np.cumsum(p[::-1])[::-1]
    p = p[: int(np.nonzero(cum > 1e-12)[0][-1]) + 1]
    return np.asarray(p / p.sum())


@pytest.mark.parametrize(("rate", "n_max"), [(5.0, 256), (30.0, 256), (18.0, 64), (0.2, 8)])
def test_birth_death_core_matches_numpy(rate: float, n_max: int) -> None:
    from sdsim.analytic.gps import birth_death

    # a concave step curve (memory-bound then compute-bound), 1e-12 relative per probability:
    # a few hundred log/exp/sums in another order (the cut index itself must agree exactly)
    def t(n: np.ndarray) -> np.ndarray:
        return np.asarray(0.012 + 0.0004 * n + 0.004 * np.sqrt(n))

    law = birth_death(rate, 180.0 / 4.0, t, n_max)
    assert law.stable  # (30 req/s at 256 and 18 at 64: top ratios 0.94 and 0.88, long tails)
    want = _numpy_birth_death(rate, 180.0 / 4.0, t(np.arange(1, n_max + 1, dtype=np.float64)))
    assert law.pmf.shape == want.shape
    np.testing.assert_allclose(law.pmf, want, rtol=1e-12, atol=1e-300)
