"""The shipped scenario library, trace replay, and the shipped sweep examples."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

import sdsim
from sdsim import ScenarioError, load_scenario, simulate
from sdsim.cli import main
from sdsim.hardware import gpu_names
from sdsim.models import model_names
from sdsim.sweep import load_sweep, plan_sweep, run_sweep
from sdsim.workload import generate_workload, read_trace
from tests.conftest import ROOT, SHARED

SCENARIOS = sorted((ROOT / "scenarios").glob("*.yaml"))
SWEEPS = sorted((ROOT / "scenarios" / "sweeps").glob("*.yaml"))
VIDUR = SHARED / "data" / "vidur" / "processed_traces"


def test_library_has_the_scenarios_the_project_promises() -> None:
    names = {p.stem for p in SCENARIOS}
    assert len(names) >= 8
    assert {"default", "plain", "bursty-gamma", "trace-replay"} <= names
    targets = {load_scenario(p).target for p in SCENARIOS}
    assert {"llama-3.1-70b", "qwen3-8b", "qwen3-30b-a3b"} <= targets
    kinds = {load_scenario(p).drafter.kind for p in SCENARIOS}
    assert kinds == {"eagle", "model", "ngram"}
    arrivals = {load_scenario(p).workload.arrival for p in SCENARIOS}
    assert {"poisson", "gamma", "trace"} <= arrivals


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_scenario_opens_with_its_question_and_simulates(path: Path) -> None:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# Question:"), first
    raw = yaml.safe_load(path.read_text())
    # pinned costs: kv-pressure's table was measured on linear costs
    pinned = {"kv-pressure": "linear"}
    if raw["name"] in pinned:
        assert raw["costs"]["source"] == pinned[raw["name"]]
    if raw["name"] != "kv-pressure":
        # Library scenarios price from the registries, so they must name registry hardware and
        # models (not inline specs or config files that could drift from them).
        assert raw["costs"]["source"] in ("auto", "roofline") and "linear" not in raw["costs"]
        assert raw["costs"]["source"] == "auto" or raw["name"] in pinned
        assert raw["hardware"] in gpu_names(), raw["hardware"]
        assert raw["target"] in model_names(), raw["target"]
        if raw["drafter"]["kind"] == "model":
            assert raw["drafter"]["model"] in model_names()
    scn = load_scenario(path, {"workload.num_requests": 80, "warmup_requests": 10})
    res = simulate(scn)
    s = res.summary
    assert s["completed"] == 80 and s["stop_reason"] == "completed"
    assert 0 < s["e2e_mean"] < 120 and np.isfinite(s["tpot_mean"])
    if scn.spec.k:
        assert s["tokens_per_step_mean"] > 1.0


def test_scenarios_are_stable_at_their_load() -> None:
    """Each scenario's load is a stable (non-saturated) what-if (first 500 requests, for speed)."""
    for path in SCENARIOS:
        scn = load_scenario(path)
        n = min(scn.workload.num_requests, 500)
        short = scn.with_overrides({"workload.num_requests": n, "warmup_requests": 50})
        s = simulate(short).summary
        # not judged unstable (500 bursty requests may be too few for the test to call it stable)
        assert s["stable"] is not False, (path.stem, s["stop_reason"], s["stability_reason"])
        if scn.workload.arrival != "trace" and path.stem != "kv-pressure":
            # ... and the analytic model agrees it has headroom: at most 80% of saturation
            # (kv-pressure sits past the preemption onset on purpose, ~86% of KV saturation)
            sat = sdsim.predict(scn).saturation_rate
            assert scn.workload.rate <= 0.8 * sat, (path.stem, scn.workload.rate, sat)


# --------------------------------------------------------------------------- traces


def test_shipped_trace_is_reproducible_and_replayed_as_recorded() -> None:
    sys.path.insert(0, str(ROOT / "scenarios" / "traces"))
    try:
        import make_synthetic_trace as gen
    finally:
        sys.path.pop(0)
    shipped = pd.read_csv(ROOT / "scenarios" / "traces" / "synthetic-chat.csv")
    pd.testing.assert_frame_equal(gen.make_trace(), shipped, check_dtype=False)
    scn = load_scenario(ROOT / "scenarios" / "trace-replay.yaml")
    wl = generate_workload(scn)
    assert len(wl) == len(shipped) == 800
    np.testing.assert_array_equal(wl.arrival, shipped["arrival"].to_numpy())
    np.testing.assert_array_equal(wl.prompt, shipped["prompt_tokens"].to_numpy())
    np.testing.assert_array_equal(wl.output, shipped["output_tokens"].to_numpy())


