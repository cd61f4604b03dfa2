"""SLOs and goodput: the scenario section, the run summary (full and streaming), the analytic
summary, and the sweep's columns."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from sdsim import ScenarioError, load_scenario, predict, simulate
from sdsim.slo import SLO_KEYS, parse_slo_options, slo_bounds, slo_stats
from tests.conftest import ROOT, small


def test_slo_section_and_keys() -> None:
    scn = small(**{"slo.ttft_p99": 0.2, "slo.e2e_mean": 3.0})
    assert slo_bounds(scn.slo) == {"e2e_mean": 3.0, "ttft_p99": 0.2}
    assert len(SLO_KEYS) == 12
    with pytest.raises(ScenarioError, match=r"slo\.ttft_p99"):
        small(**{"slo.ttft_p99": -1})
    with pytest.raises(ScenarioError, match=r"slo\.ttft_p95"):
        small(**{"slo.ttft_p95": 1})


def test_parse_slo_options() -> None:
    assert parse_slo_options(["ttft_p99=0.5", "e2e_p99=20s", "tpot_p90=80ms"]) == {
        "ttft_p99": 0.5,
        "e2e_p99": 20.0,
        "tpot_p90": pytest.approx(0.08),
    }
    for bad, needle in (
        ("ttft_p99", "METRIC=SECONDS"),
        ("ttft_p95=1", "unknown SLO metric"),
        ("ttft_p99=-1", "positive"),
        ("ttft_p99=fast", "positive"),
        ("ttft_p99=nan", "positive"),
    ):
        with pytest.raises(ScenarioError, match=needle) as exc:
            parse_slo_options([bad])
        assert exc.value.field == "--slo"


def test_goodput_counts_requests_within_every_bound() -> None:
    """goodput = throughput x the fraction of measured requests within every bound, counted
    independently here from the request records."""
    scn = small(**{"slo.ttft_p99": 0.019, "slo.e2e_p90": 0.25, "workload.num_requests": 600})
    res = simulate(scn)
    s = res.summary
    meas = res.requests[~res.requests["warmup"]]
    ok = (meas["ttft"] <= 0.019) & (meas["e2e"] <= 0.25)
    frac = float(ok.sum()) / len(meas)
    assert 0.0 < frac < 1.0  # both outcomes occur, so the count is exercised
    assert s["slo_attainment"] == pytest.approx(frac)
    assert s["goodput_rps"] == pytest.approx(s["throughput_rps"] * frac)
    assert s["slo_attainment_ttft_p99"] == pytest.approx(float((meas["ttft"] <= 0.019).mean()))
    assert s["slo_margin_e2e_p90"] == pytest.approx((0.25 - s["e2e_p90"]) / 0.25)
    assert s["slo_met"] is (s["ttft_p99"] <= 0.019 and s["e2e_p90"] <= 0.25)


def test_streaming_summary_has_the_same_slo_keys() -> None:
    scn = small(**{"slo.ttft_p99": 0.05, "slo.e2e_p99": 1.5, "workload.num_requests": 600})
    full = simulate(scn).summary
    stream = simulate(scn, keep_records=False).summary
    keys = [k for k in full if k.startswith(("slo_", "goodput"))]
    assert set(keys) == {k for k in stream if k.startswith(("slo_", "goodput"))}
    for k in ("goodput_rps", "slo_attainment", "slo_attainment_ttft_p99"):
        assert stream[k] == pytest.approx(full[k], rel=1e-12), k  # counts, not sketches


def test_without_slo_goodput_is_throughput() -> None:
    s = simulate(small()).summary
    assert s["slo_met"] is True
    assert s["goodput_rps"] == pytest.approx(s["throughput_rps"])


def test_unfinished_and_tpot_less_requests() -> None:
    # a one-token request has no TPOT: it meets a TPOT bound; an unfinished one meets none
    out = slo_stats(
        {"tpot_p99": 0.01},
        e2e=[1.0, 1.0],
        ttft=[0.1, 0.1],
        tpot=[math.nan, 0.5],
        measured=4,
        summary={"throughput_rps": 2.0, "tpot_p99": 0.5},
    )
    assert out["slo_attainment"] == 0.25
    assert out["goodput_rps"] == 0.5
    assert out["slo_met"] is False


def test_predict_attainment_is_the_law_cdf_at_the_bound() -> None:
    scn = load_scenario(
        ROOT / "scenarios/default.yaml", {"costs.source": "roofline", "slo.e2e_p99": 2.0}
    )
    p = predict(scn)
    s = p.summary
    law = p.latency_laws["e2e"]
    assert s["slo_attainment_e2e_p99"] == pytest.approx(float(law.cdf(np.asarray([2.0]))[0]))
    # at the model's own p99 the attainment is 0.99 (the law's quantile is its CDF's inverse)
    at_p99 = scn.with_overrides({"slo.e2e_p99": s["e2e_p99"]})
    assert predict(at_p99).summary["slo_attainment_e2e_p99"] == pytest.approx(0.99, abs=1e-6)
    assert s["slo_met"] is (s["e2e_p99"] <= 2.0)
    assert s["goodput_rps"] == pytest.approx(s["throughput_rps"] * s["slo_attainment"])


def test_sweep_reports_goodput_and_attainment(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from sdsim.sweep import SweepSpec, plan_sweep, run_sweep

    base = tmp_path / "base.yaml"
    base.write_text(small(**{"slo.ttft_p99": 0.05}).to_yaml())
    spec = SweepSpec(base=str(base), grid={"spec.k": [0, 2]}, metrics=["e2e_mean"])
    plan = plan_sweep(spec)
    assert "goodput_rps" in plan.spec.metrics
    assert "slo_attainment_ttft_p99" in plan.spec.metrics
    res = run_sweep(plan, tmp_path / "out")
    assert res.summary["goodput_rps"].notna().all()
    assert res.summary["slo_attainment_ttft_p99"].between(0, 1).all()


def test_validate_reports_goodput_beside_the_latencies() -> None:
    from sdsim.analytic.validation import validate

    scn = small(**{"slo.e2e_p99": 0.3, "workload.num_requests": 400})
    rep = validate(scn, rates=[15.0], reps=2, jobs=1, initial=400, max_requests=800)
    g = rep.table[rep.table["metric"] == "goodput"]
    assert len(g) == 1 and g["statistic"].iloc[0] == "rps"
    assert g["sim"].iloc[0] > 0 and g["analytic"].iloc[0] > 0
    assert 0 < g["ci_low"].iloc[0] <= g["sim"].iloc[0] <= g["ci_high"].iloc[0] <= 15.0
    assert (rep.table["statistic"] == "attainment_e2e_p99").sum() == 1
    assert rep.verdicts["holds"].notna().all()  # the verdict still judges the latencies only


def test_run_prints_goodput_when_the_scenario_has_slos(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sdsim.cli import main

    path = tmp_path / "s.yaml"
    path.write_text(small(**{"slo.ttft_p99": 0.019}).to_yaml())
    main(["run", str(path), "--summary-only", "--out", str(tmp_path / "o")])
    text = capsys.readouterr().out
    assert "goodput, requests meeting every SLO (req/s)" in text
    assert "SLO ttft_p99: attainment / margin" in text
    path.write_text(small().to_yaml())
    main(["run", str(path), "--summary-only", "--out", str(tmp_path / "p")])
    assert "requests meeting every SLO" not in capsys.readouterr().out
