"""The compiled kernels of the tail model against plain references: the mixture evaluator and
quantile refinement (sdsim/analytic/mixtures.py) and the life root solve (sdsim/analytic/
lifetime.py).

Fixed inputs from a seeded generator (no randomness in the model); the tolerances are rounding
level: the compiled loops sum component by component (in SIMD lanes) where numpy sums in BLAS's
order.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import optimize, special, stats

from sdsim.analytic.mixtures import Mixture


def _components(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = rng.random(n) * 10.0 ** rng.uniform(-14, 0, n)
    mu = rng.uniform(0.0, 5.0, n)
    sd = 10.0 ** rng.uniform(-6, 0.5, n)  # from far sharper than the spread to wider than it
    return w, mu, sd


def test_normal_sums_match_scipy() -> None:
    w, mu, sd = _components(3_000, 1)
    # a spread of points, points on component means and 10 sd above them (the cut-off)
    xs = np.concatenate((np.linspace(-3.0, 9.0, 41), mu[:20], mu[:20] + 10.0 * sd[:20]))
    law = Mixture.normals(w, mu, sd)
    keep = w > 1e-15
    w, mu, sd = w[keep], mu[keep], sd[keep]
    cdf, pdf = law.cdf_pdf(xs)
    z = (xs[None, :] - mu[:, None]) / sd[:, None]
    # rounding level: ~3,000 terms summed in another order, each within an ulp or two
    tot = w.sum()
    np.testing.assert_allclose(cdf, w @ special.ndtr(z) / tot, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(pdf, w @ (stats.norm.pdf(z) / sd[:, None]) / tot, rtol=1e-12,
                               atol=1e-15 * float(np.max(w / sd)) / tot)
    assert np.array_equal(law.cdf(xs), cdf)


def test_exponnorm_matches_scipy_far_into_its_tails() -> None:
    # lam sd from 0.05 to 400: z - s reaches -400, where log Phi takes its asymptotic series
    rng = np.random.default_rng(7)
    n = 60
    mu = rng.uniform(0.0, 2.0, n)
    sd = 10.0 ** rng.uniform(-3, -0.5, n)
    lam = 10.0 ** rng.uniform(0, 3, n)
    xs = np.concatenate((np.linspace(-1.0, 6.0, 29), mu))
    for i in range(n):
        law = Mixture.normals([1.0], [mu[i]], [sd[i]], [lam[i]])
        cdf, pdf = law.cdf_pdf(xs)
        k = 1.0 / (lam[i] * sd[i])
        np.testing.assert_allclose(cdf, stats.exponnorm.cdf(xs, k, mu[i], sd[i]), rtol=1e-9,
                                   atol=1e-14)
        np.testing.assert_allclose(pdf, stats.exponnorm.pdf(xs, k, mu[i], sd[i]), rtol=1e-8,
                                   atol=1e-12 * lam[i])


def test_quantiles_are_the_roots_of_an_independent_cdf() -> None:
    """The compiled refinement against a plain root finder (Brent's method on scipy's CDFs,
    summed independently): the same roots to the solver's 1e-13 (relative)."""
    probs = [0.001, 0.5, 0.9, 0.99]
    for seed in (2, 5, 6):
        w, mu, sd = _components(800, seed)
        keep = w > 1e-15
        w, mu, sd = w[keep], mu[keep], sd[keep]
        lam = np.where(np.arange(w.shape[0]) % 5 == 0, 3.0, 0.0)  # a fifth exponnorm
        law = Mixture.normals(w, mu, sd, lam)

        def cdf(x: float, w: np.ndarray = w, mu: np.ndarray = mu, sd: np.ndarray = sd,
                lam: np.ndarray = lam) -> float:
            k = 1.0 / (np.where(lam > 0, lam, 1.0) * sd)
            c = np.where(lam > 0, stats.exponnorm.cdf(x, k, mu, sd), stats.norm.cdf(x, mu, sd))
            return float(w @ c / w.sum())

        lo, hi = law.bounds()
        for p, q in zip(probs, law.quantiles(probs), strict=True):
            if q <= lo:  # p below the CDF at the range's floor (0): the floor itself
                assert cdf(lo) >= p - 1e-12
                continue
            want = optimize.brentq(lambda x, p=p: cdf(x) - p, lo, 2 * hi, xtol=1e-15,
                                   rtol=1e-14)
            assert q == pytest.approx(want, rel=3e-12), (seed, p)


