"""The compiled engine path (sdsim/engine/compiled.py) against the reference loop, and its parts.

The reference is the Python/numpy loop (``fast_forward=False``); tests/test_fast_forward.py
compares the two over eleven scenario kinds. Here: the batch-formation branches those kinds
reach rarely (token budget cuts, partial prefill chunks, the sequence cap), the streaming path
(reusable slots, tapes written ahead by request id) request by request, the waiting queue's
deque semantics and the decode-cost table's values.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sdsim import simulate
from sdsim.costs.build import build_cost_model
from sdsim.costs.step import StepShape
from sdsim.engine.compiled import DecodeCostTable
from sdsim.engine.server import run_simulation
from sdsim.engine.state import IdQueue
from sdsim.workload import generate_workload
from tests.conftest import small

KINDS: dict[str, dict[str, Any]] = {
    # prompts of 128 tokens against a 100-token budget: partial chunks, decodes cut by budget
    "chunked prefill": {"server.max_num_batched_tokens": 100, "workload.rate": 12.0},
    # the sequence cap binds: admissions stop at max_num_seqs, a queue builds
    "sequence cap": {"server.max_num_seqs": 3, "workload.rate": 30.0, "workload.num_requests": 200},
    # preemptions (scheduler fallback) with varied lengths and a queue
    "kv pressure, varied": {
        "workload.rate": 25.0,
        "server.num_gpu_blocks": 48,
        "workload.prompt_tokens": {"dist": "uniform", "low": 16, "high": 200},
        "workload.output_tokens": {"dist": "uniform", "low": 1, "high": 160},
    },
    "plain decoding": {"spec.k": 0, "workload.rate": 10.0},
    # batches of up to ~80 requests: the kernels' running-set buffer grows (starts at 65)
    "large batches": {"workload.rate": 150.0},
    # overload stopped by the waiting limit: a decode run may not include the step an arrival
    # falls into when that arrival can stop the run
    # (seed 0: the stopping arrival falls inside a decode run's last step)
    "stopped by max_waiting": {
        "workload.rate": 40.0,
        "server.max_num_seqs": 8,
        "limits.max_waiting": 20,
    },
    "deadline, api delay": {
        "workload.rate": 3.0,
        "limits.max_sim_time_s": 15.0,
        "server.api_delay_s": 0.02,
    },
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_compiled_loop_matches_reference(kind: str) -> None:
    scn = small(**KINDS[kind])
    ref = simulate(scn, seed=0, fast_forward=False)
    got = simulate(scn, seed=0, fast_forward=True)
    pd.testing.assert_frame_equal(ref.requests, got.requests, check_exact=True)
    pd.testing.assert_frame_equal(ref.steps, got.steps, check_exact=True)
    assert ref.summary["stop_reason"] == got.summary["stop_reason"]
    if kind == "stopped by max_waiting":
        assert got.summary["stable"] is False and 0 < got.requests.finish.notna().sum() < 300


@pytest.mark.parametrize("kind", ["moderate", "kv pressure, varied"])
def test_streaming_requests_match_kept_records(kind: str) -> None:
    # Reusable slots, harvests and tapes written ahead by request id give every request the
    # same record as one slot per request (exact floats, including the finish times).
    scn = small(**({} if kind == "moderate" else KINDS[kind]))
    wl = generate_workload(scn, 4)
    cost = build_cost_model(scn)
    kept = run_simulation(scn, wl, cost, 4)
    kept.table.derive_counts()
    got: list[dict[str, np.ndarray]] = []
    steps: list[dict[str, np.ndarray]] = []
    run_simulation(scn, wl, cost, 4, request_sink=got.append, step_sink=steps.append)
    recs = pd.DataFrame({k: np.concatenate([g[k] for g in got]) for k in got[0]})
    recs = recs.sort_values("rid").reset_index(drop=True)
    ref = pd.DataFrame(kept.table.records(np.arange(len(wl))))
    pd.testing.assert_frame_equal(ref, recs[list(ref.columns)], check_exact=True)
    stream_steps = {k: np.concatenate([s[k] for s in steps]) for k in steps[0]}
    for name, col in kept.steps.items():
        np.testing.assert_array_equal(col, stream_steps[name], err_msg=name)
        assert col.dtype == stream_steps[name].dtype, name


def test_id_queue_behaves_like_deque() -> None:
    rng = np.random.default_rng(0)
    q = IdQueue(capacity=8)
    d: deque[int] = deque()
    nxt = 0
    for _ in range(3000):
        op = rng.integers(0, 4)
        if op == 0 or not d:
            q.append(nxt)
            d.append(nxt)
            nxt += 1
        elif op == 1:
            assert q.popleft() == d.popleft()
        elif op == 2:
            ids = rng.integers(0, 1000, size=int(rng.integers(0, 40))).tolist()
            q.extendleft(reversed(ids))
            d.extendleft(reversed(ids))
        else:
            assert q[0] == d[0] and q[-1] == d[-1]
        assert len(q) == len(d) and bool(q) == bool(d)
        assert list(q) == list(d)
    np.testing.assert_array_equal(np.asarray(q, dtype=np.int64), np.array(list(d), dtype=np.int64))
    q.clear()
    assert not q and len(q) == 0
    with pytest.raises(IndexError):
        q.popleft()
    with pytest.raises(IndexError):
        q[0]


@pytest.mark.parametrize("source", ["linear", "roofline"])
def test_decode_cost_table_is_bit_identical_to_step(source: str) -> None:
    scn = small(**{"costs.source": source})
    cost = build_cost_model(scn)
    k = scn.spec.k
    table = DecodeCostTable(cost, k)
    for b, ctx in ((3, 600), (3, 20_000), (3, 10), (17, 5_000), (3, 300)):
        table.extend(b, ctx)
        off, lo, n = table.cidx[:, b]
        assert lo <= ctx < lo + n
        for c in (lo, ctx, lo + n - 1):
            st = cost.step(StepShape(b, int(c), k))
            j = off + c - lo
            assert tuple(table.ctab[:, j]) == (st.total, st.draft, st.verify, st.overhead)


@given(
    rate=st.floats(2.0, 60.0),
    k=st.integers(0, 6),
    max_num_seqs=st.integers(1, 12),
    budget=st.integers(40, 600),
    blocks=st.one_of(st.none(), st.integers(30, 120)),
    prefill_first=st.booleans(),
    out_high=st.integers(1, 120),
    replicas=st.integers(1, 3),
    max_waiting=st.integers(3, 100),
    seed=st.integers(0, 1000),
)
def test_compiled_loop_matches_reference_on_random_servers(
    rate: float,
    k: int,
    max_num_seqs: int,
    budget: int,
    blocks: int | None,
    prefill_first: bool,
    out_high: int,
    replicas: int,
    max_waiting: int,
    seed: int,
) -> None:
    # Random server limits (sequence cap, token budget below and above the prompts, KV caches
    # that preempt, replicas behind the least-outstanding router, waiting limits that stop the
    # run) and lengths: the compiled path gives the reference loop's records exactly.
    over: dict[str, Any] = {
        "workload.rate": rate,
        "workload.num_requests": 60,
        "warmup_requests": 0,
        "spec.k": k,
        "server.max_num_seqs": max_num_seqs,
        "server.max_num_batched_tokens": budget,
        "server.scheduler": "prefill-first" if prefill_first else "vllm-v1",
        "workload.prompt_tokens": {"dist": "uniform", "low": 8, "high": 100},
        "workload.output_tokens": {"dist": "uniform", "low": 1, "high": out_high},
        "server.replicas": replicas,
        "server.router": "least-outstanding",
        "limits.max_waiting": max_waiting,
    }
    if blocks is not None:
        over["server.num_gpu_blocks"] = blocks
    scn = small(**over)
    ref = simulate(scn, seed=seed, fast_forward=False)
    got = simulate(scn, seed=seed, fast_forward=True)
    pd.testing.assert_frame_equal(ref.requests, got.requests, check_exact=True)
    pd.testing.assert_frame_equal(ref.steps, got.steps, check_exact=True)
    assert ref.summary["stop_reason"] == got.summary["stop_reason"]