def test_trace_lengths_with_generated_arrivals(tmp_path: Path) -> None:
    trace = tmp_path / "lengths.csv"
    pd.DataFrame({"num_prefill_tokens": [100, 200, 300], "num_decode_tokens": [5, 6, 7]}).to_csv(
        trace, index=False
    )
    with pytest.raises(ScenarioError, match=r"workload\.arrival to poisson"):
        read_trace(trace)
    df = read_trace(trace, require_arrival=False)
    assert df["arrival"].isna().all() and list(df["prompt_tokens"]) == [100, 200, 300]
    scn = load_scenario(
        ROOT / "scenarios" / "default.yaml",
        {
            "workload.trace": str(trace),
            "workload.num_requests": 7,
            "workload.rate": 2.0,
            "warmup_requests": 1,
        },
    )
    wl = generate_workload(scn)
    assert list(wl.prompt) == [100, 200, 300, 100, 200, 300, 100]  # in order, cycling
    assert list(wl.output) == [5, 6, 7, 5, 6, 7, 5]
    # Arrivals come from the scenario's Poisson process, the same stream as without a trace.
    plain = generate_workload(scn.with_overrides({"workload.trace": None}))
    np.testing.assert_array_equal(wl.arrival, plain.arrival)
    # Timing replay of a trace without times is refused with the way out.
    with pytest.raises(ScenarioError, match="missing column 'arrival'"):
        generate_workload(scn.with_overrides({"workload.arrival": "trace"}))


@pytest.mark.skipif(not VIDUR.is_dir(), reason="shared Vidur traces not present")
def test_vidur_traces_are_read() -> None:
    conv = read_trace(VIDUR / "splitwise_conv.csv")
    assert len(conv) > 10_000 and conv["arrival"].is_monotonic_increasing
    arxiv = VIDUR / "arxiv_summarization_stats_llama2_tokenizer_filtered_v2.csv"
    with pytest.raises(ScenarioError):
        read_trace(arxiv)  # no arrival times
    lengths = read_trace(arxiv, require_arrival=False)
    assert lengths["prompt_tokens"].mean() == pytest.approx(2588, rel=0.01)
    scn = load_scenario(
        ROOT / "scenarios" / "trace-replay.yaml",
        {"workload.trace": str(VIDUR / "splitwise_code.csv"), "workload.num_requests": 200},
    )
    s = simulate(scn).summary
    assert s["completed"] == 200


# --------------------------------------------------------------------------- sweep examples


def test_sweep_examples_exist() -> None:
    names = {p.stem for p in SWEEPS}
    assert "k-vs-load" in names and len(names) >= 2
    spec = load_sweep(ROOT / "scenarios" / "sweeps" / "k-vs-load.yaml")
    assert spec.replications == 3 and {"spec.k", "workload.rate", "acceptance.alpha"} <= set(
        spec.grid
    )
    assert len(spec.grid["acceptance.alpha"]) == 2


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_sweep_example_runs(path: Path, tmp_path: Path) -> None:
    """Every shipped sweep plans fully and runs end to end with small overrides."""
    spec = load_sweep(path)
    full = plan_sweep(spec, path)
    assert len(full.tasks) == len(full.points) * spec.replications
    small = {"workload.num_requests": 12, "warmup_requests": 2}
    plan = plan_sweep(spec, path, extra_set=small, replications=1)
    # Keep CI short: at most six points, spread over the grid.
    idx = np.linspace(0, len(plan.points) - 1, min(6, len(plan.points))).round().astype(int)
    keep = {plan.points[i].key for i in idx}
    plan = plan.select(keep)
    res = run_sweep(plan, tmp_path / "out", workers=1)
    assert res.failed == 0 and res.done == len(keep)
    assert set(spec.metrics) <= set(res.summary.columns)


def test_k_vs_load_via_cli_with_speedup_plot(tmp_path: Path) -> None:
    sweep = ROOT / "scenarios" / "sweeps" / "k-vs-load.yaml"
    out = tmp_path / "kvl"
    small = ["--set", "workload.num_requests=10", "--set", "warmup_requests=2"]
    main(["sweep", str(sweep), "--out", str(out), "--workers", "1", "--replications", "1",
          "--quiet", *small])
    main(["plot", str(out), "--speedup-vs", "spec.k=0"])
    table = pd.read_csv(out / "plots" / "speedup.csv")
    assert len(table) == 3 * 5 * 2 and (table["pairs"] == 1).all()
    assert (out / "plots" / "speedup_e2e_mean.png").stat().st_size > 5000
