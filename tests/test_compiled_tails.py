"""The compiled kernels of the tail model against numpy references: the mixture sums and the
normal mixture's quantile refinement (sdsim/analytic/mixtures.py) and the life root solve
(sdsim/analytic/tails.py).

Fixed inputs from a seeded generator (no randomness in the model); the tolerances are rounding
level: the compiled loops sum component by component where numpy sums in BLAS's order.
"""

from __future__ import annotations

import numpy as np
from scipy import special, stats

from sdsim.analytic.mixtures import (
    NormalMixture,
    UniformExpMixture,
    _normal_sums,
    _uniform_sums,
    solve_quantiles,
)


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
    cdf = np.zeros(xs.shape[0])
    pdf = np.zeros(xs.shape[0])
    _normal_sums(xs, w, mu, sd, True, cdf, pdf)
    z = (xs[None, :] - mu[:, None]) / sd[:, None]
    # rounding level: ~3,000 terms summed in another order, each within an ulp or two
    tot = w.sum()
    np.testing.assert_allclose(cdf, w @ special.ndtr(z), rtol=1e-13, atol=1e-15 * tot)
    np.testing.assert_allclose(pdf, w @ (stats.norm.pdf(z) / sd[:, None]), rtol=1e-12,
                               atol=1e-15 * float(np.max(w / sd)))  # fmt: skip
    cdf2 = np.zeros(xs.shape[0])
    pdf2 = np.zeros(xs.shape[0])
    _normal_sums(xs, w, mu, sd, False, cdf2, pdf2)
    assert np.array_equal(cdf2, cdf) and not pdf2.any()


def test_normal_refine_finds_the_numpy_iteration_roots() -> None:
    """The compiled refinement (Halley steps) finds the numpy Newton loop's roots, to their
    1e-13 tolerance (another path to the same root, and CDF sums that differ in the last
    bits)."""
    probs = [0.001, 0.5, 0.9, 0.99, 0.999999]
    for seed in (2, 5, 6):
        w, mu, sd = _components(800, seed)
        law = NormalMixture(w, mu, sd)
        lo, hi = law.bounds()
        fast = law.quantiles(probs)
        slow = solve_quantiles(law.cdf_pdf, lo, hi, probs, cdf=law._cdf_only)
        # (0.999999 sits where the CDF is flat to ~1e-12 over 1e-11 relative of x: the
        # solver stops on |F - p| <= 1e-15 there, which pins x only that far; the F check
        # below covers it)
        np.testing.assert_allclose(fast[:-1], slow[:-1], rtol=3e-13, atol=0)
        # a root inside the table's range solves F = p to the solver's 1e-13 (relative, in x):
        # p lies between F just below and just above it (scipy's CDF, summed independently;
        # 0.001 may sit at the range's floor, 0, where F(0) >= p already)
        q = np.array(fast)
        inside = q > lo

        def cdf(x: np.ndarray, w: np.ndarray = w, mu: np.ndarray = mu, sd: np.ndarray = sd
                ) -> np.ndarray:  # fmt: skip
            c = stats.norm.cdf(x[None, :], loc=mu[:, None], scale=sd[:, None])
            return np.asarray(w @ c / w.sum())

        pin = np.array(probs)[inside]
        # (1e-14 in F: 800 terms summed in another order than the solver's)
        assert (cdf(q[inside] * (1 - 3e-13)) <= pin + 1e-14).all()
        assert (cdf(q[inside] * (1 + 3e-13)) >= pin - 1e-14).all()
        assert inside[1:].all()


def test_uniform_sums_match_numpy() -> None:
    rng = np.random.default_rng(3)
    n = 2_000
    w = rng.random(n)
    lo = rng.uniform(0.0, 1.0, n)
    ln = np.where(rng.random(n) < 0.1, 0.0, rng.uniform(0.0, 0.5, n))  # 10% point masses
    # points on breakpoints too (both ends of ramps, point masses)
    xs = np.concatenate((np.linspace(-0.1, 1.6, 53), lo[:10], lo[:10] + ln[:10]))
    ramp = ln > 0
    out = np.empty((2, xs.shape[0]))
    _uniform_sums(xs, w[ramp], lo[ramp], lo[ramp] + ln[ramp], w[ramp] / ln[ramp], w[~ramp],
                  lo[~ramp], out)  # fmt: skip
    cdf, pdf = out
    safe = np.where(ramp, ln, 1.0)
    u = np.where(ramp[:, None], np.clip((xs[None, :] - lo[:, None]) / safe[:, None], 0.0, 1.0),
                 (xs[None, :] >= lo[:, None]).astype(float))  # fmt: skip
    on = ramp[:, None] & (xs[None, :] >= lo[:, None]) & (xs[None, :] < (lo + ln)[:, None])
    np.testing.assert_allclose(cdf, w @ u, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(pdf, (w / safe) @ on, rtol=1e-12, atol=1e-12)
    law = UniformExpMixture(w, lo, ln, 0.7, 0.3, 0.4, 0.2)
    q = law.quantiles([0.5, 0.9, 0.99])
    np.testing.assert_allclose(law.cdf(np.array(q)), [0.5, 0.9, 0.99], rtol=0, atol=1e-12)


# --- the tail model's life root solve (sdsim/analytic/tails.py) ---


def test_interp_knot_reproduces_np_interp() -> None:
    from sdsim.analytic.tails import _interp_knot, _knot, _slopes

    rng = np.random.default_rng(4)
    xp = np.linspace(0.0, 37.0, 75)  # the smoothed curve's half-batch grid
    fp = np.cumsum(rng.random(75))
    sl = np.stack([_slopes(xp, fp)])
    inv_h = (xp.shape[0] - 1) / (xp[-1] - xp[0])
    # inside, on every knot, just off knots, and past both ends
    xs = np.concatenate((rng.uniform(-1.0, 38.0, 500), xp, np.nextafter(xp, 99.0),
                         np.nextafter(xp, -99.0)))  # fmt: skip
    got = np.array([_interp_knot(x, _knot(x, xp, inv_h), xp, fp, sl, 0) for x in xs])
    assert np.array_equal(got, np.interp(xs, xp, fp))  # bit for bit


def test_life_roots_compiled_equal_numpy() -> None:
    """The compiled root solve gives the numpy iteration's floats, on real cells."""
    import dataclasses
    from pathlib import Path

    import sdsim
    import sdsim.analytic.tails as tails

    calls: list[tuple[object, ...]] = []
    orig = tails._life_on_curve

    def spy(*args: object) -> object:
        calls.append(args)
        return orig(*args)  # type: ignore[arg-type]

    root = Path(__file__).resolve().parents[1]
    scn = sdsim.load_scenario(root / "scenarios/default.yaml")
    tails._life_on_curve = spy  # type: ignore[assignment]
    try:
        for over in ({"workload.rate": 10.0}, {"workload.rate": 30.0, "spec.k": 2}):
            sdsim.predict(scn.with_overrides(over))
    finally:
        tails._life_on_curve = orig  # type: ignore[assignment]
    assert len(calls) == 2
    for args in calls:
        tab = args[0]
        assert isinstance(tab, tails._Tabulated)
        fast = orig(*args)  # type: ignore[arg-type]
        plain = tab.__call__  # the same lines, not a _Tabulated: the numpy iteration
        slow = orig(plain, *args[1:])  # type: ignore[arg-type]
        for f in dataclasses.fields(fast):
            assert np.array_equal(getattr(fast, f.name), getattr(slow, f.name)), f.name
