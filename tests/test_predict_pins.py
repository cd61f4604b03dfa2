"""`predict` pinned to its values before the speed work (issue 9 (f)): optimisations of the
analytic numerics must not move any prediction by more than 1e-6 relative.

tests/data/predict_pins.json was written by the unoptimised code (commit a8f77c9) for seven
scenario kinds (default, two rate/k/alpha corners, KV pressure, gamma arrivals, a 70B roofline
model, plain decoding). The model is deterministic (no sampling), so the only tolerated change is
float reassociation: 1e-6 relative is far above that and far below any modelling change.

One deliberate exception: the p50/p90/p99 values that moved by more than 1e-6 when quantiles
stopped being read off a 1,200-point tabulated CDF and became exact roots of the mixture CDF
(sdsim/analytic/mixtures.py) were re-pinned (35 of 63 quantiles, by 1e-6 to 4e-5 relative);
tests/test_quantiles_exact.py shows the new values solve CDF(q) = p to 1e-12 with an independent
CDF, where the old ones were off by up to 8e-5.

A second, modelling one (sdsim/analytic/tails.py): a request that finds fewer others than its
life's mean batch is now solved on the step curve itself instead of on the tangent at the batch
it found (that tangent made MoE lives diverge; tests/test_tail_physical.py). On these seven
cases that moved the e2e/TPOT means and quantiles (and in_system_mean, which is Little's law on
the e2e mean) by 0.001% to 0.28%; saturation, speedup, TTFT and every other key are unchanged.

A third, a cost-model change (issue 14): ``costs.source: auto`` became the calibrated model
(sdsim/costs/calibrated.py; the roofline was too cheap under load), so every case whose scenario
prices with ``auto`` (all but kv-pressure, whose costs are linear) was re-pinned from the
calibrated model; the rate corner of default.yaml moved from 40 to 30 req/s because 40 req/s is
past the calibrated saturation of that configuration (39 req/s) and would pin only infinities.

A fourth, modelling (issue 15, the tail model at high load; notes/analytic.md sections 1-4): the
number in the batch is a birth-death law whose noise is inflated by the dispersion of the step
times (F(n) = 1 + kappa (max(ca2, 1) I - 1)) while keeping its drift, prompts are chunked at the
scheduler's cap, and arrivals are read through an arrival-law view (gamma CV > 1 as clumps of
requests, MMPP as a modulated birth-death). On the six Poisson cases that moved e2e and TPOT p99
up by 0.06% to 3.8%, TTFT p99 by -2.1% to +6.3%, means by at most 1.7% (the direction the long
simulations ask for: the old model was 15-20% low on p99 at 80-90% load); kv-pressure's
p_kv_full went from 1.1% to 4.1% and the KV-limited saturation rates of kv-pressure and the 70B
case by -0.4% and -0.9% (the KV demand follows the wider batch law). bursty-gamma (CV 3) moved
most: e2e mean +24%, p99 +77%, TTFT p99 +158%, from the clumped-arrival view; the old values
were 15-30% below the simulation and `predict` now also flags that case in outside_model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

import sdsim

ROOT = Path(__file__).resolve().parents[1]
PINS = json.loads((ROOT / "tests/data/predict_pins.json").read_text())


def _scenario(case: dict) -> sdsim.Scenario:
    scn = sdsim.load_scenario(ROOT / "scenarios" / case["scenario"])
    return scn.with_overrides(case["overrides"]) if case["overrides"] else scn


def _check(got: float | bool | str, want: float | bool | str, name: str) -> None:
    if isinstance(want, str):  # inf / nan stored as text
        w = float(want)
        assert (math.isnan(w) and math.isnan(float(got))) or float(got) == w, name
    elif isinstance(want, bool):
        assert got == want, name
    elif math.isnan(want):
        assert math.isnan(float(got)), name
    else:
        assert float(got) == pytest.approx(want, rel=1e-6, abs=1e-12), name


@pytest.mark.parametrize("case", PINS, ids=[f"{c['scenario']}-{i}" for i, c in enumerate(PINS)])
def test_predict_matches_pins(case: dict) -> None:
    scn = _scenario(case)
    p = sdsim.predict(scn, rates=[], k_values=[scn.spec.k])
    for key, want in case["summary"].items():
        _check(p.summary[key], want, key)
    _check(p.saturation_rate, case["saturation_rate"], "saturation_rate")
    _check(p.speedup, case["speedup"], "speedup")


@pytest.mark.parametrize("quantiles", [False, True])
def test_predict_grid_rows_equal_predict(quantiles: bool) -> None:
    """Every row of predict_grid is predict() at that point: the shared caches (cost model, work
    law, curve, saturation rates per (k, alpha)) change no value. Rates 12 and 60 req/s: one
    stable point, one past saturation (inf latencies); k = 0 and 3; two alphas."""
    scn = sdsim.load_scenario(ROOT / "scenarios/default.yaml")
    rates, ks, alphas = [12.0, 60.0], [0, 3], [0.6, 0.85]
    df = sdsim.predict_grid(scn, rates, ks, alphas, quantiles=quantiles)
    assert len(df) == 8
    assert list(df[["rate", "k", "alpha"]].itertuples(index=False, name=None)) == [
        (r, k, a) for r in rates for k in ks for a in alphas
    ]
    for row in df.to_dict("records"):
        s = scn.with_overrides(
            {"workload.rate": row["rate"], "spec.k": row["k"], "acceptance.alpha": row["alpha"]}
        )
        p = sdsim.predict(s, rates=[], k_values=[row["k"]], quantiles=quantiles)
        for key, want in p.summary.items():
            got = row[key]
            if isinstance(want, float) and math.isnan(want):
                assert math.isnan(got), key
            else:
                assert got == want, key
        assert row["saturation_rate"] == p.saturation_rate
        sp = row["speedup"]
        assert sp == p.speedup or (math.isnan(sp) and math.isnan(p.speedup))
        # pandas stores a missing reason (None) as NaN in an object column
        om = row["outside_model"]
        assert (om if isinstance(om, str) else None) == p.outside_model


def test_predict_grid_keeps_the_scenario_acceptance_law() -> None:
    """``alphas=None``: every row is predict() with the scenario's own acceptance law (here per
    position, which a constant alpha cannot express), bit for bit."""
    scn = sdsim.load_scenario(
        ROOT / "scenarios/default.yaml", {"acceptance.alpha": [0.9, 0.8, 0.6, 0.4, 0.3]}
    )
    rates = [10.0, 25.0]
    df = sdsim.predict_grid(scn, rates, [3, 5])
    assert list(df[["rate", "k"]].itertuples(index=False, name=None)) == [
        (r, k) for r in rates for k in (3, 5)
    ]
    assert (df["alpha"] == scn.acceptance.mean_alpha).all()
    for row in df.to_dict("records"):
        s = scn.with_overrides({"workload.rate": row["rate"], "spec.k": row["k"]})
        p = sdsim.predict(s, rates=[], k_values=[row["k"]])
        for key in ("e2e_mean", "e2e_p99", "ttft_p99", "tpot_mean", "batch_mean"):
            assert row[key] == p.summary[key], key
        assert row["speedup"] == p.speedup
    # the law matters: a constant alpha at the same mean gives other latencies
    flat = sdsim.predict_grid(scn, rates, [3], [scn.acceptance.mean_alpha])
    assert flat["e2e_mean"].tolist() != df[df["k"] == 3]["e2e_mean"].tolist()
