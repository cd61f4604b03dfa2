"""Paged KV cache: capacity derivation, block accounting, look-ahead slots, preemption."""

from __future__ import annotations

import numpy as np
import pytest
import simpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sdsim import simulate
from sdsim.costs.build import build_cost_model
from sdsim.engine.kvcache import (
    blocks_for,
    kv_free,
    kv_free_blocks,
    kv_hold,
    kv_keep,
)
from sdsim.engine.scheduler import FORMED, Batch, form_batch
from sdsim.engine.server import Engine
from sdsim.engine.state import RequestTable
from sdsim.errors import ScenarioError
from sdsim.memory import derive_num_gpu_blocks, kv_bytes_per_token
from sdsim.rng import counter_base, counter_uniform, counter_uniform_from_base
from sdsim.workload import Workload
from tests.conftest import small

GIB = 2**30


# --------------------------------------------------------------------------- capacity


def test_kv_bytes_per_token_llama_8b() -> None:
    # Llama-3.1-8B: 32 layers, 8 KV heads of dim 128, bf16 -> 128 KiB per token (keys + values)
    assert kv_bytes_per_token(32, 8, 128, 2) == 131072


def test_derive_num_gpu_blocks_by_hand() -> None:
    # 80 GiB x 0.9 = 72 GiB; minus 15 GiB weights (verifier + drafter) and 1 GiB reserve = 56 GiB;
    # verifier 128 KiB/token + a one-layer drafter 4 KiB/token = 132 KiB/token; 16-token blocks
    # of 2112 KiB -> floor(56 GiB / 2112 KiB) = floor(27803.15...) = 27803.
    per_tok = kv_bytes_per_token(32, 8, 128, 2) + kv_bytes_per_token(1, 8, 128, 2)
    n = derive_num_gpu_blocks(80 * GIB, 0.9, 15 * GIB, 1 * GIB, per_tok, 16)
    assert n == (56 * GIB) // (132 * 1024 * 16) == 27803
    # the drafter's cache counts: without it more blocks fit
    assert derive_num_gpu_blocks(80 * GIB, 0.9, 15 * GIB, 1 * GIB, 131072, 16) > n
    # lower utilisation, fewer blocks; fp8 cache (half the bytes), twice the blocks (+-1 floor)
    assert derive_num_gpu_blocks(80 * GIB, 0.5, 15 * GIB, 1 * GIB, per_tok, 16) < n
    fp8 = derive_num_gpu_blocks(80 * GIB, 0.9, 15 * GIB, 1 * GIB, per_tok / 2, 16)
    assert abs(fp8 - 2 * n) <= 1


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ((80 * GIB, 0.9, 80 * GIB, 0, 131072, 16), "server.num_gpu_blocks"),  # weights fill it
        ((80 * GIB, 1.5, 1 * GIB, 0, 131072, 16), "server.gpu_memory_utilization"),
        ((80 * GIB, 0.9, 1 * GIB, 0, 0.0, 16), "server.num_gpu_blocks"),
        ((80 * GIB, 0.9, 1 * GIB, 0, 131072, 0), "server.block_size"),
        ((float("nan"), 0.9, 1 * GIB, 0, 131072, 16), "server.num_gpu_blocks"),
    ],
)
def test_derive_num_gpu_blocks_rejects_bad_input(args: tuple, field: str) -> None:
    with pytest.raises(ScenarioError) as exc:
        derive_num_gpu_blocks(*args)
    assert exc.value.field == field
    assert "\n" not in str(exc.value)


