"""Prefix caching in the engine (sdsim/engine/kvcache.py): hand-computed hits, the pinned records
with caching on, and properties of the block books under random servers and workloads."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sdsim import simulate
from sdsim.costs.build import build_cost_model
from sdsim.engine.scheduler import Batch
from sdsim.engine.server import Engine, run_simulation
from sdsim.records import SimRun
from sdsim.scenario import Scenario
from tests.conftest import small
from tests.test_engine_pinned import CASES, PINNED, _pinned_columns, _pinned_steps, frame_hash


def _run(
    scn: Scenario,
    prompt: npt.ArrayLike,
    output: npt.ArrayLike,
    groups: npt.ArrayLike | None = None,
    prefix_len: npt.ArrayLike | None = None,
    gap: float = 2.0,
    seed: int = 1,
    check: bool = True,
) -> SimRun:
    """Requests arriving every ``gap`` s (one at a time when it is long), checked every step."""
    from sdsim.workload import Workload

    p = np.asarray(prompt, dtype=np.int64)
    n = p.shape[0]
    wl = Workload(
        arrival=np.arange(n, dtype=np.float64) * gap,
        prompt=p,
        output=np.broadcast_to(np.asarray(output, dtype=np.int64), (n,)).copy(),
        alpha=np.full(n, 0.7),
        prefix_group=None if groups is None else np.asarray(groups, dtype=np.int64),
        prefix_len=(
            None if prefix_len is None else np.broadcast_to(np.asarray(prefix_len), (n,)).copy()
        ),
    )
    hook = _books_hook if check else None
    return run_simulation(scn, wl, build_cost_model(scn), seed, on_step=hook)


def _books_hook(engine: Engine, batch: Batch) -> None:
    """After every step: the block books balance (reference counts are the holdings, the free
    list is the unreferenced blocks, the map finds every cached block), and every block a
    running request holds that is cached carries that request's own key for its position (so a
    hit never handed it another prefix's block, and no referenced block was evicted and reused)."""
    kv = engine.kv
    kv.check(engine.run_ids)
    t = engine.t
    bs = kv.block_size
    for r in engine.run_ids.tolist():
        row = int(t.kv_row[r])
        for j in range(int(t.kv_blocks[r])):
            b = kv.blocks[kv.rows[row, j]]
            if b["node"] < 0:
                continue
            if (j + 1) * bs <= t.pfx_len[r]:
                want = 4 * int(t.pfx_group[r])
            elif t.conv[r] >= 0:
                want = 4 * int(t.conv[r]) + 1
            else:
                want = 4 * int(t.rid[r]) + 3
            assert (int(b["node"]), int(b["idx"])) == (want, j), (r, j)


# --------------------------------------------------------------------------- hand-computed


def test_shared_system_prompt_hits_after_the_first() -> None:
    # Every request starts with the same 1,024-token system prompt (64 blocks of 16), then 76
    # tokens of its own; no drafter (k = 0: nothing dropped from a hit). Requests are 2 s apart,
    # so each runs alone: the first computes its whole prompt, every later one hits the 64 blocks
    # and computes prompt - 1,024 = 76 tokens (the hit covers at most prompt - 1 tokens).
    scn = small(**{"spec.k": 0, "server.num_gpu_blocks": 200})
    run = _run(scn, [1100] * 12, 20, groups=[0] * 12, prefix_len=1024)
    t = run.table
    np.testing.assert_array_equal(t.cached_tokens, [0] + [1024] * 11)
    pf = run.steps["prefill_tokens"][run.steps["prefill_tokens"] > 0]
    np.testing.assert_array_equal(pf, [1100] + [76] * 11)
    np.testing.assert_array_equal(run.steps["cached_tokens"].sum(), 11 * 1024)
    assert run.engines[0].kv.evictions == 0


def test_eagle_recomputes_the_last_hit_block() -> None:
    # vLLM drops the last hit block for an EAGLE drafter (its hidden states are needed): 63
    # blocks = 1,008 tokens from the cache, 92 computed.
    scn = small(**{"spec.k": 4, "drafter.kind": "eagle", "server.num_gpu_blocks": 200})
    run = _run(scn, [1100] * 5, 20, groups=[0] * 5, prefix_len=1024)
    np.testing.assert_array_equal(run.table.cached_tokens, [0] + [1008] * 4)


