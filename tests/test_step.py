"""The step (sdsim/engine/step.py and the functions it calls), compiled and as plain Python.

The compiled functions against the same functions run as Python (``SDSIM_NO_JIT=1``, in a
subprocess: the switch is read at import); steps run ahead of the clock against steps on the
clock (``fast_forward=False``) in the batch-formation branches tests/test_fast_forward.py's kinds
reach rarely (token budget cuts, partial prefill chunks, the sequence cap), and over random
servers; the streaming path (reusable slots, tapes written ahead by request id) request by
request; abort; the waiting queue's deque semantics and the price cache's values.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import deque
from typing import Any

import numpy as np
import pandas as pd
import pytest
import simpy
from hypothesis import given
from hypothesis import strategies as st

from sdsim import simulate
from sdsim.costs.build import build_cost_model
from sdsim.costs.step import StepShape
from sdsim.engine.prices import DecodePrices, cached_price
from sdsim.engine.server import run_simulation
from sdsim.engine.state import (
    IdQueue,
    front_room,
    pop_front,
    push_front,
    waiting_count,
    waiting_front,
)
from sdsim.scenario import MAX_BATCHED_TOKENS, MAX_GPU_BLOCKS, MAX_NUM_SEQS, Scenario
from sdsim.workload import generate_workload
from tests.conftest import ROOT, small

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


# Runs the pinned cases (fewer requests) in a process where the step functions are plain Python.
_PLAIN = """
import json
import sdsim._jit
import sdsim.engine.step as step
from sdsim import simulate
from tests.conftest import small
from tests.test_engine_pinned import CASES, frame_hash
assert sdsim._jit.NO_JIT and not hasattr(step.advance, "py_func")
out = {}
for case, over in CASES.items():
    for ff in (True, False):
        res = simulate(small(**over, **{"workload.num_requests": 80}), seed=5, fast_forward=ff)
        out[f"{case}, {ff}"] = [frame_hash(res.requests), frame_hash(res.steps)]