def test_block_functions_and_check() -> None:
    # the four functions every allocation goes through, on a 10-block cache of 16-token blocks
    rep = _Replica([20] * 6, [10] * 6, blocks=10)
    t, e, kv = rep.t, rep.state[0], rep.kv
    assert [blocks_for(n, 16) for n in (0, 1, 16, 17)] == [0, 1, 1, 2]
    a = kv.arrays
    assert kv_hold(t.data, e, a, 1, 17) and kv_hold(t.data, e, a, 3, 48)  # 2 + 3 blocks
    assert kv.used == 5 and kv_free_blocks(e) == 5
    kv.check(np.array([1, 3]))
    assert not kv_hold(t.data, e, a, 3, 16 * 9)  # 6 more blocks: only 5 are free; nothing changes
    assert (t.kv_blocks[3], kv.used) == (3, 5)
    assert kv_hold(t.data, e, a, 3, 16)  # holds more than asked already: unchanged
    assert t.kv_blocks[3] == 3
    kv_keep(t.data, e, a, 3, 20)  # back to 2 blocks
    kv_free(t.data, e, a, 1, False)
    assert (t.kv_blocks[1], t.kv_blocks[3], kv.used) == (0, 2, 2)
    kv.check(np.array([3]))
    t.kv_blocks[4] = 2  # a request holding blocks the cache does not count
    with pytest.raises(AssertionError, match="hold 4"):
        kv.check(np.array([3, 4]))


def test_counter_base_matches_counter_uniform() -> None:
    i = np.arange(50)
    j = np.arange(50) * 7 + 3
    np.testing.assert_array_equal(
        counter_uniform_from_base(counter_base(123, i), j), counter_uniform(123, i, j)
    )


# --------------------------------------------------------------------------- scheduler unit


class _Replica:
    """One replica's state (a real Engine's arrays), driven through ``form_batch`` directly."""

    def __init__(
        self,
        prompt: list[int],
        output: list[int],
        blocks: int,
        budget: int = 1000,
        max_num_seqs: int = 8,
    ) -> None:
        n = len(prompt)
        scn = small(
            **{
                "server.num_gpu_blocks": blocks,
                "server.max_num_batched_tokens": budget,
                "server.max_num_seqs": max_num_seqs,
                "workload.prompt_tokens": 8,
                "workload.output_tokens": 8,
            }
        )
        wl = Workload(
            arrival=np.arange(n, dtype=np.float64),
            prompt=np.asarray(prompt, dtype=np.int64),
            output=np.asarray(output, dtype=np.int64),
            alpha=np.full(n, 0.7),
        )
        self.t = RequestTable(wl)
        self.engine = Engine(simpy.Environment(), scn, self.t, build_cost_model(scn))
        self.state = self.engine.state
        self.kv = self.engine.kv

    def running(self, ids: list[int], generated: list[int]) -> None:
        """Put ``ids`` in the decoding state with ``generated`` tokens and their blocks held."""
        t, e = self.t, self.state[0]
        for r, g in zip(ids, generated, strict=True):
            t.prefilled[r] = t.prefill_target[r]
            t.generated[r] = g
            assert kv_hold(t.data, e, self.kv.arrays, r, int(t.prompt[r]) + g - 1)
            self.engine.run[int(e["running"])] = r
            e["running"] += 1

    def wait(self, ids: list[int]) -> None:
        for r in ids:
            self.engine.waiting.append(r)

    def form(self, k: int) -> Batch:
        eng = self.engine
        eng.waiting.reserve_front(len(eng.run))
        got = form_batch(
            self.t.data, self.state[0], self.kv.arrays, eng.run, eng.batch, eng.waiting.buf, k, 0.0
        )
        assert got == FORMED
        return eng.batch_view()


def test_lookahead_reserved_for_k_plus_one_tokens() -> None:
    rep = _Replica([30, 40], [100, 100], blocks=100)
    rep.running([0, 1], [3, 9])  # hold 32 -> 2 blocks and 48 -> 3 blocks
    assert rep.kv.used == 5
    b = rep.form(4)
    # reserve prompt + generated + k: 37 -> 3 blocks, 53 -> 4 blocks
    np.testing.assert_array_equal(b.decode_blocks, [3, 4])
    np.testing.assert_array_equal(b.decode_context, [33, 49])
    assert rep.kv.used == 7 and len(b.preempted) == 0


