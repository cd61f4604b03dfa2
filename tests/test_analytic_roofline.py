"""The analytic model on the real (roofline) cost model: step curve, local lines, saturation,
KV cache, adaptive k, replicas, API delay, and agreement with the simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sdsim import simulate
from sdsim.analytic import predict
from sdsim.analytic.operating import (
    build_curve,
    gps_law_from_curve,
    operating_point,
    step_saturation_rate,
)
from sdsim.analytic.prediction import capacity
from sdsim.analytic.stepcurve import PromptLaw, build_step_curve
from sdsim.analytic.validation import validate
from sdsim.analytic.work import request_work
from sdsim.costs.build import build_cost_model
from sdsim.costs.step import StepShape
from sdsim.metrics import t_confidence_interval
from tests.conftest import small


def roofline(**over: object) -> object:
    """The small scenario (128-token prompts, 64-token answers) on the H100 roofline."""
    return small(**{"costs.source": "roofline", **over})


# ------------------------------------------------------------------ the step curve


def test_step_curve_is_the_cost_models_own_step() -> None:
    scn = roofline()
    model = build_cost_model(scn)
    w = request_work(scn, 4)
    c = build_curve(scn, 4, w, model)
    for n in (1, 7, 64, 200, 256):
        st = model.step(StepShape(n, round(n * c.ctx), 4))
        assert c.decode[n] == st.total and c.verify[n] == st.verify and c.draft[n] == st.draft
    pf = model.step(StepShape(30, round(30 * c.ctx), 4, 3 * 128, 3 * 128, 3)).total
    assert c.mixed[30, 3] == pf
    # the roofline is convex in the batch: the slope at 250 is far above the slope at 5
    assert (c.decode[251] - c.decode[249]) > 2 * (c.decode[6] - c.decode[4])


def test_random_prompts_price_a_chunk_at_the_laws_mean_cost() -> None:
    # Two prompt lengths, 512 and 12,000 tokens, with an 8,192-token budget: a step curve's mean
    # chunk must cost what the engine pays per prompt on average, each prompt's chunks at their
    # attended context (the long prompt's second chunk attends to 12,000 tokens), not what a
    # mean-length (6,256-token) prompt costs: attention makes the cost convex in the length.
    # Cached tokens before a prefill (a prefix hit) are attended too, so they raise it.
    scn = roofline()
    model = build_cost_model(scn)
    k, n, ctx, budget = 4, 20, 600.0, 8192
    lengths = np.array([512, 12_000], dtype=np.int64)
    weights = np.array([0.5, 0.5])

    def whole(x: int, cached: int, dctx: int) -> float:
        base = model.step(StepShape(n, dctx, k)).total
        chunks = [
            StepShape(n, dctx, k, min(budget, x - s), cached + min(x, s + budget), 1)
            for s in range(0, x, budget)
        ]
        return sum(model.step(sh).total - base for sh in chunks)

    mean_length = build_step_curve(model, k, ctx, float(weights @ lengths), budget, 256)
    for cached in (0, 3_000):
        law = PromptLaw(lengths, weights, np.full(2, float(cached)))
        c = build_step_curve(model, k, ctx, float(weights @ lengths), budget, 256, law)
        dctx = round(n * ctx)
        per_prompt = 0.5 * (whole(512, cached, dctx) + whole(12_000, cached, dctx))
        assert c.chunks_per_request == 1
        assert c.mixed[n, 1] - c.mixed[n, 0] == pytest.approx(per_prompt, rel=1e-9)
        # every chunk of a step carries the same excess over the mean-length chunk
        excess = c.mixed[n, 1] - mean_length.mixed[n, 1]
        assert c.mixed[n, 3] - mean_length.mixed[n, 3] == pytest.approx(3 * excess, rel=1e-9)
        # a step with one first chunk of each length is what the engine pays for it
        for i, x in enumerate(lengths):
            first = model.step(
                StepShape(n, dctx, k, min(x, budget), cached + min(x, budget), 1)
            ).total
            assert c.mixed[n, 1] + c.prompt_shift[n, i] == pytest.approx(first, rel=1e-9)
        # on an idle engine the prompt's chunks run one step each: the law's mean of that
        alone = 0.5 * sum(
            model.step(StepShape(0, 0, k, min(budget, x - s), cached + min(x, s + budget), 1)).total
            for x in (512, 12_000)
            for s in range(0, x, budget)
        )
        assert c.alone == pytest.approx(alone, rel=1e-12)
        if cached == 0:
            plain = c.mixed[n, 1] - c.mixed[n, 0]
            assert plain > (mean_length.mixed[n, 1] - mean_length.mixed[n, 0]) * 1.01
        else:
            assert c.mixed[n, 1] - c.mixed[n, 0] > plain


def test_a_prompt_longer_than_the_budget_is_priced_by_its_chunks() -> None:
    # A fixed 1,600-token prompt with a 1,024-token budget is prefilled as 1,024 + 576 tokens; the
    # curve's two chunks per request together cost what those two chunks cost (not two whole
    # budgets' worth); a prompt that fits the budget keeps the exact one-chunk price.
    scn = roofline()
    model = build_cost_model(scn)
    k, n, ctx = 4, 20, 600.0
    c = build_step_curve(model, k, ctx, 1600.0, 1024, 256)
    assert c.chunks_per_request == 2
    dctx = round(n * ctx)
    base = model.step(StepShape(n, dctx, k)).total
    whole = sum(model.step(StepShape(n, dctx, k, t, x, 1)).total - base
                for t, x in ((1024, 1024), (576, 1600)))
    assert 2 * (c.mixed[n, 1] - c.mixed[n, 0]) == pytest.approx(whole, rel=1e-9)
    assert c.alone == pytest.approx(
        model.step(StepShape(0, 0, k, 1024, 1024, 1)).total
        + model.step(StepShape(0, 0, k, 576, 1600, 1)).total,
        rel=1e-12,
    )
    fits = build_step_curve(model, k, ctx, 1000.0, 1024, 256)
    assert fits.mixed[n, 1] == model.step(StepShape(n, dctx, k, 1000, 1000, 1)).total


def test_linear_costs_reduce_to_the_prefill_tax() -> None:
    # with linear costs the stationary chunk chain gives exactly t(n) = t_dec(n) / (1 - lam c_p)
    scn = small()
    w = request_work(scn, 4)
    c = build_curve(scn, 4, w)
    lam = 40.0
    cp = c.mixed[10, 1] - c.mixed[10, 0]
    t = c.step_time(lam)
    n = np.arange(1, 200)
    np.testing.assert_allclose(t[n], c.decode[n] / (1 - lam * cp), rtol=1e-9)
    np.testing.assert_allclose(c.chunk_cost(lam)[n], cp, rtol=1e-9)


def test_linear_saturation_matches_the_closed_form() -> None:
    # linear costs: the bisection on the real curve lands on the closed-form capacity
    scn = small(**{"server.max_num_seqs": 24})
    op = operating_point(scn, 4, 10.0)
    assert op.saturation_rate == pytest.approx(capacity(op.coefficients), rel=1e-6)


def test_local_lines_are_the_tangent_at_the_operating_point() -> None:
    scn = roofline(**{"workload.rate": 120.0})
    p = predict(scn, rates=[], k_values=[4], quantiles=False)
    co = p.coefficients
    assert co is not None and co.linearization.startswith("tangent at mean decode batch")
    # the global line through batches 1..256 is 10-20% off on the roofline; the local one, over
    # the batches that carry 98% of the load's birth-death law, errs by less than half that
    # (9% here: the law is wide, its dispersion counts the prefill bursts)
    glob = build_cost_model(scn).linearize(4, max_batch=256, context=round(co.ctx))
    assert glob.fit_error > 0.1 and co.fit_error < 0.5 * glob.fit_error
    # the published six-coefficient form is kept and consistent with the local lines
    assert co.c1 == pytest.approx(co.c1p + co.steps * (co.c1v + 4 * co.c1d))
    assert co.c2 == pytest.approx(co.c2p + co.steps * (co.c2v + 4 * co.c2d))
    assert co.c1v + 4 * co.c1d == pytest.approx(co.a + co.b)
    assert co.c2v + 4 * co.c2d == pytest.approx(co.b)
    # the tangent moves with the load: a busier server is further up the convex curve
    hi = predict(scn.with_overrides({"workload.rate": 150.0}), rates=[], k_values=[4])
    assert hi.coefficients is not None and hi.coefficients.b > co.b


# ------------------------------------------------------------------ agreement with simulation


@pytest.mark.parametrize(("over", "frac"), [({}, 0.5), ({}, 0.8), ({"spec.k": 0}, 0.8)])
def test_roofline_analytic_agrees_with_simulation(over: dict, frac: float) -> None:
    # 3 replications x 1400 measured requests (seeds 0, 1, 2) on the H100 roofline. Observed
    # errors (this code): mean e2e -1% at 50%, -4% at 80% of the predicted saturation; p99 e2e
    # -3% / -8%; TTFT and TPOT means within 5%. The targets (mean e2e 5%, p99 10%, TTFT and
    # TPOT means 10%) are asserted; one global line through the step curve would be off by more
    # than 10% on the 80% case's mean and by 30% on the saturation rate.
    scn = roofline(**over)
    sat = predict(scn, rates=[], k_values=[scn.spec.k], quantiles=False).saturation_rate
    s = scn.with_overrides(
        {"workload.rate": frac * sat, "workload.num_requests": 1500, "warmup_requests": 100}
    )
    pred = predict(s, rates=[], k_values=[s.spec.k]).summary
    sims = [simulate(s, seed=i).summary for i in range(3)]

    def sim(key: str) -> float:
        return t_confidence_interval([x[key] for x in sims])[0]

    assert pred["e2e_mean"] == pytest.approx(sim("e2e_mean"), rel=0.05)
    assert pred["e2e_p99"] == pytest.approx(sim("e2e_p99"), rel=0.10)
    assert pred["ttft_mean"] == pytest.approx(sim("ttft_mean"), rel=0.10)
    assert pred["tpot_mean"] == pytest.approx(sim("tpot_mean"), rel=0.10)


def test_roofline_saturation_rate_separates_stable_from_overload() -> None:
    # seed 0, 1500 requests: at 90% of the predicted saturation the queue stays bounded (the run
    # completes, stable); at 115% it grows for the whole run (queue_growth_rps > 5% of the rate)
    scn = roofline(**{"workload.num_requests": 1500, "warmup_requests": 100})
    sat = predict(scn, rates=[], k_values=[4], quantiles=False).saturation_rate
    below = simulate(scn.with_overrides({"workload.rate": 0.9 * sat}), seed=0).summary
    above = simulate(scn.with_overrides({"workload.rate": 1.15 * sat}), seed=0).summary
    # 1,400 measured requests at 90% load are too few for the stability test to bound the growth
    # below 5% of the rate (its verdict is "not enough data"), never "unstable"
    assert below["stable"] is not False
    assert above["stable"] is False


# ------------------------------------------------------------------ KV cache


def test_kv_saturation_onset_and_outside_model() -> None:
    # 600 blocks of 16 tokens; a request holds ~(128 + 32 + 4) / 16 + 0.5 = 10.8 blocks, so the
    # mean KV demand reaches capacity near 55 requests in the engine, well below max_num_seqs
    scn = small(**{"server.num_gpu_blocks": 600})
    p = predict(scn, rates=[], k_values=[4], quantiles=False)
    assert math.isfinite(p.kv_saturation_rate)
    assert p.kv_saturation_rate < p.gpu_saturation_rate
    assert p.saturation_rate == p.kv_saturation_rate
    kv = p.kv_saturation_rate
    lo = predict(scn.with_overrides({"workload.rate": 0.5 * kv}), rates=[], k_values=[4])
    mid = predict(scn.with_overrides({"workload.rate": 0.95 * kv}), rates=[], k_values=[4])
    hi = predict(scn.with_overrides({"workload.rate": 1.02 * kv}), rates=[], k_values=[4])
    assert lo.outside_model is None and lo.summary["p_kv_full"] < 1e-3
    assert mid.summary["p_kv_full"] > lo.summary["p_kv_full"]
    assert hi.outside_model is not None and "KV cache saturated" in hi.outside_model
    assert hi.summary["kv_saturated"] is True
    # at the KV saturation rate the mean demand is the capacity (bisection tolerance)
    at = predict(scn.with_overrides({"workload.rate": kv * 0.999}), rates=[], k_values=[4])
    assert at.summary["kv_demand_mean"] == pytest.approx(600, rel=0.01)


def test_validate_marks_kv_saturated_rates() -> None:
    scn = small(**{"server.num_gpu_blocks": 600, "workload.num_requests": 300})
    kv = predict(scn, rates=[], k_values=[4], quantiles=False).kv_saturation_rate
    rep = validate(
        scn, rates=[0.3 * kv, 1.05 * kv], reps=1, jobs=1, initial=300, max_requests=300
    )
    v = rep.verdicts
    assert not bool(v.iloc[1]["holds"]) and "KV cache saturated" in v.iloc[1]["reason"]
    assert v.iloc[0]["outside_model"] == ""


# ------------------------------------------------------------------ policy, replicas, delays


@pytest.mark.parametrize(("alpha", "lo", "hi"), [(0.9, 4, 8), (0.2, 0, 2)])
def test_adaptive_k_follows_acceptance(alpha: float, lo: int, hi: int) -> None:
    scn = roofline(**{"spec.policy": "adaptive", "acceptance.alpha": alpha, "workload.rate": 60})
    p = predict(scn, rates=[], k_values=[0], quantiles=False)
    assert lo <= p.summary["k_effective"] <= hi


def test_adaptive_k_matches_the_simulated_policy() -> None:
    # seed 0, 1000 requests: the simulated policy's mean k and the analytic model's choice at
    # the predicted batch differ by less than one draft token, and the mean e2e by < 5%
    scn = roofline(
        **{
            "spec.policy": "adaptive",
            "workload.rate": 80.0,
            "workload.num_requests": 1000,
            "warmup_requests": 100,
        }
    )
    p = predict(scn, rates=[], k_values=[0])
    sim = simulate(scn, seed=0).summary
    assert abs(p.summary["k_effective"] - sim["k_mean"]) < 1.0
    assert p.summary["e2e_mean"] == pytest.approx(sim["e2e_mean"], rel=0.05)


def test_replicas_split_the_rate() -> None:
    # random routing thins a Poisson stream into Poisson streams: each replica is the one-replica
    # server at half the rate, exactly; round-robin makes each replica's gaps Erlang-2 (index of
    # dispersion 1/2), a slightly narrower law of the number in system and lower latency
    one = predict(roofline(**{"workload.rate": 60.0}), rates=[], k_values=[4])
    over = {"workload.rate": 120.0, "server.replicas": 2, "server.router": "random"}
    two = predict(roofline(**over), rates=[], k_values=[4])
    assert two.saturation_rate == pytest.approx(2 * one.saturation_rate, rel=1e-9)
    for key in ("e2e_mean", "tpot_mean", "ttft_mean", "batch_mean"):
        assert two.summary[key] == pytest.approx(one.summary[key], rel=1e-9)
    assert two.summary["in_system_mean"] == pytest.approx(2 * one.summary["in_system_mean"])
    rr = predict(roofline(**{**over, "server.router": "round-robin"}), rates=[], k_values=[4])
    assert rr.summary["e2e_p99"] < two.summary["e2e_p99"]
    assert rr.summary["e2e_mean"] == pytest.approx(two.summary["e2e_mean"], rel=0.02)


def test_api_delay_shifts_ttft_and_e2e_only() -> None:
    base = predict(roofline(**{"workload.rate": 60.0}), rates=[], k_values=[4]).summary
    d = predict(
        roofline(**{"workload.rate": 60.0, "server.api_delay_s": 0.05}), rates=[], k_values=[4]
    ).summary
    for st in ("mean", "p50", "p90", "p99"):
        assert d[f"e2e_{st}"] == pytest.approx(base[f"e2e_{st}"] + 0.05)
        assert d[f"ttft_{st}"] == pytest.approx(base[f"ttft_{st}"] + 0.05)
        assert d[f"tpot_{st}"] == base[f"tpot_{st}"]
    assert d["api_delay_s"] == 0.05


def test_overhead_is_in_the_step_curve() -> None:
    lo = roofline(**{"costs.overhead_s": 0.0})
    hi = roofline(**{"costs.overhead_s": 2e-3})
    w = request_work(lo, 4)
    c0, c1 = build_curve(lo, 4, w), build_curve(hi, 4, w)
    np.testing.assert_allclose(c1.decode[1:] - c0.decode[1:], 2e-3, rtol=1e-9)
    assert step_saturation_rate(c1, w) < step_saturation_rate(c0, w)
    assert gps_law_from_curve(c1, w, 50.0).mean > gps_law_from_curve(c0, w, 50.0).mean
