"""Scheduling policies under KV limits, overheads, and saturation bounds."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from sdsim import simulate
from sdsim.engine.scheduler import Batch
from sdsim.engine.server import Engine
from tests.conftest import ROOT, small


@pytest.mark.parametrize("policy", ["vllm-v1", "prefill-first"])
@pytest.mark.parametrize("blocks", [None, 48])
def test_policies_respect_caps_and_kv(policy: str, blocks: int | None) -> None:
    scn = small(
        **{
            "server.scheduler": policy,
            "server.num_gpu_blocks": blocks,
            "server.max_num_seqs": 8,
            "server.max_num_batched_tokens": 100,
            "workload.rate": 40.0,
            "workload.output_tokens": {"dist": "uniform", "low": 1, "high": 100},
        }
    )
    mixed = [0]

    def hook(engine: Engine, batch: Batch) -> None:
        tokens = int(batch.prefill_chunks.sum()) + batch.decode_ids.shape[0] * (engine.k + 1)
        assert tokens <= 100  # draft tokens count: k + 1 per decoding request
        assert batch.num_seqs <= 8 and engine.run_ids.shape[0] <= 8
        engine.kv.check(engine.run_ids)
        if blocks is not None:
            assert engine.kv_in_step <= blocks
        if batch.decode_ids.shape[0] and batch.prefill_ids.shape[0]:
            mixed[0] += 1

    res = simulate(scn, on_step=hook)
    df = res.requests
    assert df["finish"].notna().all()
    assert res.steps["emitted"].sum() == df["output_tokens"].sum()
    if policy == "vllm-v1":
        assert mixed[0] > 0  # chunked prefill rides along with decodes
    if blocks is not None:
        assert res.summary["preemptions"] > 0


def test_prefill_first_trades_tpot_for_ttft() -> None:
    # Prefill-first admits and prefills before decoding: TTFT falls, decodes stall (TPOT rises).
    # Both effects are tens of percent at this load (seed 1); 5% margins.
    over = {"workload.rate": 40.0, "workload.prompt_tokens": 1024}
    v1 = simulate(small(**over)).summary
    pf = simulate(small(**over, **{"server.scheduler": "prefill-first"})).summary
    assert pf["ttft_mean"] < 0.95 * v1["ttft_mean"]
    assert pf["tpot_mean"] > 1.05 * v1["tpot_mean"]


def test_api_delay_shifts_every_request_and_is_reported() -> None:
    # Arrivals one second apart never overlap, so the delay adds exactly to TTFT and e2e.
    over = {"workload.arrival": "constant", "workload.rate": 1.0, "workload.num_requests": 40}
    a = simulate(small(**over))
    b = simulate(small(**over, **{"server.api_delay_s": 0.25}))
    np.testing.assert_allclose(b.requests["ttft"] - a.requests["ttft"], 0.25, atol=1e-9)
    np.testing.assert_allclose(
        b.requests["queue_delay"] - a.requests["queue_delay"], 0.25, atol=1e-9
    )
    np.testing.assert_allclose(b.requests["tpot"], a.requests["tpot"], rtol=1e-9)
    assert b.summary["api_delay_s"] == 0.25 and a.summary["api_delay_s"] == 0.0


def test_step_overhead_is_reported() -> None:
    scn = small(**{"costs.linear.overhead_s": 2e-3})
    res = simulate(scn)
    assert (res.steps["overhead_s"] == 2e-3).all()
    assert res.summary["overhead_s_mean"] == pytest.approx(2e-3)
    base = simulate(small()).summary
    assert res.summary["e2e_mean"] > base["e2e_mean"]


def test_overload_stops_early_across_replicas() -> None:
    # 3 replicas at ~50x their capacity: the waiting queue (all replicas together) passes 200
    # within the first tens of milliseconds of a 1-second arrival stream.
    scn = small(
        **{
            "server.replicas": 3,
            "workload.rate": 5000.0,
            "workload.num_requests": 5000,
            "limits.max_waiting": 200,
        }
    )
    res = simulate(scn)
    s = res.summary
    assert s["stable"] is False and "max_waiting" in s["stop_reason"]
    assert s["duration_s"] < 0.1 * res.requests["arrival"].iloc[-1]
    assert s["completed"] < 300
    assert s["queue_growth_rps"] > 0


def test_kv_bound_overload_is_unstable_and_time_bound_stops() -> None:
    # A KV cache of 16 blocks holds one or two requests: a load the GPU carries easily (20 req/s,
    # batch ~10 without the limit) saturates on memory. The time bound stops the run at 20 s,
    # after ~400 arrivals: enough for the stability test (sdsim.stability) to call the growth.
    over = {"workload.num_requests": 1500}
    free = simulate(small(**over)).summary
    assert free["stable"]
    res = simulate(small(**over, **{"server.num_gpu_blocks": 16, "limits.max_sim_time_s": 20.0}))
    s = res.summary
    assert s["stable"] is False and "max_sim_time_s" in s["stop_reason"]
    assert s["duration_s"] == pytest.approx(20.0)
    assert s["queue_growth_rps"] > 0.5 * 20.0  # it serves well under half of what arrives


def test_cli_warns_on_unstable_run(tmp_path) -> None:
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "sdsim.cli",
            "run",
            "scenarios/default.yaml",
            "--set",
            "workload.rate=2000",
            "--set",
            "limits.max_waiting=100",
            "--set",
            "warmup_requests=10",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert p.returncode == 0, p.stderr
    assert "warning" in p.stderr and "not stable" in p.stderr
    assert "Traceback" not in p.stderr


def test_cli_kv_too_small_is_exit_2() -> None:
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "sdsim.cli",
            "run",
            "scenarios/default.yaml",
            "--set",
            "server.num_gpu_blocks=10",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "server.num_gpu_blocks" in lines[0]
