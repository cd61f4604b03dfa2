"""`predict` pinned: numerical work on the analytic model (speed, reordered sums, compiled
kernels) must not move any prediction by more than 1e-6 relative.

tests/data/predict_pins.json holds `predict`'s summary, saturation rate and speedup for seven
scenario kinds (default, two rate/k/alpha corners, KV pressure, gamma arrivals, a 70B roofline
model, plain decoding). The model is deterministic (no sampling), so the only change a numerical
rewrite may make is float reassociation: 1e-6 relative is far above that and far below any
modelling change. The rate corner of default.yaml is 30 req/s, below that configuration's
calibrated saturation (39 req/s), so it pins finite values.

A deliberate modelling change (new semantics, a new default cost model) moves some values on
purpose: it re-pins them and says by how much, in its commit and its note
(`git log tests/data/predict_pins.json`; notes/analytic.md, notes/speed.md). The quantiles pinned
here are exact roots of the mixture CDFs, checked against an independent CDF in
tests/test_quantiles_exact.py.
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
