"""Streaming statistics: flat memory, same summary keys, quantiles within 1% of the exact ones."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

from sdsim import simulate
from sdsim.costs.build import build_cost_model
from sdsim.engine.server import run_simulation
from sdsim.streaming import LogHistogram, RunningSummary
from sdsim.workload import generate_workload
from tests.conftest import ROOT, small

QUANTILES = ("p50", "p90", "p99")

KINDS: dict[str, dict[str, Any]] = {
    "moderate load": {"workload.num_requests": 2000},
    "kv pressure": {
        "workload.rate": 30.0,
        "server.num_gpu_blocks": 64,
        "workload.output_tokens": {"dist": "uniform", "low": 20, "high": 240},
    },
    "replicas": {"server.replicas": 3, "workload.rate": 40.0, "server.num_gpu_blocks": 80},
    "adaptive, beta alpha": {
        "spec.policy": "adaptive",
        "acceptance.alpha": {"dist": "beta", "mean": 0.65, "concentration": 8},
    },
    "api delay": {"server.api_delay_s": 0.2, "workload.rate": 30.0},
    "stopped by max_waiting": {
        "workload.rate": 5000.0,
        "workload.num_requests": 3000,
        "limits.max_waiting": 300,
        "server.api_delay_s": 0.01,
    },
    "stopped by time": {
        "workload.num_requests": 1500,
        "server.num_gpu_blocks": 16,
        "limits.max_sim_time_s": 5.0,
    },
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_streaming_summary_matches_full_summary(kind: str) -> None:
    scn = small(**KINDS[kind])
    full = simulate(scn, seed=3).summary
    res = simulate(scn, seed=3, keep_records=False)
    got = res.summary
    assert list(got) == list(full)  # same keys, same order
    assert res.requests.empty and res.steps.empty
    for key, a in full.items():
        b = got[key]
        if isinstance(a, float) and math.isnan(a):
            assert isinstance(b, float) and math.isnan(b), key
        elif key.endswith(QUANTILES):
            # the sketch's bins are 0.5% wide (relative); streaming quantiles may be 1% off
            assert b == pytest.approx(a, rel=0.01), key
        elif key == "queue_growth_rps" and kind == "stopped by time":
            # a run stopped at an unknown time reads finishes off a 4096-bin histogram
            assert b == pytest.approx(a, rel=0.01), key
        elif isinstance(a, float):
            # exact sums, added in another order
            assert b == pytest.approx(a, rel=1e-9, abs=1e-12), key
        else:
            assert a == b, key


def test_slots_are_reused_so_memory_stays_flat() -> None:
    # 20,000 requests at ~40% load: about a dozen in the system at a time, so the table of
    # reusable slots never needs more than its initial 1024 (it would hold 20,000 otherwise).
    scn = small(**{"workload.num_requests": 20_000, "workload.output_tokens": 16})
    wl = generate_workload(scn, 1)
    acc = RunningSummary(wl.arrival, scn.warmup_requests)
    run = run_simulation(
        scn,
        wl,
        build_cost_model(scn),
        1,
        request_sink=acc.add_requests,
        step_sink=acc.add_steps,
    )
    assert run.table.n == 1024
    assert acc.completed == 20_000 and acc.n_steps > 20_000
    assert len(run.steps["start"]) == 0  # step records were reduced, not kept


def test_log_histogram_quantiles_within_accuracy() -> None:
    # Heavy-tailed values over six decades (seed 0): every quantile within 0.5% of numpy's.
    rng = np.random.default_rng(0)
    x = rng.lognormal(-3.0, 1.5, size=200_000)
    h = LogHistogram(0.005)
    for part in np.array_split(x, 7):
        h.add(part)
    for q in (0.01, 0.5, 0.9, 0.99, 0.999):
        assert h.quantile(q) == pytest.approx(np.percentile(x, 100 * q), rel=0.005 + 1e-9)
    # mergeable: two halves merged equal the whole
    a, b = LogHistogram(0.005), LogHistogram(0.005)
    a.add(x[:1000])
    b.add(x[1000:])
    a.merge(b)
    np.testing.assert_array_equal(a.counts, h.counts)
    assert math.isnan(LogHistogram().quantile(0.5))


def test_cli_summary_only_writes_summary(tmp_path: Any) -> None:
    out = tmp_path / "run"
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "sdsim.cli",
            "run",
            "scenarios/default.yaml",
            "--summary-only",
            "--set",
            "workload.num_requests=400",
            "--set",
            "warmup_requests=40",
            "--out",
            str(out),
            "--json",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert p.returncode == 0, p.stderr
    names = sorted(f.name for f in out.iterdir() if not f.name.startswith("."))
    assert names == ["scenario.yaml", "summary.json"]
    s = json.loads((out / "summary.json").read_text())
    assert s["completed"] == 400 and s["e2e_p99"] > s["e2e_p50"] > 0
