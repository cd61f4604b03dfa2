"""Exact fast-forward: steps run ahead of the SimPy clock give the records of a step-by-step run."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pytest
import simpy

import sdsim.engine.tape as tape_mod
from sdsim import simulate
from sdsim.costs.build import build_cost_model
from sdsim.costs.step import StepShape, decode_step_times
from sdsim.engine.server import run_simulation, until
from sdsim.workload import generate_workload
from tests.conftest import small

# Scenario kinds the fast-forward must reproduce exactly (seed 3 for all).
KINDS: dict[str, dict[str, Any]] = {
    "moderate load": {},
    "low load": {"workload.rate": 2.0, "workload.num_requests": 150},
    "kv pressure": {
        "workload.rate": 30.0,
        "server.num_gpu_blocks": 64,
        "workload.output_tokens": {"dist": "uniform", "low": 20, "high": 240},
    },
    "replicas": {
        "server.replicas": 3,
        "server.router": "least-outstanding",
        "workload.rate": 40.0,
        "server.num_gpu_blocks": 80,
    },
    "beta alpha": {
        "acceptance.alpha": {"dist": "beta", "mean": 0.65, "concentration": 8},
        "workload.rate": 4.0,
    },
    "per-position alpha": {"acceptance.alpha": [0.9, 0.8, 0.7, 0.5], "workload.rate": 4.0},
    "adaptive k": {"spec.policy": "adaptive", "spec.k_max": 6, "workload.rate": 5.0},
    "prefill-first, tight kv": {
        "server.scheduler": "prefill-first",
        "server.num_gpu_blocks": 40,
        "server.max_num_seqs": 4,
        "workload.rate": 6.0,
    },
    "roofline costs": {"costs.source": "roofline", "workload.rate": 5.0},
    "deadline stop": {"workload.rate": 3.0, "limits.max_sim_time_s": 20.0},
    "api delay": {"server.api_delay_s": 0.05, "workload.rate": 8.0},
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_same_records_with_fast_forward_on_and_off(kind: str) -> None:
    scn = small(**KINDS[kind])
    off = simulate(scn, seed=3, fast_forward=False)
    on = simulate(scn, seed=3, fast_forward=True)
    # exact equality: same floats for every time, same integers for every count
    pd.testing.assert_frame_equal(off.requests, on.requests, check_exact=True)
    pd.testing.assert_frame_equal(off.steps, on.steps, check_exact=True)
    assert list(off.summary) == list(on.summary)
    for key, a in off.summary.items():
        b = on.summary[key]
        assert a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b)), key
    # and the comparison is not vacuous: hundreds of steps ran ahead of the clock, in dozens of
    # calls
    run = run_simulation(scn, generate_workload(scn, 3), build_cost_model(scn), 3)
    assert sum(e.ff_blocks for e in run.engines) >= 40
    assert sum(e.ff_steps for e in run.engines) >= 150
    if kind == "kv pressure":
        assert off.summary["preemptions"] > 0


def test_fast_forward_skips_most_events_at_low_load() -> None:
    scn = small(**KINDS["low load"])
    run = run_simulation(scn, generate_workload(scn, 3), build_cost_model(scn), 3)
    e = run.engines[0]
    assert e.ff_steps > 0.8 * len(run.steps["start"])
    assert e.ff_blocks < e.ff_steps / 5  # several steps per SimPy event


def test_hook_turns_fast_forward_off() -> None:
    scn = small(**KINDS["low load"])
    seen = [0]

    def hook(engine: Any, batch: Any) -> None:
        seen[0] += 1

    res = simulate(scn, seed=3, on_step=hook)
    assert seen[0] == len(res.steps)


def test_tape_compaction_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    # A tiny arena forces many compactions (and growth) of the acceptance tapes.
    scn = small(**{"workload.rate": 30.0, "workload.output_tokens": 200})
    ref = simulate(scn, seed=2)
    init = tape_mod.AcceptanceTape.__init__

    def tiny(self: Any, sampler: Any, k: Any, capacity: int = 0) -> None:
        init(self, sampler, k, capacity=1024)

    monkeypatch.setattr(tape_mod.AcceptanceTape, "__init__", tiny)
    got = simulate(scn, seed=2)
    pd.testing.assert_frame_equal(ref.requests, got.requests, check_exact=True)


@pytest.mark.parametrize(
    "over",
    [
        {"costs.source": "linear"},
        {"costs.source": "linear", "spec.k": 0},
        {"costs.source": "roofline"},
        {"costs.source": "roofline", "drafter": {"kind": "ngram"}},
        {"costs.source": "roofline", "drafter": {"kind": "model", "model": "llama-3.2-1b"}},
    ],
)
def test_vectorised_decode_costs_are_bit_identical(over: dict[str, Any]) -> None:
    scn = small(**over)
    cost = build_cost_model(scn)
    k = scn.spec.k
    for b in (1, 7, 64):
        ctx = np.array([b * 1, b * 130, b * 131, b * 4097, b * 60_000], dtype=np.int64)
        total, draft, verify, overhead = decode_step_times(cost, b, ctx, k)
        for i, c in enumerate(ctx.tolist()):
            st = cost.step(StepShape(b, c, k))
            assert (total[i], draft[i], verify[i], overhead[i]) == (
                st.total,
                st.draft,
                st.verify,
                st.overhead,
            )


def test_until_lands_exactly_where_no_delay_does() -> None:
    # No float d gives 0.04580727517794656 + d == 0.117317469995857 (the sums step over it):
    # the clock must still reach exactly that time, through public timeouts only.
    env = simpy.Environment(initial_time=0.04580727517794656)
    target = 0.117317469995857
    assert all(
        env.now + d != target
        for d in (target - env.now, math.nextafter(target - env.now, 1), math.nextafter(
            target - env.now, 0))
    )
    seen: list[float] = []

    def proc() -> Any:
        yield from until(env, target)
        seen.append(env.now)
        yield from until(env, target)  # already there: no wait
        seen.append(env.now)

    env.process(proc())
    env.run()
    assert seen == [target, target]
    for start, when in ((1.5, 2.75), (0.0, 0.3), (1e-9, 1234.5678)):
        env2 = simpy.Environment(initial_time=start)
        env2.process(until(env2, when))
        env2.run()
        assert env2.now == when
