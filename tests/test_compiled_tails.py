"""The compiled kernels of the tail model against numpy references: the uniform-mixture sums
(sdsim/analytic/mixtures.py) and the life root solve (sdsim/analytic/tails.py).

Fixed inputs from a seeded generator (no randomness in the model); the tolerances are rounding
level: the compiled loops sum component by component where numpy sums in BLAS's order.
"""

from __future__ import annotations

import numpy as np

from sdsim.analytic.mixtures import UniformExpMixture, _uniform_sums


def test_uniform_sums_match_numpy() -> None:
    rng = np.random.default_rng(3)
    n = 2_000
    w = rng.random(n)
    lo = rng.uniform(0.0, 1.0, n)
    ln = np.where(rng.random(n) < 0.1, 0.0, rng.uniform(0.0, 0.5, n))  # 10% point masses
    # points on breakpoints too (both ends of ramps, point masses)
    xs = np.concatenate((np.linspace(-0.1, 1.6, 53), lo[:10], lo[:10] + ln[:10]))
    cdf = np.zeros(xs.shape[0])
    pdf = np.zeros(xs.shape[0])
    _uniform_sums(xs, w, lo, ln, cdf, pdf)
    ramp = ln > 0
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