print(json.dumps(out))
"""


def test_compiled_step_gives_the_records_of_the_plain_python_step() -> None:
    # The same functions, compiled here and run as Python (SDSIM_NO_JIT=1) there: the same
    # records to the last bit, on and off the clock, in the four pinned scenario kinds.
    from tests.test_engine_pinned import CASES, frame_hash

    env = {**os.environ, "SDSIM_NO_JIT": "1", "PYTHONPATH": str(ROOT)}
    got = subprocess.run(
        [sys.executable, "-c", _PLAIN],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )
    assert got.returncode == 0, got.stderr[-3000:]
    plain = json.loads(got.stdout.splitlines()[-1])
    for case, over in CASES.items():
        for ff in (True, False):
            res = simulate(small(**over, **{"workload.num_requests": 80}), seed=5, fast_forward=ff)
            assert plain[f"{case}, {ff}"] == [frame_hash(res.requests), frame_hash(res.steps)]


def test_compiled_step_cache_key_covers_every_module_it_is_built_from() -> None:
    # numba caches the step under the file that defines its entry point; the key it carries
    # (a hash of SOURCES) must cover every engine module with compiled functions, so that an
    # edit to any of them recompiles the step instead of loading a stale one.
    import sdsim.engine.step as step

    engine = ROOT / "sdsim" / "engine"
    compiled = {p.name for p in engine.glob("*.py") if "@jit" in p.read_text()}
    assert compiled <= set(step.SOURCES) and (engine / "schema.py").name in step.SOURCES
    if hasattr(step.advance, "py_func"):  # compiled (not under SDSIM_NO_JIT)
        cells = [c.cell_contents for c in step.advance.py_func.__closure__ or ()]
        assert step._sources_key() in cells


@pytest.mark.parametrize("kind", list(KINDS))
def test_steps_ahead_match_steps_on_the_clock(kind: str) -> None:
    scn = small(**KINDS[kind])
    ref = simulate(scn, seed=0, fast_forward=False)
    got = simulate(scn, seed=0, fast_forward=True)
    pd.testing.assert_frame_equal(ref.requests, got.requests, check_exact=True)
    pd.testing.assert_frame_equal(ref.steps, got.steps, check_exact=True)
    assert ref.summary["stop_reason"] == got.summary["stop_reason"]
    if kind == "stopped by max_waiting":
        assert got.summary["stable"] is False and 0 < got.requests.finish.notna().sum() < 300


@pytest.mark.parametrize(
    ("kind", "tiny"), [("moderate", False), ("kv pressure, varied", False), ("moderate", True)]
)
def test_streaming_requests_match_kept_records(
    kind: str, tiny: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Reusable slots, harvests and tapes written ahead by request id give every request the
    # same record as one slot per request (exact floats, including the finish times). Tiny:
    # tapes written 7 request ids at a time into a 1024-entry arena, so the arena is compacted
    # (and grown) every few arrivals, keeping the tapes written ahead and not yet assigned.
    scn = small(**({} if kind == "moderate" else KINDS[kind]))
    wl = generate_workload(scn, 4)
    cost = build_cost_model(scn)
    kept = run_simulation(scn, wl, cost, 4)
    if tiny:
        import sdsim.engine.server as server_mod
        import sdsim.engine.tape as tape_mod

        init = tape_mod.AcceptanceTape.__init__

        def small_arena(self: Any, sampler: Any, k: Any, capacity: int = 0) -> None:
            init(self, sampler, k, capacity=1024)

        monkeypatch.setattr(tape_mod.AcceptanceTape, "__init__", small_arena)
        monkeypatch.setattr(server_mod, "TAPE_PREFETCH", 7)
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


def test_waiting_queue_behaves_like_deque() -> None:
    # Arrivals append in Python; the step pops and pushes at the front (compiled functions).
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
            assert waiting_front(q.buf) == d[0]
            assert pop_front(q.buf) == d.popleft()
        elif op == 2:
            ids = rng.integers(0, 1000, size=int(rng.integers(0, 40))).tolist()
            q.reserve_front(len(ids))
            assert front_room(q.buf) >= len(ids)
            for r in reversed(ids):
                push_front(q.buf, r)
            d.extendleft(reversed(ids))
        assert len(q) == len(d) == waiting_count(q.buf) and bool(q) == bool(d)
        assert list(q) == list(d)
    np.testing.assert_array_equal(np.asarray(q, dtype=np.int64), np.array(list(d), dtype=np.int64))


@pytest.mark.parametrize("source", ["linear", "roofline"])
def test_price_cache_is_bit_identical_to_step(source: str) -> None:
    scn = small(**{"costs.source": source})
    cost = build_cost_model(scn)
    k = scn.spec.k
    prices = DecodePrices(cost, k)
    assert cached_price(prices.rows, prices.spans, 3, 600) == -1
    for b, ctx in ((3, 600), (3, 20_000), (3, 10), (17, 5_000), (3, 300)):
        prices.extend(b, ctx)
        span = prices.spans[b]
        lo, n = int(span["first"]), int(span["count"])
        assert lo <= ctx < lo + n
        assert cached_price(prices.rows, prices.spans, b, lo + n) == -1
        for c in (lo, ctx, lo + n - 1):
            st = cost.step(StepShape(b, int(c), k))
            row = prices.rows[cached_price(prices.rows, prices.spans, b, c)]
            assert tuple(row[f] for f in st._fields) == tuple(st)


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
def test_steps_ahead_match_steps_on_the_clock_on_random_servers(
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
    # run) and lengths: steps run ahead give the step-by-step records exactly.
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


# --------------------------------------------------------------------------- abort


def test_abort_running_and_waiting_requests_leave_at_the_next_boundary() -> None:
    # A sequence cap of 4 at 40 req/s builds a queue. After the 30th step a hook aborts the
    # newest running request and the last waiting one: at the next step boundary (the same
    # instant: the hook runs at a step's end, before the next batch is formed) both leave, their
    # blocks are freed, and no later step schedules them. Seed 2.
    scn = small(
        **{
            "server.max_num_seqs": 4,
            "workload.rate": 40.0,
            "workload.num_requests": 60,
            "warmup_requests": 5,
            "server.num_gpu_blocks": 200,
        }
    )
    seen: dict[str, Any] = {"steps": 0}

    def hook(engine: Any, batch: Any) -> None:
        seen["steps"] += 1
        t = engine.t
        if seen["steps"] == 30:
            run, waiting = engine.run_ids, list(engine.waiting)
            assert run.shape[0] and waiting
            r, w = int(run[-1]), int(waiting[-1])
            assert t.kv_blocks[r] > 0
            assert engine.abort(r) and engine.abort(w)
            assert not engine.abort(r)  # already being aborted
            seen.update(targets=(r, w), at=engine.env.now, generated=int(t.generated[r]))
        elif "targets" in seen:
            r, w = seen["targets"]
            ids = np.concatenate([batch.decode_ids, batch.prefill_ids])
            assert r not in ids and w not in ids
            assert r not in engine.run_ids and w not in list(engine.waiting)
            assert t.kv_blocks[r] == 0 and t.kv_blocks[w] == 0
            engine.kv.check(engine.run_ids)
            assert not engine.abort(r)  # gone

    res = simulate(scn, seed=2, on_step=hook)
    df = res.requests
    r, w = seen["targets"]
    assert df["aborted"].tolist().count(True) == 2 and df.at[r, "aborted"] and df.at[w, "aborted"]
    assert df.at[r, "finish"] == seen["at"] == df.at[w, "finish"]
    assert np.isnan(df.at[w, "first_token"])  # never admitted
    done = df[~df["aborted"]]
    assert done["finish"].notna().all()
    s = res.summary
    assert s["aborted"] == 2 and s["completed"] == 58
    # counted, not measured: latencies and token statistics cover completed requests only
    meas = done[~done["warmup"]]
    assert s["measured"] == len(meas)
    assert s["e2e_mean"] == pytest.approx(meas["e2e"].mean(), rel=1e-12)
    # the aborted running request stopped emitting: tokens out = completed outputs + its part
    assert res.steps["emitted"].sum() == done["output_tokens"].sum() + seen["generated"]
    assert df.at[r, "output_tokens"] > seen["generated"]
    # and the streaming statistics agree
    streamed = simulate(scn, seed=2, on_step=_abort_at_30(), keep_records=False).summary
    for key in ("aborted", "completed", "measured", "e2e_mean", "little_residual"):
        assert streamed[key] == pytest.approx(s[key], rel=1e-9), key


def _abort_at_30() -> Any:
    """A hook aborting the newest running and the last waiting request after step 30."""
    n = [0]

    def hook(engine: Any, batch: Any) -> None:
        n[0] += 1
        if n[0] == 30:
            assert engine.abort(int(engine.run_ids[-1]))
            assert engine.abort(int(list(engine.waiting)[-1]))

    return hook


def test_abort_mid_step_of_a_request_finishing_in_that_step_is_no_abort() -> None:
    # Two requests prefill in the first step; request 0 wants one token, so the prefill step
    # finishes it. Aborts asked for mid-step take effect at the step's end: request 0 has
    # finished by then (a completion, not an abort), request 1 leaves aborted at that time.
    from sdsim.engine.schema import ABORT_DONE
    from sdsim.engine.server import Engine
    from sdsim.engine.state import RequestTable
    from sdsim.rng import stream_key
    from sdsim.workload import Workload

    scn = small()
    wl = Workload(
        arrival=np.zeros(2),
        prompt=np.array([64, 64], dtype=np.int64),
        output=np.array([1, 50], dtype=np.int64),
        alpha=np.full(2, 0.7),
    )
    env = simpy.Environment()
    table = RequestTable(wl, accept_key=stream_key(1, "acceptance"))
    ends: list[float] = []
    engine = Engine(
        env, scn, table, build_cost_model(scn), on_step=lambda e, b: ends.append(e.env.now)
    )
    env.process(engine.loop())
    engine.enqueue(0)
    engine.enqueue(1)
    env.run(until=1e-4)  # inside the first step
    assert engine.run_ids.tolist() == [0, 1]
    assert engine.abort(0) and engine.abort(1)
    env.run()
    assert len(ends) == 1  # nothing ran after the first step
    assert table.finish[0] == table.finish[1] == ends[0]
    assert table.aborted[0] == 0 and table.aborted[1] == ABORT_DONE
    assert table.generated.tolist() == [1, 1] and engine.kv.used == 0
    assert engine.run_ids.shape[0] == 0 and not engine.waiting
    assert not engine.abort(0) and not engine.abort(5)  # finished; not a request


_LIMIT_FIELDS = {
    "server.max_num_seqs": MAX_NUM_SEQS,
    "server.max_num_batched_tokens": MAX_BATCHED_TOKENS,
    "server.num_gpu_blocks": MAX_GPU_BLOCKS,
    "limits.max_waiting": 10**9,
}


def _unvalidated(scn: Scenario, field: str, value: int) -> Scenario:
    """``scn`` with ``field`` set past the schema's bounds (a library caller's object)."""
    section, name = field.split(".")
    part = getattr(scn, section).model_copy(update={name: value})
    return scn.model_copy(update={section: part})


@pytest.mark.parametrize("field", list(_LIMIT_FIELDS))
def test_limits_beyond_int64_run_as_unlimited(field: str) -> None:
    # The scenario refuses a limit past its bound (tests/test_hardening.py); a Scenario object
    # built without validation can still carry 2**63, past the engine's int64 counts: the engine
    # runs it as unlimited in effect, the same run as the largest limit the scenario accepts
    # (no OverflowError from the step's state).
    base = small(**{"workload.num_requests": 40, "warmup_requests": 2})
    largest = simulate(base.with_overrides({field: _LIMIT_FIELDS[field]}), seed=1)
    huge = simulate(_unvalidated(base, field, 2**63), seed=1)
    assert huge.summary["completed"] == 40
    pd.testing.assert_frame_equal(huge.steps, largest.steps, check_exact=True)