def test_preempts_most_recent_and_requeues_at_front() -> None:
    # four decoding requests, each holding 2 blocks of 16; 8 of 9 blocks used, each needs one
    # more block for its look-ahead: requests are preempted from the back until the rest fit
    rep = _Replica([20] * 5, [100] * 5, blocks=9)
    t = rep.t
    rep.running([0, 1, 2, 3], [12, 12, 12, 12])  # 31 tokens held -> 2 blocks each
    rep.wait([4])
    b = rep.form(4)
    # need 3 blocks each (36 tokens): 0, 1, 2 -> 9 blocks after 3 is preempted (frees 2)
    np.testing.assert_array_equal(b.decode_ids, [0, 1, 2])
    np.testing.assert_array_equal(b.preempted, [3])
    np.testing.assert_array_equal(rep.engine.run_ids, [0, 1, 2])
    assert list(rep.engine.waiting) == [3, 4]  # front of the queue; no admission after preempting
    assert b.admitted == []
    assert t.preemptions[3] == 1 and t.kv_blocks[3] == 0 and t.prefilled[3] == 0
    assert t.prefill_target[3] == 20 + 12  # recomputation covers prompt + generated tokens
    assert rep.kv.used == 9 and rep.state[0]["preemptions"] == 1
    rep.kv.check(rep.engine.run_ids)


def test_preemption_stops_at_a_request_that_cannot_fit() -> None:
    # 0 holds 6 blocks, 1 holds 3; 1 block free. With k = 16, 0 needs 2 more (113 tokens) and
    # fits once 1 is preempted; 1 cannot fit behind it, so 1 is preempted itself.
    rep = _Replica([40, 40, 40], [200] * 3, blocks=10)
    rep.running([0, 1], [57, 9])  # 0: 96 tokens -> 6 blocks; 1: 48 -> 3 blocks
    rep.wait([2])
    b = rep.form(16)
    np.testing.assert_array_equal(b.decode_ids, [0])
    np.testing.assert_array_equal(b.preempted, [1])
    assert list(rep.engine.waiting) == [1, 2]
    assert rep.kv.used == 8
    rep.kv.check(rep.engine.run_ids)


def test_preemption_takes_the_tail_beyond_the_token_budget() -> None:
    # The budget holds two decodes (k = 4: 5 tokens each); the two selected need one block each
    # and one is free: the last admitted (3) is preempted, not a selected request.
    rep = _Replica([20] * 4, [100] * 4, blocks=9, budget=10)
    rep.running([0, 1, 2, 3], [12] * 4)
    b = rep.form(4)
    np.testing.assert_array_equal(b.decode_ids, [0, 1])
    np.testing.assert_array_equal(b.preempted, [3])
    np.testing.assert_array_equal(rep.engine.run_ids, [0, 1, 2])
    assert rep.kv.used == 8
    rep.kv.check(rep.engine.run_ids)


def test_admission_needs_blocks_for_the_chunk() -> None:
    rep = _Replica([100, 100, 100], [10] * 3, blocks=8)  # 128 tokens: one 100-token prompt fits
    rep.wait([0, 1, 2])
    b = rep.form(2)
    assert b.admitted == [0] and list(rep.engine.waiting) == [1, 2]
    np.testing.assert_array_equal(rep.engine.run_ids, [0])
    np.testing.assert_array_equal(b.prefill_chunks, [100])
    assert rep.kv.used == 7
    assert rep.t.first_scheduled[0] == 0.0 and np.isnan(rep.t.first_scheduled[1])


# --------------------------------------------------------------------------- whole engine