@pytest.mark.parametrize("short", [0, 20, 63, 64])
def test_cache_too_small_for_two_prompts_hits_what_lru_leaves(short: int) -> None:
    # Two system prompts A, B (1,024 tokens = 64 blocks each) alternate, one request at a time;
    # prompts 1,088 tokens (68 blocks), outputs 17: a request ends holding 1,104 tokens = 69
    # blocks (k = 0), all full and cached when freed, tail first into the free list. With
    # capacity 69 + 64 - short blocks the free list before B's request is [A's 5 own blocks,
    # A's 64 prompt blocks from the last], after `64 - short` never-used blocks; B takes the
    # never-used ones, then 5 + short from the head: A's own and A's last `short` prompt blocks.
    # From the third request on each finds 64 - short blocks of its prompt (a prefix: the tail
    # went first), takes 5 + short new ones, and leaves the other prompt 64 - short blocks.
    cap = 69 + 64 - short
    scn = small(**{"spec.k": 0, "server.num_gpu_blocks": cap})
    n = 10
    run = _run(scn, [1088] * n, 17, groups=[0, 1] * (n // 2), prefix_len=1024)
    hit = (64 - short) * 16
    np.testing.assert_array_equal(run.table.cached_tokens, [0, 0] + [hit] * (n - 2))
    # hit rate over the run: (n - 2) hits of `hit` tokens in n prompts of 1,088
    rate = run.table.cached_tokens.sum() / run.table.prompt.sum()
    assert rate == pytest.approx((n - 2) * hit / (n * 1088), abs=1e-12)
    # evictions: B's first request evicts `short` of A's blocks, each later one `short` again
    assert run.engines[0].kv.evictions == short * (n - 1)


# --------------------------------------------------------------------------- pinned records


@pytest.mark.parametrize("case", ["moderate load", "adaptive, beta alpha, roofline"])
def test_caching_on_without_sharing_or_preemption_gives_pinned_records(case: str) -> None:
    # nothing is shared and nothing preempted: nothing to hit, the records of caching off
    res = simulate(small(**CASES[case]), seed=5)
    assert res.scenario.server.prefix_caching and res.summary["preemptions"] == 0
    got = (frame_hash(_pinned_columns(res.requests)), frame_hash(_pinned_steps(res.steps)))
    assert got == PINNED[case]


def test_preempted_request_re_hits_its_own_blocks() -> None:
    # Under KV pressure, caching on: a preempted request's blocks stay cached when freed, and
    # its re-admission takes those still there (vLLM), so recomputation costs less prefill.
    over = CASES["kv pressure"]
    on = simulate(small(**over), seed=5)
    off = simulate(small(**over, **{"server.prefix_caching": False}), seed=5)
    assert (on.requests["cached_tokens"] == 0).all()  # first admissions: nothing shared
    saved = int(on.steps["cached_tokens"].sum())
    assert saved > 0 and on.summary["preemptions"] > 0
    assert on.summary["prefill_tokens_requested"] == on.summary["prefill_tokens_computed"] + saved
    per_preemption_on = on.steps["prefill_tokens"].sum() - on.requests["prompt_tokens"].sum()
    per_preemption_off = off.steps["prefill_tokens"].sum() - off.requests["prompt_tokens"].sum()
    assert per_preemption_on / on.summary["preemptions"] < (
        per_preemption_off / off.summary["preemptions"]
    )
    assert on.requests["finish"].notna().all()
    assert on.steps["emitted"].sum() == on.requests["output_tokens"].sum()


# --------------------------------------------------------------------------- properties


@given(
    block_size=st.sampled_from([1, 8, 16]),
    slack=st.integers(0, 600),
    k=st.integers(0, 5),
    policy=st.sampled_from(["vllm-v1", "prefill-first"]),
    budget=st.integers(64, 700),
    seqs=st.integers(1, 16),
    groups=st.integers(1, 4),
    plen=st.integers(1, 250),
    limited=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_property_books_balance_and_every_request_completes_once(
    block_size: int,
    slack: int,
    k: int,
    policy: str,
    budget: int,
    seqs: int,
    groups: int,
    plen: int,
    limited: bool,
    seed: int,
) -> None:
    # Requests share one of a few prefixes (of random length, some blocks full, some not), with a
    # cache from the smallest legal one upwards or unlimited, any policy: after every step the
    # reference counts are the holdings, the free list is exactly the unreferenced blocks (so a
    # referenced block is never evicted), every cached block a request holds carries its own key
    # (a hit never returns another prefix's blocks); every request completes once with its
    # tokens; the hit tokens never exceed the shared prefix's full blocks.
    rng = np.random.default_rng(seed)
    n = 50
    prompt = plen + rng.integers(1, 120, size=n)
    output = rng.integers(1, 50, size=n)
    longest = int((prompt + output).max()) - 1 + k
    blocks = -(-longest // block_size) + slack // block_size
    scn = small(
        **{
            "spec.k": k,
            "server.block_size": block_size,
            "server.num_gpu_blocks": blocks if limited else "unlimited",
            "server.scheduler": policy,
            "server.max_num_batched_tokens": max(budget, k + 1),
            "server.max_num_seqs": seqs,
        }
    )
    run = _run(
        scn, prompt, output, groups=rng.integers(0, groups, size=n), prefix_len=plen, gap=0.01
    )
    t = run.table
    assert np.isfinite(t.finish).all()
    np.testing.assert_array_equal(t.generated, t.output)
    assert int(run.steps["emitted"].sum()) == int(t.output.sum())
    assert (t.cached_tokens <= (plen // block_size) * block_size).all()
    assert (t.cached_tokens % block_size == 0).all()
    if not limited:
        assert run.engines[0].kv.evictions == 0


def test_first_admission_hits_are_the_records_cached_tokens() -> None:
    # Per step, the admissions' hits; per request, its first admission's: equal without
    # preemption. Summary: the hit rate over measured requests, prefill requested vs computed.
    scn = small(**{"spec.k": 0, "server.num_gpu_blocks": 400, "workload.rate": 40.0})
    rng = np.random.default_rng(3)
    n = 200
    run = _run(
        scn,
        300 + rng.integers(1, 100, size=n),
        30,
        groups=rng.integers(0, 3, size=n),
        prefix_len=256,
        gap=0.02,
    )
    assert run.steps["cached_tokens"].sum() == run.table.cached_tokens.sum() > 0
    assert (run.table.preemptions == 0).all()