def test_uniform_sums_match_numpy() -> None:
    rng = np.random.default_rng(3)
    n = 2_000
    w = rng.random(n)
    lo = rng.uniform(0.0, 1.0, n)
    ln = np.where(rng.random(n) < 0.1, 0.0, rng.uniform(0.0, 0.5, n))  # 10% point masses
    # points on breakpoints too (both ends of ramps, point masses)
    xs = np.concatenate((np.linspace(-0.1, 1.6, 53), lo[:10], lo[:10] + ln[:10]))
    law = Mixture.uniforms(w, lo, ln)
    cdf, pdf = law.cdf_pdf(xs)
    ramp = ln > 0
    safe = np.where(ramp, ln, 1.0)
    u = np.where(ramp[:, None], np.clip((xs[None, :] - lo[:, None]) / safe[:, None], 0.0, 1.0),
                 (xs[None, :] >= lo[:, None]).astype(float))
    on = ramp[:, None] & (xs[None, :] >= lo[:, None]) & (xs[None, :] < (lo + ln)[:, None])
    np.testing.assert_allclose(cdf, w @ u / w.sum(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(pdf, (w / safe) @ on / w.sum(), rtol=1e-12, atol=1e-12)
    # pooled with an exponnorm part (a waiting arrival's TTFT): quantiles solve the pooled CDF
    wait = Mixture.normals([0.3], [0.4], [0.01], [5.0])
    both = Mixture.uniforms(w * 0.7 / w.sum(), lo, ln).plus(wait)
    q = both.quantiles([0.5, 0.9, 0.99])
    np.testing.assert_allclose(both.cdf(np.array(q)), [0.5, 0.9, 0.99], rtol=0, atol=1e-12)


# --- the tail model's life root solve (sdsim/analytic/lifetime.py) ---


def test_interp_knot_reproduces_np_interp() -> None:
    from sdsim.analytic.lifetime import _interp_knot, _knot, _slopes

    rng = np.random.default_rng(4)
    xp = np.linspace(0.0, 37.0, 75)  # the smoothed curve's half-batch grid
    fp = np.cumsum(rng.random(75))
    sl = np.stack([_slopes(xp, fp)])
    inv_h = (xp.shape[0] - 1) / (xp[-1] - xp[0])
    # inside, on every knot, just off knots, and past both ends
    xs = np.concatenate((rng.uniform(-1.0, 38.0, 500), xp, np.nextafter(xp, 99.0),
                         np.nextafter(xp, -99.0)))
    got = np.array([_interp_knot(x, _knot(x, xp, inv_h), xp, fp, sl, 0) for x in xs])
    assert np.array_equal(got, np.interp(xs, xp, fp))  # bit for bit


def _plain_root(curve: object, lam: float, sf: float, e: float, s1: float, cm: float, P: int,
                q_full: float, cap: float) -> tuple[float, bool]:
    """The life's mean batch in plain Python: bisection on the excess, read with np.interp."""

    def excess(x: float) -> float:
        a, b, cp = (float(v[0]) for v in curve(np.array([x])))  # type: ignore[operator]
        step = a + b * (x + 1.0)
        base = max(e * step - P * b + cp, 0.0)
        t = min(base / max(1.0 - lam * cp * s1 / e, 1e-12), base + cp * s1 * q_full)
        return (sf + lam * t / e * cm) / e - x

    lo, hi = min(sf / e, cap), cap
    if excess(hi) >= 0.0:
        return hi, True
    if not excess(lo) > 0.0:
        return lo, False
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if excess(mid) >= 0.0:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi), False


def test_life_roots_compiled_equal_a_plain_evaluation() -> None:
    """The compiled Illinois root solve against plain bisection, on the cells predict solves
    for default.yaml (two rates and draft lengths): the same roots to the solver's 1e-9."""
    from pathlib import Path

    import sdsim
    import sdsim.analytic.tails as tails

    calls: list[tuple[object, ...]] = []
    orig = tails.life_on_curve

    def spy(*args: object) -> object:
        calls.append(args)
        return orig(*args)  # type: ignore[arg-type]

    root = Path(__file__).resolve().parents[1]
    scn = sdsim.load_scenario(root / "scenarios/default.yaml")
    tails.life_on_curve = spy  # type: ignore[assignment]
    try:
        for over in ({"workload.rate": 10.0}, {"workload.rate": 30.0, "spec.k": 2}):
            sdsim.predict(scn.with_overrides(over))
    finally:
        tails.life_on_curve = orig  # type: ignore[assignment]
    assert len(calls) == 2
    rng = np.random.default_rng(8)
    for args in calls:
        curve, lam, sf, cm, _, ell, si, P, cap, q_full = args
        life = orig(*args)  # type: ignore[arg-type]
        n = np.asarray(sf).size
        for i in rng.choice(n, size=60, replace=False):
            e = float(max(np.asarray(ell).ravel()[i], 1))
            x, capped = _plain_root(curve, float(np.asarray(lam).ravel()[i]),
                                    float(np.asarray(sf).ravel()[i]), e,
                                    float(np.asarray(si).ravel()[i]) + 1.0,
                                    float(np.asarray(cm).ravel()[i]), int(P),  # type: ignore[call-overload]
                                    float(q_full), float(cap))  # type: ignore[arg-type]
            assert bool(life.capped.ravel()[i]) == capped
            assert life.batch.ravel()[i] == pytest.approx(x, rel=1e-8, abs=1e-8)
