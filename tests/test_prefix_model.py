"""The analytic model of prefix caching: the predicted hit rate (Che's characteristic time over
the engine's free list), shared prompts counted once in KV demand, and the steady-state window
of a session workload. The long validation against simulation is `make prefix-validation`."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sdsim import predict, simulate
from sdsim.analytic.prefix import cache_state, cache_workload, kv_demand
from sdsim.scenario import Scenario
from sdsim.steadystate import session_window
from tests.conftest import small
from tests.test_traffic import chat

ONE_PROMPT = {"prompts": 1, "tokens": 1024}


def one_prompt(**over: object) -> Scenario:
    """Every request starts with one 1,024-token system prompt (64 blocks of 16), then 76
    tokens of its own: a 1,100-token prompt."""
    base: dict[str, object] = {
        "workload.shared_prefix": ONE_PROMPT,
        "workload.prompt_tokens": 76,
        "workload.output_tokens": 20,
    }
    base.update(over)
    return small(**base)


def test_one_shared_prompt_in_a_large_cache_is_always_hit() -> None:
    # the EAGLE drafter (the default) recomputes the last hit block: 1,008 of 1,100 prompt
    # tokens come from the cache
    scn = one_prompt()
    p = predict(scn, rates=[], k_values=[4], quantiles=False).summary
    assert p["prefix_hit_source"] == "predicted"
    assert p["prefix_hit_rate"] == pytest.approx(1008 / 1100, abs=1e-4)  # rounded to 1e-4
    assert math.isinf(p["prefix_char_time_s"])  # unlimited cache: nothing is evicted
    # without speculation every hit block is kept: 1,024 tokens
    plain = one_prompt(**{"spec.k": 0})
    assert predict(plain, rates=[], k_values=[0], quantiles=False).summary[
        "prefix_hit_rate"
    ] == pytest.approx(1024 / 1100, abs=1e-4)
    # a finite cache far larger than what the requests free: the same
    big = one_prompt(**{"server.num_gpu_blocks": 200_000})
    assert cache_state(big, 20.0, 0.0, 0.0).hit_rate == pytest.approx(1008 / 1100, rel=1e-9)


def test_the_hit_rate_falls_with_the_cache_as_che_says() -> None:
    # One 1,024-token prompt (B = 64 blocks) carried by a share 0.2 of the requests, answers of
    # 1,600 tokens: each request frees its own blocks, (P + O - 1)/16 + 1/2 - 0.2 B, which stay
    # T_C; the prompt, referenced at 0.2 lambda, is free (no request runs: in_engine = hold =
    # 0) and stays cached until T_C. T_C solves lambda own T + B (1 - exp(-0.2 lambda T)) = F,
    # and the hit rate is 0.2 (1 - exp(-0.2 lambda T_C)) 1,008 / P (EAGLE recomputes a block).
    lam, share, b = 2.0, 0.2, 64.0
    prompt = 76 + share * 1024
    own = (prompt + 1600 - 1) / 16 + 0.5 - share * b
    hits = []
    for cap in (250, 400, 800, 3000):
        scn = one_prompt(
            **{
                "workload.shared_prefix": {**ONE_PROMPT, "share": share},
                "workload.output_tokens": 1600,
                "server.num_gpu_blocks": cap,
            }
        )
        st = cache_state(scn, lam, 0.0, 0.0)
        lo, hi = 0.0, 1e4  # bisection, written out
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            f = lam * own * mid + b * (1 - math.exp(-share * lam * mid)) - cap
            lo, hi = (mid, hi) if f < 0 else (lo, mid)
        assert st.char_time == pytest.approx(lo, abs=1e-3)  # the model's root is to 1 ms
        want = share * (1 - math.exp(-share * lam * lo)) * 1008 / prompt
        assert st.hit_rate == pytest.approx(want, rel=1e-4)
        hits.append(st.hit_rate)
    assert hits == sorted(hits) and hits[0] < 0.5 * hits[-1]  # falls with the cache


@pytest.mark.parametrize(("cap", "tol"), [(300, 0.03), (800, 0.02)])
def test_the_predicted_hit_rate_matches_simulation(cap: int, tol: float) -> None:
    # 32 system prompts of 512 tokens, Zipf 0.8, 64-token questions and answers, 20 req/s, a
    # cache of `cap` blocks (the unpopular prompts are evicted between uses: hit rates of about
    # 0.35 and 0.61 where an unlimited cache gives 0.89). 4,000 requests, seed 1, 500 warm-up:
    # the simulated hit rate's run-to-run spread (seeds 1-5) is under 0.01, and the model's
    # known bias (it prices the free list's order, not its fluctuations) is under 0.01 here:
    # tolerance 0.03 / 0.02 absolute.
    scn = small(
        **{
            "workload.shared_prefix": {"prompts": 32, "tokens": 512, "zipf_s": 0.8},
            "workload.prompt_tokens": 64,
            "workload.num_requests": 4000,
            "warmup_requests": 500,
            "server.num_gpu_blocks": cap,
        }
    )
    sim = simulate(scn, seed=1).summary["prefix_hit_rate"]
    model = predict(scn, rates=[], k_values=[4], quantiles=False).summary["prefix_hit_rate"]
    assert model == pytest.approx(sim, abs=tol)


def test_a_given_hit_rate_overrides_the_prediction() -> None:
    scn = one_prompt(**{"analytic.prefix_hit_rate": 0.3})
    p = predict(scn, rates=[], k_values=[4], quantiles=False).summary
    assert (p["prefix_hit_rate"], p["prefix_hit_source"]) == (0.3, "given")
    assert math.isnan(p["prefix_char_time_s"])
    off = one_prompt(**{"server.prefix_caching": False})
    p = predict(off, rates=[], k_values=[4], quantiles=False).summary
    assert (p["prefix_hit_rate"], p["prefix_hit_source"]) == (0.0, "off")


def test_a_shared_prompt_held_by_many_requests_counts_once() -> None:
    scn = one_prompt()
    each = 80.0  # blocks a request holds, its 64 shared ones included
    np.testing.assert_allclose(kv_demand(scn, [0, 1, 10], each), [0, 80, 10 * 16 + 64])
    # two prompts of 64 blocks, equally likely: n requests hold 64 (2 - 2 / 2^n) of them
    two = one_prompt(**{"workload.shared_prefix": {**ONE_PROMPT, "prompts": 2,
                                                   "popularity": "uniform"}})
    np.testing.assert_allclose(kv_demand(two, [1, 3], each), [80, 3 * 16 + 64 * 1.75])
    # caching off: every request holds its own copy
    off = one_prompt(**{"server.prefix_caching": False})
    np.testing.assert_allclose(kv_demand(off, [10], each), [800])


def test_a_session_runs_steady_state_is_between_ramp_up_and_the_last_session_start() -> None:
    scn = chat(**{"workload.num_requests": 3000})
    r = simulate(scn, seed=2).requests
    lo, hi = session_window(r)
    assert 0 < lo < hi < len(r)
    last_start = r.loc[r["turn"] == 0, "arrival"].max()
    assert r["arrival"].iloc[hi - 1] <= last_start < r["arrival"].iloc[hi]
    life = r.groupby("session")["finish"].max() - r.groupby("session")["arrival"].min()
    assert r["arrival"].iloc[lo] - r["arrival"].iloc[0] >= np.quantile(life, 0.99)
    # the turn rate inside the window is the offered one (10 req/s; ~300 sessions started in
    # it, so a 2-sigma slack of 15%)
    inside = r["arrival"].iloc[lo:hi]
    assert (hi - lo) / (inside.iloc[-1] - inside.iloc[0]) == pytest.approx(10.0, rel=0.15)
    # a run without sessions is kept whole
    assert session_window(simulate(small(), seed=2).requests) == (0, 300)


def test_a_session_plan_keeps_each_turns_conversation() -> None:
    # the model reads per-turn blocks from the conversation plan: a later turn can hit every
    # full block its previous turn committed, a first turn only its shared prompt
    scn = chat(**{"workload.shared_prefix": {"prompts": 1, "tokens": 100}})
    cw = cache_workload(scn)
    assert cw.sessions and cw.hit_lost.max() == 100 // 16 - 1  # EAGLE drops the last block
    assert (cw.hit_cached >= cw.hit_lost).all() and cw.hit_cached.mean() > 2 * cw.hit_lost.mean()


@pytest.mark.parametrize("value", ["1.5", "-0.1", "x"])
def test_bad_analytic_settings_exit_2_naming_the_field(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from sdsim.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["predict", "scenarios/multi-turn-chat.yaml", "--set",
              f"analytic.prefix_hit_rate={value}"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: analytic.prefix_hit_rate"), err


def test_a_grid_predicts_the_hit_rate_at_each_rate() -> None:
    # a predicted hit rate keys the step curves by its value; the grid's curve bookkeeping
    # copes (it once looked up the curve of the unresolved scenario)
    from sdsim.analytic.prediction import predict_grid

    # small chats (2 s think time) in a 300-block cache: conversations outlive fewer gaps
    scn = chat(**{"server.num_gpu_blocks": 300})
    df = predict_grid(scn, [2.0, 20.0], [4], quantiles=False)
    assert list(df["prefix_hit_source"]) == ["predicted"] * 2
    assert df["prefix_hit_rate"].iloc[0] > 2 * df["prefix_hit_rate"].iloc[1]  # falls with load


def test_predict_prices_a_trace_prompt_law() -> None:
    # a trace column is its empirical law for the model too (it raised a TypeError)
    from sdsim.analytic.work import discretize_length
    from tests.test_traffic import SPLITWISE

    path = SPLITWISE / "splitwise_conv.csv"
    if not path.exists():
        pytest.skip("../shared/data/vidur not present")
    scn = small(**{"workload.prompt_tokens": {"dist": "trace", "path": str(path),
                                              "column": "prompt_tokens"}})
    spec = scn.workload.prompt_tokens
    v, p = discretize_length(spec)
    assert float(v @ p) == pytest.approx(spec.mean, rel=1e-3)
    slow = scn.with_overrides({"workload.rate": 0.5})
    assert math.isfinite(predict(slow, rates=[], k_values=[4]).summary["e2e_mean"])


def test_the_model_reads_a_survival_table_law() -> None:
    from sdsim.analytic.work import discretize_length
    from sdsim.scenario import load_scenario

    turns = load_scenario("scenarios/multi-turn-wildchat.yaml").workload.sessions.turns  # type: ignore[union-attr]
    v, p = discretize_length(turns)
    assert float(v @ p) == pytest.approx(turns.mean, rel=1e-3)
