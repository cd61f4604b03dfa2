"""The closed-form model: identities, the GPS law, fitting, MoE coverage, agreement with the
simulation on small scenarios, and the predict/fit/advise/validate commands."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sdsim import simulate
from sdsim.acceptance import steps_to_finish_moments
from sdsim.analytic import predict
from sdsim.analytic.fitting import _sd_model, fit_measurements, mean_steps
from sdsim.analytic.gps import birth_death, negative_binomial_law
from sdsim.analytic.meanfield import (
    break_even_utilisation,
    mean_latency,
    speedup,
)
from sdsim.analytic.moe import expert_fraction, moe_mean_latency
from sdsim.analytic.operating import derive_coefficients
from sdsim.analytic.work import discretize_length, request_work
from sdsim.cli import main
from sdsim.errors import ScenarioError
from sdsim.metrics import t_confidence_interval
from sdsim.scenario import LognormalLength
from tests.conftest import small

ROOT = Path(__file__).resolve().parents[1]

# ------------------------------------------------------------------ formula identities


@pytest.mark.parametrize(("c1r", "c2r"), [(0.5, 1.2), (0.4, 1.6), (0.8, 1.05)])
def test_speedup_identities(c1r: float, c2r: float) -> None:
    assert float(speedup(c1r, c2r, 0.0)) == pytest.approx(1.0 / c1r)
    r_star = break_even_utilisation(c1r, c2r)
    assert 0 < r_star < 1
    assert float(speedup(c1r, c2r, r_star)) == pytest.approx(1.0, abs=1e-12)
    # SD helps below r*, hurts above it
    assert float(speedup(c1r, c2r, r_star * 0.5)) > 1.0
    assert float(speedup(c1r, c2r, (r_star + 1) / 2)) < 1.0


def test_mean_latency_and_saturation() -> None:
    assert float(mean_latency(2.0, 0.1, 0.0)) == 2.0
    assert float(mean_latency(2.0, 0.1, 5.0)) == pytest.approx(4.0)
    assert math.isinf(float(mean_latency(2.0, 0.1, 10.0)))


def test_k0_ratios_are_one_and_steps_exact() -> None:
    scn = small(**{"spec.k": 0})
    p = predict(scn, rates=[], k_values=[0])
    co0 = derive_coefficients(scn, 0)
    assert p.speedup == 1.0
    assert p.c1 / co0.c1 == 1.0 and p.c2 / co0.c2 == 1.0
    # plain decoding: one token per decode step, so m = g - 1 exactly
    assert co0.steps == pytest.approx(64 - 1)
    assert co0.tokens_per_step == 1.0


def test_coefficients_follow_the_linear_model_by_hand() -> None:
    scn = small()
    c = scn.costs.linear
    co = derive_coefficients(scn)
    ctx = 128 + 64 / 2
    k = 4
    assert co.c2v == pytest.approx((k + 1) * c.verify_per_token_s + c.verify_per_kv_token_s * ctx)
    assert co.c2d == pytest.approx(c.draft_per_token_s + c.draft_per_kv_token_s * ctx)
    assert co.c1v == pytest.approx(c.overhead_s + c.verify_fixed_s + co.c2v)
    assert co.c1d == pytest.approx(c.draft_fixed_s + co.c2d)
    # prefill alone: overhead + verifier fixed + prompt tokens through verifier and drafter
    alone = (
        c.overhead_s
        + c.verify_fixed_s
        + 128 * (c.verify_per_token_s + c.verify_per_kv_token_s + c.draft_per_token_s)
    )
    assert co.c1p == pytest.approx(alone)
    assert co.steps == pytest.approx(steps_to_finish_moments(63, 0.7, 4)[0][63])
    assert co.c1 == pytest.approx(co.c1p + co.steps * (co.c1v + k * co.c1d))


def test_lognormal_length_law_keeps_the_mean() -> None:
    spec = LognormalLength(dist="lognormal", mean=200, cv=1.0, max=4000)
    v, p = discretize_length(spec)
    # clipping at 4000 removes ~0.05% of the mass of a cv=1 lognormal: 1% is loose but safe
    assert float(v @ p) == pytest.approx(200, rel=0.01)
    assert p.sum() == pytest.approx(1.0)


def test_request_work_mixes_output_lengths() -> None:
    scn = small(**{"workload.output_tokens": {"dist": "uniform", "low": 10, "high": 20}})
    w = request_work(scn)
    m = steps_to_finish_moments(19, 0.7, 4)[0]
    assert w.mean_steps == pytest.approx(np.mean([m[g - 1] for g in range(10, 21)]))


# ------------------------------------------------------------------ GPS birth-death


def test_birth_death_linear_is_negative_binomial() -> None:
    a, b, lam, nu = 0.008, 1e-4, 20.0, 90.0
    bd = birth_death(lam, nu, lambda n: a + b * n, n_max=100_000)
    nb = negative_binomial_law(a, b, lam, nu)
    n = np.arange(bd.pmf.shape[0])
    np.testing.assert_allclose(bd.pmf, nb.pmf(n), atol=1e-10)
    rho = lam * nu * b
    assert bd.mean_sojourn == pytest.approx((a + b) * nu / (1 - rho), rel=1e-8)
    # the exact birth-death mean equals the mean-field formula with the request in its own batch
    assert bd.mean_sojourn == pytest.approx(float(mean_latency((a + b) * nu, b * nu, lam)))
    assert bd.p_wait < 1e-12


def test_birth_death_cap_makes_waits_and_instability() -> None:
    t = lambda n: 0.01 + 1e-4 * n  # noqa: E731
    capped = birth_death(5.0, 100.0, t, n_max=8)
    assert capped.stable and capped.p_wait > 0.05
    assert not birth_death(50.0, 100.0, t, n_max=8).stable


# ------------------------------------------------------------------ MoE


def test_expert_fraction_limits() -> None:
    assert float(expert_fraction(0, 64, 8)) == 0.0
    assert float(expert_fraction(1, 64, 8)) == pytest.approx(8 / 64)
    assert float(expert_fraction(10_000, 64, 8)) == pytest.approx(1.0)
    assert float(expert_fraction(1, 8, 8)) == 1.0
    vals = expert_fraction(np.arange(50), 128, 8)
    assert np.all(np.diff(vals) > 0)  # more tokens touch more experts
    with pytest.raises(ScenarioError):
        expert_fraction(1, 8, 9)


def test_moe_fixed_point_solves_the_equation() -> None:
    c1, c2 = (0.5, 0.4), (0.004, 0.006)
    res = moe_mean_latency(30.0, c1, c2, experts=128, active=8, k=3)
    assert res.converged
    t = max(30.0 * res.latency, 1.0) * 4
    phi = float(expert_fraction(t, 128, 8))
    assert res.latency == pytest.approx(
        (c1[0] + phi * c1[1]) / (1 - 30.0 * (c2[0] + phi * c2[1])), rel=1e-8
    )
    # no expert-dependent part: the plain mean-field formula
    plain = moe_mean_latency(30.0, (0.9, 0.0), (0.01, 0.0), 128, 8, 3)
    assert plain.latency == pytest.approx(0.9 / (1 - 0.3))


# ------------------------------------------------------------------ fitting


def _synthetic(noise: float) -> tuple[pd.DataFrame, dict[str, float]]:
    true = {"c1p": 0.02, "c1v": 0.0085, "c1d": 0.0004, "c2p": 0.0083, "c2v": 1.0e-4, "c2d": 2e-6}
    rows = []
    for k in (0, 1, 2, 4, 6):
        for a in (0.6, 0.8):
            for g in (128, 256):
                m = float(mean_steps([g], [a], [k])[0])
                c2 = true["c2p"] + m * (true["c2v"] + k * true["c2d"])
                for f in (0.1, 0.3, 0.5, 0.7, 0.85):
                    rows.append(
                        {
                            "rate": f / c2,
                            "alpha": a,
                            "k": k,
                            "prompt_tokens": 512,
                            "output_tokens": g,
                        }
                    )
    df = pd.DataFrame(rows)
    x = np.vstack([df["rate"], mean_steps(df["output_tokens"], df["alpha"], df["k"]), df["k"]])
    y = _sd_model(x, *true.values())
    # a private generator (no global state); seed 7
    df["e2e_mean"] = y * (1 + noise * np.random.default_rng(7).standard_normal(y.shape[0]))
    return df, true


def test_curve_fit_recovers_sd_coefficients() -> None:
    # 100 rows with 0.05% noise: the standard errors are < 0.3% of each coefficient, so 1% is
    # > 3 standard errors for every one of the six.
    df, true = _synthetic(5e-4)
    res = fit_measurements(df)
    assert res.form == "sd"
    for name, v in true.items():
        assert res.coefficients[name] == pytest.approx(v, rel=0.01), name
    assert res.r2 > 0.999
    assert res.loo_error < 0.005


def test_curve_fit_recovers_dense_coefficients() -> None:
    lam = np.linspace(1, 45, 12)
    df = pd.DataFrame(
        {
            "rate": lam,
            "alpha": 0.7,
            "k": 0,
            "prompt_tokens": 512,
            "output_tokens": 256,
            "e2e_mean": 1.6 / (1 - lam * 0.02),
        }
    )
    res = fit_measurements(df, form="dense")
    assert res.coefficients["C1"] == pytest.approx(1.6, rel=0.01)
    assert res.coefficients["C2"] == pytest.approx(0.02, rel=0.01)


def test_fit_rejects_bad_tables() -> None:
    with pytest.raises(ScenarioError, match="missing column"):
        fit_measurements(pd.DataFrame({"rate": [1.0]}))
    df, _ = _synthetic(0.0)
    df.loc[0, "alpha"] = 2.0
    with pytest.raises(ScenarioError, match="alpha"):
        fit_measurements(df)


# ------------------------------------------------------------------ agreement with simulation


@pytest.mark.parametrize(
    ("over", "frac"),
    [({}, 0.5), ({}, 0.8), ({"spec.k": 0}, 0.8), ({"server.max_num_seqs": 24}, 0.5)],
)
def test_analytic_agrees_with_simulation(over: dict, frac: float) -> None:
    # 3 replications x 1400 measured requests (seeds 0, 1, 2). On these scenarios the observed
    # errors are <= 1% for means and <= 5% for p99 (see the report); the model's targets (mean
    # e2e 5%, p99 e2e 10%, TTFT/TPOT means 10%) leave room for the replication noise (the CI
    # half-width of mean e2e is ~2-4% at 80% load with 3 replications).
    scn = small(**over)
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


def test_prediction_summary_uses_simulation_keys() -> None:
    p = predict(small())
    res_keys = set(simulate(small(**{"workload.num_requests": 50, "warmup_requests": 5})).summary)
    for key in (
        *(f"{m}_{s}" for m in ("e2e", "ttft", "tpot") for s in ("mean", "p50", "p90", "p99")),
        "throughput_rps",
        "batch_mean",
        "in_system_mean",
        "stable",
    ):
        assert key in p.summary and key in res_keys
    assert p.summary["e2e_p50"] < p.summary["e2e_p90"] < p.summary["e2e_p99"]
    assert len(p.stages) == 6 and p.saturation_rate > 0 and p.best_k


def test_past_saturation_is_unstable_not_a_number() -> None:
    scn = small()
    sat = predict(scn, rates=[], k_values=[4]).saturation_rate
    p = predict(scn.with_overrides({"workload.rate": 1.2 * sat}), rates=[], k_values=[4])
    assert p.summary["stable"] is False
    assert math.isinf(p.summary["e2e_mean"])


# ------------------------------------------------------------------ CLI


def test_cli_predict_json(capsys: pytest.CaptureFixture[str]) -> None:
    main(["predict", str(ROOT / "scenarios/default.yaml"), "--json", "--rates", "10,30"])
    data = json.loads(capsys.readouterr().out)
    assert data["summary"]["e2e_mean"] > 0 and set(data["best_k"]) == {"10", "30"}


def test_cli_fit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    df, _ = _synthetic(0.0)
    f = tmp_path / "m.csv"
    df.to_csv(f, index=False)
    main(["fit", str(f), "--json"])
    data = json.loads(capsys.readouterr().out)
    assert data["form"] == "sd" and data["r2"] > 0.999


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["predict", "scenarios/default.yaml", "--rates", "ten"], "--rates"),
        (["fit", "nope.csv"], "not found"),
        (["validate", "scenarios/default.yaml", "--reps", "0"], "--reps"),
        (["advise", "scenarios/default.yaml", "--rates", "-3"], "--rates"),
    ],
)
def test_cli_bad_input_exit_2(
    args: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    errline = capsys.readouterr().err.strip()
    assert needle in errline and "\n" not in errline


def test_cli_fit_missing_column_exit_2(tmp_path: Path) -> None:
    f = tmp_path / "m.csv"
    pd.DataFrame({"rate": [1, 2], "e2e_mean": [1, 2]}).to_csv(f, index=False)
    with pytest.raises(SystemExit) as exc:
        main(["fit", str(f)])
    assert exc.value.code == 2


def test_cli_validate_writes_csv_and_png(tmp_path: Path) -> None:
    scn_file = tmp_path / "s.yaml"
    scn_file.write_text(small(**{"workload.num_requests": 400}).to_yaml())
    out = tmp_path / "v"
    main(["validate", str(scn_file), "--rates", "40,120", "--reps", "2", "--jobs", "1",
          "--initial", "400", "--max-requests", "800", "--out", str(out)])
    df = pd.read_csv(out / "validation.csv")
    assert list(df.columns[:9]) == [
        "rate", "fraction", "metric", "statistic", "analytic", "sim", "ci_low", "ci_high",
        "rel_error",
    ]
    assert len(df) == 2 * 3 * 4
    assert set(df["verdict"]) <= {"holds", "fails", "CI too wide to judge", "n/a"}
    # every interval lies inside the data's range: positive, and around its estimate; a p99 of
    # 800 requests has too few batches of 500 (5 exceedances each) for one: too wide to judge
    ci = df[df["ci_low"].notna()]
    assert len(ci) >= 12 and (ci["ci_low"] > 0).all() and (ci["ci_low"] <= ci["sim"]).all()
    assert (ci["sim"] <= ci["ci_high"]).all()
    assert (df.loc[df["ci_low"].isna(), "verdict"] == "CI too wide to judge").all()
    assert (out / "validation.png").stat().st_size > 10_000
    # the sdsim version and the seed: a sidecar for the CSV, text chunks in the PNG
    from PIL import Image

    from sdsim._version import __version__

    meta = json.loads((out / "validation.csv.meta.json").read_text())
    assert meta["sdsim_version"] == __version__ and meta["seed"] == small().seed
    info = Image.open(out / "validation.png").info
    assert info["Software"] == f"sdsim {__version__}" and "seed 1" in info["Description"]


def test_cli_advise(capsys: pytest.CaptureFixture[str]) -> None:
    main(["advise", str(ROOT / "scenarios/default.yaml"), "--rates", "5,40"])
    text = capsys.readouterr().out
    assert "best k" in text


def test_best_k_search_stops_at_per_position_list_length() -> None:
    # A per-position acceptance list defines alpha for len(list) positions only; the k search must
    # not try longer drafts (it used to raise a ValueError traceback for k_max > len(list)).
    from sdsim import predict
    from tests.conftest import small

    scn = small(**{"spec.k": 2, "spec.k_max": 8, "acceptance.alpha": [0.8, 0.6, 0.4]})
    p = predict(scn)
    assert all(k is None or k <= 3 for k in p.best_k.values())
