"""The fast analytic path (what `predict_grid` and `sdsim plan` run) computes what the direct one
does.

* step curves from the vectorised ``steps`` equal the per-shape ``step`` loop bit for bit;
* the chunk chain solved per row (truncated where the tail mass is below 1e-15, batched across
  rows and rates) matches the full 33-state solve to 1e-13 relative, and a row's floats do not
  depend on what else is in the batch;
* operating points that solve only the rows their birth-death law reaches give exactly the
  predictions of solving every row;
* the saturation rate found by regula falsi sits on the stability boundary.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import special

import sdsim
import sdsim.analytic.operating as operating
from sdsim.analytic.operating import build_curve, step_saturation_rate
from sdsim.analytic.stepcurve import MAX_CHUNKS, StepCurve, _chain, build_step_curve
from sdsim.analytic.work import request_work
from sdsim.costs import StepShape, build_cost_model

ROOT = Path(__file__).resolve().parents[1]


def _default(**over: object) -> sdsim.Scenario:
    scn = sdsim.load_scenario(ROOT / "scenarios/default.yaml")
    return scn.with_overrides(over) if over else scn


def _curve(k: int = 4, alpha: float = 0.7) -> tuple[StepCurve, object]:
    scn = _default(**{"spec.k": k, "acceptance.alpha": alpha})
    w = request_work(scn, k)
    return build_curve(scn, k, w, build_cost_model(scn)), w


@pytest.mark.parametrize("source", ["roofline", "linear"])
def test_step_curve_equals_the_scalar_loop(source: str) -> None:
    model = build_cost_model(_default(**{"costs.source": source}))
    k, ctx, prompt, budget, n_max = 3, 611.37, 700.0, 512, 40
    c = build_step_curve(model, k, ctx, prompt, budget, n_max)
    # the definition: one step() per (n, q) shape, each chunk then carrying the excess of the
    # prompt's real chunks (700 = 512 + 188 tokens) over the curve's two 512-token ones
    p = max(1, round(prompt))
    chunk = max(1, min(p, budget))
    nchunks = max(1, math.ceil(p / chunk))
    pf_ctx = float(np.mean([min(p, (i + 1) * chunk) for i in range(nchunks)]))
    for n in range(n_max + 1):
        dctx = round(n * ctx)
        st = model.step(StepShape(n, dctx, k))
        assert (c.decode[n], c.verify[n], c.draft[n]) == (st.total, st.verify, st.draft)
        assert c.mixed[n, 0] == st.total
        whole = sum(
            model.step(StepShape(n, dctx, k, tok, x, 1)).total - st.total
            for tok, x in ((512, 512), (188, 700))
        )
        one = model.step(StepShape(n, dctx, k, chunk, round(pf_ctx), 1)).total - st.total
        excess = whole / nchunks - one
        for q in range(1, MAX_CHUNKS + 1):
            want = model.step(StepShape(n, dctx, k, q * chunk, round(q * pf_ctx), q)).total
            assert c.mixed[n, q] == pytest.approx(want + q * excess, rel=1e-12, abs=1e-15)


def _full_chain(mixed: np.ndarray, rate: float) -> np.ndarray:
    """The chain on all MAX_CHUNKS + 1 states by scipy's Poisson pmf and one dense solve."""
    nq = mixed.shape[1]
    q = np.arange(nq)
    t = np.empty(mixed.shape[0])
    for n in range(mixed.shape[0]):
        trans = np.exp(
            special.xlogy(q[None, :], rate * mixed[n][:, None])
            - special.gammaln(q[None, :] + 1.0)
            - rate * mixed[n][:, None]
        )
        trans[:, -1] += np.clip(1.0 - trans.sum(axis=1), 0.0, None)
        a = trans.T - np.eye(nq)
        a[-1, :] = 1.0
        rhs = np.zeros(nq)
        rhs[-1] = 1.0
        pi = np.clip(np.linalg.solve(a, rhs), 0.0, None)
        t[n] = float((pi / pi.sum()) @ mixed[n])
    return t