def _conservation_hook(seen: list[int]):
    def hook(engine: Engine, batch: Batch) -> None:
        t = engine.t
        kv = engine.kv
        run = engine.run_ids
        # allocated + free = total, and every allocated block belongs to a running request
        kv.check(run)
        mine = t.replica == engine.replica
        assert int(t.kv_blocks[mine].sum()) == kv.used
        assert engine.kv_in_step <= kv.capacity and kv.used <= engine.kv_in_step
        bs = kv.block_size
        if batch.decode_ids.shape[0]:
            np.testing.assert_array_equal(
                batch.decode_blocks, (batch.decode_context + engine.k + bs - 1) // bs
            )
            alive = batch.decode_ids[np.isnan(t.finish[batch.decode_ids])]
            held = (t.prompt[alive] + t.generated[alive] - 1 + bs - 1) // bs
            np.testing.assert_array_equal(t.kv_blocks[alive], held)
            seen.append(int(batch.decode_blocks.sum() - t.kv_blocks[batch.decode_ids].sum()))
        fin = np.flatnonzero(~np.isnan(t.finish) & mine)
        assert (t.kv_blocks[fin] == 0).all()

    return hook


@pytest.mark.parametrize("block_size", [1, 16])
def test_block_conservation_every_step_unlimited_and_tight(block_size: int) -> None:
    for blocks in (None, 400):
        released: list[int] = []
        scn = small(
            **{
                "server.block_size": block_size,
                "server.num_gpu_blocks": (
                    "unlimited" if blocks is None else blocks * 16 // block_size
                ),
                "workload.rate": 40.0,
                "workload.output_tokens": {"dist": "uniform", "low": 1, "high": 120},
            }
        )
        res = simulate(scn, on_step=_conservation_hook(released))
        assert res.requests["finish"].notna().all()
        assert sum(released) > 0  # rejected drafts gave slots back
        cap = scn.server.num_gpu_blocks
        assert (res.steps["kv_blocks_used"] <= (cap if isinstance(cap, int) else 1 << 62)).all()


def test_preemption_under_tight_kv_every_request_completes_once() -> None:
    # 1000 tokens of cache for requests of up to 128 + 240 tokens at a load that wants ~2000:
    # preemption is certain. Seed 1.
    scn = small(
        **{
            "server.num_gpu_blocks": 64,
            "workload.rate": 30.0,
            "workload.output_tokens": {"dist": "uniform", "low": 20, "high": 240},
        }
    )
    prev: list[np.ndarray] = []

    def hook(engine: Engine, batch: Batch) -> None:
        t = engine.t
        engine.kv.check(engine.run_ids)
        assert engine.kv.used <= 64 and engine.kv_in_step <= 64
        done = ~np.isnan(t.finish)
        if prev:
            was = ~np.isnan(prev[0])
            # finished exactly once: a finish time is never moved or cleared
            np.testing.assert_array_equal(t.finish[was], prev[0][was])
            prev[0] = t.finish.copy()
        else:
            prev.append(t.finish.copy())
        live = np.concatenate([engine.run_ids, np.asarray(engine.waiting, dtype=np.int64)])
        assert not done[live].any()  # a finished request is never scheduled again
        assert np.unique(live).shape[0] == live.shape[0]  # nor is anything queued twice
        assert (t.generated <= t.output).all()

    res = simulate(scn, on_step=hook)
    df = res.requests
    st = res.steps
    assert res.summary["preemptions"] > 20
    assert st["preempted"].sum() == df["preemptions"].sum() == res.summary["preemptions"]
    assert df["finish"].notna().all()
    assert st["emitted"].sum() == df["output_tokens"].sum()  # exactly its output tokens
    pre = df[df["preemptions"] > 0]
    # a preempted request redoes prefill over prompt + generated tokens: more prefill work
    assert st["prefill_tokens"].sum() > df["prompt_tokens"].sum()
    assert (pre["first_token"] <= pre["finish"]).all()
    assert (st["kv_blocks_used"] <= 64).all()


def test_acceptance_draws_do_not_depend_on_scheduling() -> None:
    # Counter-based draws: a request never preempted gets the same acceptance luck whatever the
    # KV cache did to the others, so its steps and accepted tokens match the unlimited run.
    over = {
        "workload.rate": 30.0,
        "workload.output_tokens": {"dist": "uniform", "low": 20, "high": 240},
    }
    free = simulate(small(**over)).requests
    tight = simulate(small(**over, **{"server.num_gpu_blocks": 64})).requests
    clean = tight["preemptions"] == 0
    assert clean.sum() > 50 and (~clean).sum() > 10
    for col in ("steps", "accepted", "drafted"):
        np.testing.assert_array_equal(free.loc[clean, col], tight.loc[clean, col])
    assert (tight.loc[clean, "e2e"] >= 0).all()


