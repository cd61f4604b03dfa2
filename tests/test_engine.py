"""Engine behaviour: acceptance statistics, conservation, ordering, caps, Little's law, seeds."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from sdsim import simulate
from sdsim.acceptance import expected_tokens_per_step
from sdsim.costs.step import LinearStepCost
from sdsim.engine.scheduler import Batch
from sdsim.engine.server import Engine
from sdsim.scenario import LinearCosts
from sdsim.workload import generate_workload
from tests.conftest import small


def test_tokens_per_step_matches_theory() -> None:
    # Long outputs make the truncated last step negligible (< 0.1% of steps); ~60k decode steps
    # give the mean tokens/step a standard error of ~0.3%, so 1% is > 3 sigma. Seed 1.
    scn = small(
        **{
            "workload.output_tokens": 4000,
            "workload.num_requests": 60,
            "workload.rate": 2.0,
            "warmup_requests": 0,
        }
    )
    res = simulate(scn, seed=1)
    df = res.requests
    tps = (df["steps"].sum() + df["accepted"].sum()) / df["steps"].sum()
    assert tps == pytest.approx(expected_tokens_per_step(0.7, 4), rel=0.01)


@pytest.mark.parametrize(("alpha", "k"), [(1.0, 4), (0.0, 4), (1.0, 3)])
def test_alpha_extremes_step_counts(alpha: float, k: int) -> None:
    scn = small(
        **{
            "acceptance.alpha": alpha,
            "spec.k": k,
            "workload.output_tokens": {"dist": "uniform", "low": 1, "high": 50},
        }
    )
    df = simulate(scn).requests
    n_after_first = df["output_tokens"] - 1  # the prefill step emits the first token
    expect = np.ceil(n_after_first / (k + 1)) if alpha == 1.0 else n_after_first
    assert (df["steps"] == expect).all()


def test_token_conservation_and_ordering() -> None:
    scn = small(
        **{
            "workload.output_tokens": {"dist": "lognormal", "mean": 80, "cv": 1.0},
            "workload.prompt_tokens": {"dist": "uniform", "low": 10, "high": 3000},
            "server.max_num_batched_tokens": 512,
        }
    )
    res = simulate(scn)
    df = res.requests
    assert df["finish"].notna().all()
    # every output token is the prefill's first token, or one verify step's accepted + 1
    assert (df["output_tokens"] == 1 + df["steps"] + df["accepted"]).all()
    assert res.steps["emitted"].sum() == df["output_tokens"].sum()
    assert (df["accepted"] <= df["drafted"]).all()
    assert (df["arrival"] <= df["first_scheduled"]).all()
    assert (df["first_scheduled"] < df["first_token"]).all()
    assert (df["first_token"] <= df["finish"]).all()
    st = res.steps
    assert (np.diff(st["start"]) > 0).all()
    assert np.all(
        st["start"].iloc[1:].to_numpy()
        >= (st["start"] + st["duration"]).iloc[:-1].to_numpy() - 1e-12
    )


def test_batch_never_over_caps() -> None:
    scn = small(
        **{"server.max_num_seqs": 8, "server.max_num_batched_tokens": 100, "workload.rate": 60.0}
    )
    seen: list[tuple[int, int]] = []

    def hook(engine: Engine, batch: Batch) -> None:
        tokens = int(batch.prefill_chunks.sum()) + batch.decode_ids.shape[0] * (engine.k + 1)
        seen.append((batch.num_seqs, tokens))
        assert batch.num_seqs <= 8
        assert tokens <= 100
        assert engine.run_ids.shape[0] <= 8

    res = simulate(scn, on_step=hook)
    assert len(seen) == len(res.steps)
    assert max(s for s, _ in seen) == 8  # the cap binds in this scenario
    assert (res.steps["num_seqs"] <= 8).all()


def test_littles_law_on_stable_run() -> None:
    # 3000 requests at ~40% load: the window-edge error of Little's law is O(W / T) ~ 0.5%,
    # so 3% is a safe bound for this seed (0).
    scn = small(**{"workload.num_requests": 3000, "workload.rate": 20.0, "warmup_requests": 200})
    s = simulate(scn, seed=0).summary
    assert s["stable"]
    assert abs(s["little_residual"]) < 0.03
    lam = scn.workload.rate
    assert s["in_system_mean"] == pytest.approx(lam * s["e2e_mean"], rel=0.05)


def test_same_seed_same_frames_other_seed_differs() -> None:
    scn = small()
    a = simulate(scn, seed=5)
    b = simulate(scn, seed=5)
    pd.testing.assert_frame_equal(a.requests, b.requests)
    pd.testing.assert_frame_equal(a.steps, b.steps)
    c = simulate(scn, seed=6)
    assert not a.requests["arrival"].equals(c.requests["arrival"])


def test_changing_k_keeps_arrivals() -> None:
    a = generate_workload(small(**{"spec.k": 4}), 3)
    b = generate_workload(small(**{"spec.k": 1, "acceptance.alpha": 0.2}), 3)
    np.testing.assert_array_equal(a.arrival, b.arrival)
    np.testing.assert_array_equal(a.prompt, b.prompt)
    np.testing.assert_array_equal(a.output, b.output)
    ra = simulate(small(**{"spec.k": 4}), seed=3).requests
    rb = simulate(small(**{"spec.k": 0}), seed=3).requests
    np.testing.assert_array_equal(ra["arrival"], rb["arrival"])


def reference_plain_engine(
    arrival, prompt, output, coeffs: LinearCosts, max_seqs: int, budget: int
):
    """An independent, per-request Python implementation of plain decoding (k = 0)."""
    cost = LinearStepCost(coeffs)
    n = len(arrival)
    prefilled = [0] * n
    gen = [0] * n
    first_token = [math.nan] * n
    finish = [math.nan] * n
    run: list[int] = []
    waiting: list[int] = []
    nxt = 0
    now = 0.0
    done = 0
    while done < n:
        while nxt < n and arrival[nxt] <= now:
            waiting.append(nxt)
            nxt += 1
        if not run and not waiting:
            now = arrival[nxt]
            continue
        b = budget
        dec: list[int] = []
        pf: list[tuple[int, int]] = []
        blocked = False
        for rid in run:
            rem = prompt[rid] - prefilled[rid]
            if rem > 0:
                c = min(rem, b)
                if c <= 0:
                    blocked = True
                    break
                pf.append((rid, c))
                b -= c
                if c < rem:
                    blocked = True
                    break
            else:
                if b < 1:
                    blocked = True
                    break
                dec.append(rid)
                b -= 1
        if not blocked:
            while waiting and len(run) < max_seqs and b > 0:
                rid = waiting.pop(0)
                c = min(prompt[rid], b)
                b -= c
                run.append(rid)
                pf.append((rid, c))
        from sdsim.costs.step import StepShape

        ctx = sum(prompt[r] + gen[r] for r in dec)
        shape = StepShape(
            len(dec), ctx, 0, sum(c for _, c in pf), sum(prefilled[r] + c for r, c in pf), len(pf)
        )
        now += cost.step(shape).total
        for rid, c in pf:
            prefilled[rid] += c
            if prefilled[rid] >= prompt[rid]:
                gen[rid] += 1
                first_token[rid] = now
        for rid in dec:
            gen[rid] += 1
        for rid in list(run):
            if gen[rid] >= output[rid]:
                finish[rid] = now
                run.remove(rid)
                done += 1
    return np.array(first_token), np.array(finish)


def test_k0_equals_plain_reference_engine() -> None:
    scn = small(
        **{
            "spec.k": 0,
            "workload.num_requests": 150,
            "workload.rate": 40.0,
            "workload.prompt_tokens": {"dist": "uniform", "low": 16, "high": 900},
            "workload.output_tokens": {"dist": "uniform", "low": 1, "high": 60},
            "server.max_num_batched_tokens": 700,
            "server.max_num_seqs": 12,
        }
    )
    res = simulate(scn, seed=2)
    wl = generate_workload(scn, 2)
    ft, fin = reference_plain_engine(
        wl.arrival.tolist(),
        wl.prompt.tolist(),
        wl.output.tolist(),
        scn.costs.linear,
        scn.server.max_num_seqs,
        scn.server.max_num_batched_tokens,
    )
    np.testing.assert_allclose(res.requests["first_token"], ft, rtol=1e-12)
    np.testing.assert_allclose(res.requests["finish"], fin, rtol=1e-12)
    # with k = 0 the drafter never runs, whatever its kind
    other = simulate(scn.with_overrides({"drafter.kind": "ngram"}), seed=2)
    pd.testing.assert_frame_equal(res.requests, other.requests)
    assert (res.steps["draft_s"] == 0).all()


def test_saturation_bound_stops_overload() -> None:
    scn = small(
        **{"workload.rate": 5000.0, "workload.num_requests": 5000, "limits.max_waiting": 300}
    )
    res = simulate(scn)
    assert res.summary["stable"] is False
    assert res.summary["completed"] < 5000
    assert "max_waiting" in res.summary["stop_reason"]


def test_summary_has_contract_keys() -> None:
    from sdsim.metrics import SUMMARY_KEYS

    s = simulate(small()).summary
    for key in SUMMARY_KEYS:
        assert key in s, key
    from sdsim.metrics import REQUEST_FIELDS

    res = simulate(small())
    for f in REQUEST_FIELDS:
        assert f in res.requests.columns
    for f in (
        "start",
        "duration",
        "num_seqs",
        "prefill_tokens",
        "decode_seqs",
        "verify_tokens",
        "draft_s",
        "verify_s",
        "prefill_s",
        "overhead_s",
        "kv_blocks_used",
        "waiting",
    ):
        assert f in res.steps.columns
    st = res.steps
    parts = st["draft_s"] + st["verify_s"] + st["prefill_s"] + st["overhead_s"]
    np.testing.assert_allclose(parts, st["duration"], rtol=1e-12)