def test_chunk_chain_matches_the_full_solve_and_rows_are_independent() -> None:
    c, _ = _curve(k=10, alpha=0.5)
    rows = np.array([0, 1, 7, 64, 150, 256])
    for rate in (3.0, 25.0, 45.0):
        _, t = _chain(c.mixed[rows], rate)
        # 1e-13: the truncation moves at most 1e-15 of mass (see stepcurve._TAIL_MASS)
        np.testing.assert_allclose(t, _full_chain(c.mixed[rows], rate), rtol=1e-13, atol=0.0)
        # a row's floats do not depend on the rest of the batch
        pq_all, t_all = c.chunk_law(rate)
        for i, r in enumerate(rows.tolist()):
            pq_one, t_one = _chain(c.mixed[[r]], rate)
            assert t_one[0] == t_all[r] == t[i]
            assert np.array_equal(pq_one[0], pq_all[r])
    c2, _ = _curve(k=10, alpha=0.5)
    c2.prime([3.0, 25.0, 45.0])
    for rate in (3.0, 25.0, 45.0):
        assert np.array_equal(c2.chunk_law(rate)[1], c.chunk_law(rate)[1])


@pytest.mark.parametrize("quantiles", [False, True])
def test_rows_the_law_does_not_reach_change_nothing(
    quantiles: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every prediction is the same when every row of the chunk law is solved exactly, to
    1e-9 relative: the rows solved exactly are those the plain GPS law reaches; the law with
    the prefill bursts' noise (sdsim.analytic.operating.dispersion) reaches a little further,
    its mass there (~1e-6) on rows interpolated between exact ones (seen: 2.5e-11 at most)."""
    scn = _default()
    rates, ks, alphas = [8.0, 30.0, 45.0], [0, 2, 8], [0.6, 0.9]
    fast = sdsim.predict_grid(scn, rates, ks, alphas, quantiles=quantiles)
    monkeypatch.setattr(operating, "_base_rows", lambda curve, frac: np.arange(curve.n_max + 1))
    full = sdsim.predict_grid(scn, rates, ks, alphas, quantiles=quantiles)
    assert fast.shape == full.shape
    for col in fast.columns:
        a, b = fast[col].to_numpy(), full[col].to_numpy()
        if a.dtype.kind == "f":
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=0, equal_nan=True, err_msg=col)
        else:
            assert list(a) == list(b) or all(
                (x == y) or (x != x and y != y) for x, y in zip(a, b, strict=True)
            ), col


def test_saturation_rate_is_the_stability_boundary() -> None:
    for k, alpha in ((1, 0.5), (4, 0.7), (10, 0.95)):
        c, w = _curve(k, alpha)
        sat = step_saturation_rate(c, w)
        nu, frac = operating._decode_share(c, w)  # type: ignore[arg-type]
        top = c.n_max * frac
        assert _ok(c, nu, top, sat) and not _ok(c, nu, top, sat * (1 + 1e-12)), (k, alpha, sat)


def _ok(c: StepCurve, nu: float, top: float, lam: float) -> bool:
    """The stability condition step_saturation_rate looks for the edge of."""
    p = c.chunks_per_request
    return c.stable(lam * p) and lam * nu * c.step_time_at(top, lam * p) / c.n_max < 1.0


def test_chunk_laws_batched_over_many_rates_equal_one_at_a_time() -> None:
    """More rates in one batch than the per-curve caches keep (64): nothing is lost."""
    c, w = _curve(k=4, alpha=0.7)
    rates = np.linspace(1.0, 34.0, 70).tolist()
    items = [(r, True) for r in rates] + [(r, False) for r in rates[::7]]
    batch = operating.chunk_laws(c, w, items)  # type: ignore[arg-type]
    for (r, law), (pq, t) in zip(items, batch, strict=True):
        fresh, _ = _curve(k=4, alpha=0.7)
        ((pq1, t1),) = operating.chunk_laws(fresh, w, [(r, law)])  # type: ignore[arg-type]
        assert np.array_equal(t, t1) and np.array_equal(pq, pq1), (r, law)

