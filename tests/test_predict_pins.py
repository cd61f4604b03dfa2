"""`predict` pinned to its values before the speed work (issue 9 (f)): optimisations of the
analytic numerics must not move any prediction by more than 1e-6 relative.

tests/data/predict_pins.json was written by the unoptimised code (commit a8f77c9) for seven
scenario kinds (default, two rate/k/alpha corners, KV pressure, gamma arrivals, a 70B roofline
model, plain decoding). The model is deterministic (no sampling), so the only tolerated change is
float reassociation: 1e-6 relative is far above that and far below any modelling change.
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
