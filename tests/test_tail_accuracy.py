"""The tail model against steady-state simulation on the shipped Poisson scenarios at 80% load.

The targets at 80% of the predicted saturation: e2e, TTFT and TPOT p99 within 5%, means within
2%. A test-sized run (2 seeds, MSER-5 warm-up cut, batched CIs: sdsim/steadystate.py)
cannot pin an error to 1%, so each check is the validation verdict: it fails only where the
whole 95% CI of the simulated value puts the prediction outside the tolerance. The long-run
figures (3 seeds x 100,000 requests) are in notes/analytic.md; there a tail model without the
prefill bursts' noise is 13% low on default.yaml's e2e p99 at 80%, which these run lengths
reject (with seeds 1 and 2 its error interval is [-28%, -7%], outside [-5%, +5%]: "fails"; the
TPOT p99 too). Seeds 1, 2; ~40 s on two cores.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import sdsim
from sdsim.analytic.validation import TOO_WIDE, _verdict
from sdsim.steadystate import mser_truncation, run_estimates

ROOT = Path(__file__).resolve().parents[1]
# scenario -> requests per seed (the slow ones shorter: 1,024-token answers, k = 0 steps)
CASES = {
    "default.yaml": 15_000,
    "plain.yaml": 8_000,
    "llama70b-tp4-a100.yaml": 6_000,
    "qwen3-8b-eagle-a100.yaml": 3_000,
    "moe-qwen3-30b-a3b.yaml": 8_000,
}
TARGETS = {"mean": 0.02, "p99": 0.05}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_model_within_target_at_80_percent(name: str) -> None:
    scn = sdsim.load_scenario(ROOT / "scenarios" / name)
    sat = sdsim.predict(scn, rates=[], k_values=[scn.spec.k], quantiles=False).saturation_rate
    n = CASES[name]
    run = scn.with_overrides(
        {"workload.rate": 0.8 * sat, "workload.num_requests": n, "warmup_requests": n // 10}
    )
    pred = sdsim.predict(run, rates=[], k_values=[scn.spec.k])
    assert pred.outside_model is None
    series: dict[str, list[object]] = {"e2e": [], "ttft": [], "tpot": []}
    for seed in (1, 2):
        r = sdsim.simulate(run, seed=seed).requests
        cut = max(mser_truncation(r["e2e"]).deleted, mser_truncation(r["ttft"]).deleted)
        for m in series:
            series[m].append(r[m].to_numpy()[cut:])
    est = run_estimates(series)  # type: ignore[arg-type]
    checks = [("e2e", "mean"), ("e2e", "p99"), ("ttft", "p99"), ("tpot", "p99")]
    for metric, stat in checks:
        e = est[f"{metric}_{stat}"]
        ana = pred.summary[f"{metric}_{stat}"]
        verdict, lo, hi = _verdict(ana, e.low, e.high, TARGETS[stat])
        assert verdict in ("holds", TOO_WIDE), (
            f"{name} {metric}_{stat}: model {ana:.4g} vs simulated {e.value:.4g} "
            f"[{e.low:.4g}, {e.high:.4g}] (error {lo:+.1%}..{hi:+.1%})"
        )


# Prompts of random length (lognormal, CV 1, mean 512: a step that carries another request's
# 3,000-token prompt is 5x a typical one, and an arrival is more likely to land in it). Long
# runs (notes/analytic.md, 3 seeds x 100,000 requests at 80%): TTFT p99 -4.6%, e2e p99 -6.0%;
# a model that prices the others' chunks at the mean prompt is 27% low on the TTFT p99, which
# these runs reject (its error interval lies below -10%). Tolerance 10% on the p99s: the target
# at 90% load and what the long runs support at 80%; 5% on the mean e2e (validate's tolerance).
LOGNORMAL_PROMPTS = {"dist": "lognormal", "mean": 512, "cv": 1.0, "max": 8192}


@pytest.mark.slow
def test_ttft_tail_with_lognormal_prompts() -> None:
    scn = sdsim.load_scenario(
        ROOT / "scenarios" / "default.yaml", {"workload.prompt_tokens": LOGNORMAL_PROMPTS}
    )
    sat = sdsim.predict(scn, rates=[], k_values=[scn.spec.k], quantiles=False).saturation_rate
    n = 15_000
    run = scn.with_overrides(
        {"workload.rate": 0.8 * sat, "workload.num_requests": n, "warmup_requests": n // 10}
    )
    pred = sdsim.predict(run, rates=[], k_values=[scn.spec.k])
    fixed = sdsim.predict(
        run.with_overrides({"workload.prompt_tokens": 512}), rates=[], k_values=[scn.spec.k]
    )
    # the spread of the prompts reaches the TTFT tail, not only its mean
    assert pred.summary["ttft_p99"] > 1.3 * fixed.summary["ttft_p99"]
    series: dict[str, list[object]] = {"e2e": [], "ttft": [], "tpot": []}
    for seed in (1, 2):
        r = sdsim.simulate(run, seed=seed).requests
        cut = max(mser_truncation(r["e2e"]).deleted, mser_truncation(r["ttft"]).deleted)
        for m in series:
            series[m].append(r[m].to_numpy()[cut:])
    est = run_estimates(series)  # type: ignore[arg-type]
    for key, tol in (("e2e_mean", 0.05), ("ttft_p99", 0.10), ("e2e_p99", 0.10)):
        e = est[key]
        verdict, lo, hi = _verdict(pred.summary[key], e.low, e.high, tol)
        assert verdict in ("holds", TOO_WIDE), (
            f"{key}: model {pred.summary[key]:.4g} vs simulated {e.value:.4g} "
            f"[{e.low:.4g}, {e.high:.4g}] (error {lo:+.1%}..{hi:+.1%})"
        )
