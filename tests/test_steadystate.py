"""Steady-state methodology (sdsim/steadystate.py): MSER-5 truncation, batched CIs, coverage."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sdsim.steadystate import (
    Sequential,
    log_t_interval,
    mean_estimate,
    mser_truncation,
    quantile_estimate,
    run_sequential,
    wilson_interval,
)
from tests.test_analytic import small


def _ar1_series(n: int, tau: float, seed: int, amp: float = 1.5) -> np.ndarray:
    """exp(mu_t + e_t): a log-level transient ``amp exp(-t / tau)`` over AR(1) noise (phi 0.5,
    stationary sd 0.2)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 0.2 * math.sqrt(1 - 0.25), n)
    e = np.zeros(n)
    for i in range(1, n):
        e[i] = 0.5 * e[i - 1] + z[i]
    t = np.arange(n)
    return np.exp(amp * np.exp(-t / tau) + e)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mser_cuts_a_known_transient(seed: int) -> None:
    # Transient 1.5 exp(-t/300) on the log scale over noise of sd 0.2: the bias left after a
    # cut at d is 1.5 * 300 * exp(-d/300) / (n - d) on the log-mean, whose standard error is
    # 0.2 * sqrt(3) / sqrt(n - d) (AR(1) with phi 0.5). MSER balances the two: the cut must
    # leave a bias within two standard errors and not delete more than 10x the time constant.
    n = 20_000
    x = _ar1_series(n, 300.0, seed)
    t = mser_truncation(x)
    assert t.settled and t.total == n
    assert 300 <= t.deleted <= 3000
    bias = 1.5 * 300 * math.exp(-t.deleted / 300) / (n - t.deleted)
    se = 0.2 * math.sqrt(3.0) / math.sqrt(n - t.deleted)
    assert bias < 2 * se
    # the same noise without a transient: (almost) nothing is cut
    assert mser_truncation(_ar1_series(n, 300.0, seed, amp=0.0)).deleted <= 50


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_mser_flags_a_run_shorter_than_its_transient(seed: int) -> None:
    # a transient as long as the run (amplitude 3 on the log scale, time constant = n): the cut
    # lands near half the run (seen: 46-50%), so the run is marked too short
    t = mser_truncation(_ar1_series(1000, 1000.0, seed, amp=3.0))
    assert not t.settled and 400 < t.deleted <= 500


def _mm1_sojourns(n: int, lam: float, rng: np.random.Generator) -> np.ndarray:
    """FCFS M/M/1 (service rate 1) sojourn times of n customers from empty (Lindley)."""
    a = rng.exponential(1 / lam, n)
    s = rng.exponential(1.0, n)
    walk = np.concatenate(([0.0], np.cumsum(s[:-1] - a[1:])))
    return walk - np.minimum.accumulate(walk) + s


def test_ci_coverage_on_mm1_p99_and_mean() -> None:
    # M/M/1 at rho = 0.7: the sojourn time is exponential with rate 1 - rho, so its p99 is
    # ln(100) / 0.3 and its mean 1 / 0.3. 300 experiments of 2 replications x 10,000 customers
    # from empty (seed 1), MSER-cut and batched: the nominal 95% intervals must cover the known
    # answer in >= 90% of them (seen: p99 0.92, mean 0.95; the binomial sd of a coverage of 0.93
    # over 300 experiments is 1.5%). An M/M/1 p99 is a hard case for batching: its exceedances
    # come in clusters (busy periods).
    rng = np.random.default_rng(1)
    lam, n, exps = 0.7, 10_000, 300
    p99, mean = math.log(100) / (1 - lam), 1 / (1 - lam)
    hit99 = hitm = 0
    for _ in range(exps):
        segs = []
        for _ in range(2):
            x = _mm1_sojourns(n, lam, rng)
            segs.append(x[mser_truncation(x).deleted :])
        q = quantile_estimate(segs, 0.99)
        m = mean_estimate(segs)
        hit99 += q.low <= p99 <= q.high
        hitm += m.low <= mean <= m.high
    assert hit99 / exps >= 0.90
    assert hitm / exps >= 0.90


def test_intervals_respect_the_range() -> None:
    rng = np.random.default_rng(3)
    # a positive, strongly skewed sample whose t-interval of the p99 would reach below 0
    segs = [rng.lognormal(-3.0, 2.0, 1500) for _ in range(2)]
    q = quantile_estimate(segs, 0.99)
    pooled = np.concatenate(segs)
    assert q.value == float(np.quantile(pooled, 0.99))
    assert pooled.min() <= q.low <= q.value <= q.high <= pooled.max()
    m = mean_estimate(segs)
    assert 0 < m.low <= m.value <= m.high
    # a positive estimate with a huge standard error stays positive on the log scale
    lo, hi = log_t_interval(0.5, 3.0, 1)
    assert 0 < lo < 0.5 < hi
    assert wilson_interval(1, 2) == pytest.approx((0.0945, 0.9055), abs=1e-3)
    for k in range(4):
        lo, hi = wilson_interval(k, 3)
        assert 0.0 <= lo <= k / 3 <= hi <= 1.0


def test_sequential_runs_until_the_target_or_the_budget() -> None:
    scn = small(**{"workload.rate": 40.0})
    easy = Sequential(scn.to_dict(), 7, target=0.5, initial=1500, max_requests=6000, reps=2)
    hard = Sequential(scn.to_dict(), 7, target=1e-4, initial=400, max_requests=2000, reps=2)
    run_sequential([easy, hard], jobs=1)
    assert easy.result is not None and hard.result is not None
    # a loose target is met by the first stage (a p99 interval needs 2+ batches of 500)
    assert easy.result.target_met and easy.result.lengths == [1500, 1500]
    assert easy.result.seeds == [7, 8]
    # an unreachable one extends with new seeds until the budget is spent, and says so (800
    # requests make no p99 interval yet: the next stage doubles the length)
    assert not hard.result.target_met
    assert hard.result.requests <= 2000 and len(hard.result.lengths) > 2
    assert hard.result.seeds == list(range(7, 7 + len(hard.result.lengths)))