def test_kv_too_small_for_longest_request_is_a_scenario_error() -> None:
    # 128 + 64 - 1 + 4 = 195 tokens need 13 blocks: refused when the scenario loads (as an
    # engine refuses to start when its KV cache cannot hold max_model_len)
    with pytest.raises(ScenarioError) as exc:
        small(**{"server.num_gpu_blocks": 10})
    assert exc.value.field == "server.num_gpu_blocks"
    assert ">= 13" in str(exc.value)
    # ... and when the simulation reads the actual lengths (traces, replayed reports)
    from sdsim.engine.server import check_kv_fits
    from sdsim.workload import generate_workload

    wl = generate_workload(small())
    with pytest.raises(ScenarioError, match=">= 13"):
        check_kv_fits(small(**{"server.num_gpu_blocks": 10, "workload.output_tokens": 8}), wl)
    assert simulate(small(**{"server.num_gpu_blocks": 13})).summary["completed"] == 300


def test_kv_limit_that_never_binds_changes_nothing() -> None:
    a = simulate(small())
    b = simulate(small(**{"server.num_gpu_blocks": 100_000}))
    cols = [c for c in a.steps.columns if c != "kv_blocks_used"]
    assert a.requests.equals(b.requests) and a.steps[cols].equals(b.steps[cols])
    np.testing.assert_array_equal(a.steps["kv_blocks_used"], b.steps["kv_blocks_used"])
    assert b.summary["preemptions"] == 0 and 0 < b.summary["kv_util_mean"] < 1


@settings(
    max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    block_size=st.sampled_from([1, 8, 16, 32]),
    slack=st.integers(0, 400),
    k=st.integers(0, 6),
    policy=st.sampled_from(["vllm-v1", "prefill-first"]),
    adaptive=st.booleans(),
    budget=st.integers(40, 600),
    seqs=st.integers(1, 24),
    seed=st.integers(0, 1000),
)
def test_property_any_tight_cache_completes_every_request_once(
    block_size: int,
    slack: int,
    k: int,
    policy: str,
    adaptive: bool,
    budget: int,
    seqs: int,
    seed: int,
) -> None:
    # Any capacity from the smallest legal one upwards, any policy: blocks are conserved after
    # every step, use never exceeds capacity, and every request finishes with its output tokens.
    k_top = max(k, 6) if adaptive else k
    longest = 300 + 60 - 1 + k_top
    blocks = -(-longest // block_size) + slack // block_size
    scn = small(
        **{
            "spec.k": k,
            "spec.policy": "adaptive" if adaptive else "fixed",
            "spec.k_max": 6,
            "server.block_size": block_size,
            "server.num_gpu_blocks": blocks,
            "server.scheduler": policy,
            "server.max_num_batched_tokens": budget,
            "server.max_num_seqs": seqs,
            "workload.rate": 50.0,
            "workload.num_requests": 60,
            "warmup_requests": 5,
            "workload.prompt_tokens": {"dist": "uniform", "low": 1, "high": 300},
            "workload.output_tokens": {"dist": "uniform", "low": 1, "high": 60},
        }
    )

    def hook(engine: Engine, batch: Batch) -> None:
        engine.kv.check(engine.run_ids)
        assert engine.kv_in_step <= blocks
        tokens = int(batch.prefill_chunks.sum()) + batch.decode_ids.shape[0] * (engine.k + 1)
        assert 0 < tokens <= budget and batch.num_seqs <= seqs

    res = simulate(scn, seed=seed, on_step=hook)
    df = res.requests
    assert df["finish"].notna().all()
    assert res.steps["emitted"].sum() == df["output_tokens"].sum()
    assert res.steps["preempted"].sum() == df["preemptions"].sum()
    assert (df["first_token"] <= df["finish"]).all()
