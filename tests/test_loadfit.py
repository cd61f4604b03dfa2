"""SD under load, the paper's way: dense fits per configuration, C1R/C2R, break-even, best k."""

from __future__ import annotations

import math

import pandas as pd
import pytest

import sdsim
from sdsim.costs.calibration import ABLATIONS, ablated, shipped_calibration
from sdsim.loadfit import fit_load, load_table


def _table(curves: dict[int, tuple[float, float]]) -> pd.DataFrame:
    rows = []
    for k, (c1, c2) in curves.items():
        for f in (0.1, 0.3, 0.5, 0.7, 0.8):
            lam = f / c2
            rows.append({"alpha": 0.7, "k": k, "fraction": f, "rate": lam, "saturation": 1 / c2,
                         "e2e_mean": c1 / (1 - lam * c2), "stable": True,
                         "prompt_tokens": 512.0, "output_tokens": 256.0})
    return pd.DataFrame(rows)


def test_fit_load_hand_computed() -> None:
    """Exact dense curves are fitted back exactly; C1R, C2R and the break-even follow by hand:
    C1 = (2, 1.2, 1.0) s and C2 = (50, 60, 80) ms for k = (0, 2, 4)."""
    fits = fit_load(_table({0: (2.0, 0.05), 2: (1.2, 0.06), 4: (1.0, 0.08)}), low=0.1, high=0.8)
    r = {int(x["k"]): x for x in fits.to_dict("records")}
    assert r[2]["C1R"] == pytest.approx(0.6, rel=1e-6) and r[2]["C2R"] == pytest.approx(1.2)
    # L0 = Lk at lambda* = (C1k - C10) / (C1k C20 - C10 C2k)
    be4 = (1.0 - 2.0) / (1.0 * 0.05 - 2.0 * 0.08)
    assert r[4]["break_even"] == pytest.approx(be4, rel=1e-6)
    assert r[4]["break_even_fraction"] == pytest.approx(be4 * 0.05, rel=1e-6)
    lam = 0.8 / 0.05  # 80% of plain decoding's saturation is past k = 4's (12.5 req/s)
    assert math.isnan(r[4]["speedup_high"])
    l0, l2 = 2 / (1 - lam * 0.05), 1.2 / (1 - lam * 0.06)  # 10 s and 30 s
    assert r[2]["speedup_high"] == pytest.approx(l0 / l2)
    # at 10% load k = 4 is fastest (1.19 s against 1.27 and 2.11), at 80% plain decoding
    assert r[0]["best_k_low"] == 4 and r[0]["best_k_high"] == 0


def test_load_table_analytic_and_ablations() -> None:
    scn = sdsim.load_scenario(None, {"workload.num_requests": 300, "warmup_requests": 10})
    tab = load_table(scn, [0, 3], [0.7], fractions=(0.2, 0.5, 0.8), simulate=False)
    assert len(tab) == 6 and tab["stable"].all()
    assert (tab.groupby("k")["e2e_mean"].apply(lambda s: s.is_monotonic_increasing)).all()
    cal = shipped_calibration()
    for group in ABLATIONS:
        assert ablated(cal, group) != cal, group
    off = load_table(scn, [0, 3], [0.7], fractions=(0.5,), simulate=False,
                     calibration=ablated(cal, "host_request"))
    # without per-request host costs both configurations serve more
    assert (off["saturation"].to_numpy() > tab.groupby("k")["saturation"].first().to_numpy()).all()
    with pytest.raises(sdsim.ScenarioError, match="include 0"):
        load_table(scn, [3], [0.7], simulate=False)
    with pytest.raises(sdsim.ScenarioError, match="unknown group"):
        ablated(cal, "warp")
