"""Arrivals beyond Poisson: the MMPP generator, the analytic view of each process, the
two-state law, and predict's warnings where the model does not hold."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

import sdsim
from sdsim.analytic.arrivals import arrival_view
from sdsim.analytic.gps import birth_death, modulated_birth_death, noisy
from sdsim.workload import generate_workload

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "scenarios" / "default.yaml"


def _mmpp(**over: object) -> sdsim.Scenario:
    base = {
        "workload.arrival": "mmpp",
        "workload.rate": 20.0,
        "workload.num_requests": 200_000,
        "workload.mmpp": {"low_ratio": 0.25, "burst_fraction": 0.2, "cycle_s": 10.0},
    }
    return sdsim.load_scenario(DEFAULT, overrides={**base, **over})


def test_mmpp_arrivals_have_their_rate_and_burstiness() -> None:
    # rates 12.5 / 50 req/s, bursts 2 s of every 10: the counts in windows of T seconds have
    # index of dispersion 1 + 2 Var(rate) / (rate gamma) (1 - (1 - e^(-gamma T)) / (gamma T)),
    # Var(rate) = 0.16 * 37.5^2 = 225, gamma = 1/8 + 1/2: 37 asymptotically, 34.1 at 20 s.
    # 200,000 arrivals (seed 0) span ~10,000 s: the 1 s mean rate is within 2% (its sd, with
    # an index of 37, is ~0.6%), and the 20 s index within 25% (500 windows, a variance
    # estimate of long-memory counts: its sd is ~15%)
    a = generate_workload(_mmpp(), 0).arrival
    assert np.all(np.diff(a) >= 0)
    assert len(a) / a[-1] == pytest.approx(20.0, rel=0.02)
    c = np.bincount((a / 20.0).astype(np.int64))[:-1]
    assert c.var() / c.mean() == pytest.approx(34.1, rel=0.25)
    # the same seed, the same arrivals; a longer run extends the same stream's prefix
    assert np.array_equal(generate_workload(_mmpp(), 0).arrival, a)


def test_arrival_views() -> None:
    v = arrival_view(sdsim.load_scenario(DEFAULT))
    assert (v.states, v.ca2, v.batch) == (1, 1.0, 1.0)
    c = arrival_view(sdsim.load_scenario(DEFAULT, overrides={"workload.arrival": "constant"}))
    assert (c.states, c.ca2) == (1, 0.0)
    g = arrival_view(sdsim.load_scenario(DEFAULT, overrides={"workload.arrival": "gamma",
                                                               "workload.cv": 0.5}))
    assert (g.ca2, g.batch) == (0.25, 1.0)
    b = arrival_view(sdsim.load_scenario(ROOT / "scenarios/bursty-gamma.yaml"), step_s=0.01)
    # gamma(1/9) gaps at 20 req/s: P(gap < 10 ms) = gammainc(1/9, 0.2/9) ~ 0.69 -> clumps of ~3
    assert b.ca2 == 9.0 and 2.5 < b.batch < 4.5
    m = arrival_view(_mmpp())
    assert m.states == 2 and m.rates == pytest.approx((12.5, 50.0))
    assert m.arrival_share == pytest.approx([0.5, 0.5])  # 12.5 x 0.8 = 50 x 0.2
    assert m.index_of_dispersion() == pytest.approx(37.0)
    # the rate after an arrival in a burst relaxes to the mean at gamma = 0.625 / s
    assert m.rate_over(1, 1e-9) == pytest.approx(50.0)
    assert m.rate_over(1, 1e6) == pytest.approx(20.0, rel=1e-4)
    # replicas: bursts reach every replica; round-robin regularises the Poisson within a state
    rr = arrival_view(_mmpp(**{"server.replicas": 2}))
    assert rr.rates == pytest.approx((6.25, 25.0)) and rr.ca2 == 0.5


def test_two_states_with_equal_rates_are_the_birth_death_law() -> None:
    n_max = 40
    phi = np.arange(1, n_max + 1) / 2.0
    bd = birth_death(10.0, 1.0, lambda n: np.full_like(n, 2.0), n_max)
    q = modulated_birth_death(np.full((2, n_max), 10.0), np.vstack([phi, phi]),
                              np.array([0.3, 0.7]), 10.0)
    m = min(bd.pmf.shape[0], q.pmf.shape[0])
    np.testing.assert_allclose(q.pmf[:m], bd.pmf[:m], rtol=1e-9, atol=1e-15)
    assert q.joint is not None and q.joint.sum(axis=0) == pytest.approx([0.7, 0.3])


def test_two_state_law_against_a_dense_solve() -> None:
    # a modulated M/M/1 with a cap of 5 in service: the QBD solve against the generator's null
    # space on 400 levels (the law's mass beyond them is < 1e-30)
    births = np.array([[0.2] * 5, [1.5] * 5])
    deaths = np.ones((2, 5))
    leave = np.array([0.1, 0.3])
    q = modulated_birth_death(births, deaths, leave, 0.525)
    N, S = 400, 2
    G = np.zeros(((N + 1) * S, (N + 1) * S))
    for n in range(N + 1):
        for i in range(S):
            k = n * S + i
            if n < N:
                G[k, (n + 1) * S + i] += births[i, 0]
            if n > 0:
                G[k, (n - 1) * S + i] += deaths[i, 0]
            G[k, n * S + 1 - i] += leave[i]
    np.fill_diagonal(G, -G.sum(axis=1))
    A = np.vstack([G.T, np.ones((N + 1) * S)])
    rhs = np.zeros((N + 1) * S + 1)
    rhs[-1] = 1.0
    pi = np.linalg.lstsq(A, rhs, rcond=None)[0].reshape(N + 1, S)
    m = min(q.pmf.shape[0], N + 1)
    np.testing.assert_allclose(q.pmf[:m], pi[:m].sum(axis=1), atol=1e-10)


def test_noise_keeps_the_drift_and_scales_the_variance_at_the_mode() -> None:
    lam, phi = 10.0, np.array([5.0, 10.0, 40.0])
    up, down = noisy(lam, phi, 3.0)
    np.testing.assert_allclose(up - down, lam - phi)
    assert (up + down)[1] == pytest.approx(3.0 * 20.0)  # at the mode: F times the variance
    assert (up + down)[2] < 3.0 * 50.0  # far above it, the departures' own noise dominates
    up, down = noisy(lam, phi, 0.0)  # regular arrivals: as little noise as the drift allows
    assert np.all(up >= 0) and np.all(down >= 0)
    np.testing.assert_allclose(up - down, lam - phi, atol=1e-6)


def test_predict_warns_on_arrivals_it_cannot_model(capsys: pytest.CaptureFixture[str]) -> None:
    from sdsim.cli import main

    gamma = sdsim.load_scenario(ROOT / "scenarios/bursty-gamma.yaml")
    p = sdsim.predict(gamma, rates=[])
    assert p.outside_model is not None and "clump" in p.outside_model
    assert p.to_dict()["outside_model"] == p.outside_model
    # the same scenario with CV 1 is Poisson-like: inside
    assert sdsim.predict(gamma.with_overrides({"workload.cv": 1.0}), rates=[]).outside_model is None
    main(["predict", str(ROOT / "scenarios/bursty-gamma.yaml")])
    assert "outside the model" in capsys.readouterr().err
    # MMPP: bursts below the saturation rate are modelled, bursts above it are not
    mm = sdsim.load_scenario(ROOT / "scenarios/mmpp-bursts.yaml")
    assert sdsim.predict(mm, rates=[]).outside_model is None
    hot = sdsim.predict(mm.with_overrides({"workload.rate": 20.0}), rates=[])
    assert hot.outside_model is not None
    assert "bursts exceed the saturation rate" in hot.outside_model
    assert math.isfinite(hot.summary["e2e_p99"])


def test_predict_names_its_known_tail_errors(capsys: pytest.CaptureFixture[str]) -> None:
    # inside the model but with a measured tail error beyond validation's tolerances: predict
    # says so (caveats, JSON and console), validate repeats it; none where the model holds
    from sdsim.cli import main

    chat = sdsim.load_scenario(ROOT / "scenarios/capacity-70b-chat.yaml")
    p = sdsim.predict(chat.with_overrides({"server.replicas": 1, "workload.rate": 7.2}), rates=[])
    assert p.outside_model is None
    assert len(p.caveats) == 1 and "prompts of random length" in p.caveats[0]
    assert p.to_dict()["caveats"] == p.caveats
    # the same load with fixed prompts, and light load: no caveat
    fixed = chat.with_overrides(
        {"server.replicas": 1, "workload.rate": 7.2, "workload.prompt_tokens": 1024}
    )
    assert sdsim.predict(fixed, rates=[]).caveats == []
    assert sdsim.predict(chat.with_overrides({"workload.rate": 3.0}), rates=[]).caveats == []
    # admission waits decide the TTFT tail
    cap = sdsim.load_scenario(
        ROOT / "scenarios/default.yaml", {"costs.source": "linear", "server.max_num_seqs": 32}
    )
    sat = sdsim.predict(cap, rates=[], quantiles=False).saturation_rate
    q = sdsim.predict(cap.with_overrides({"workload.rate": 0.85 * sat}), rates=[])
    assert any("wait for a slot" in c for c in q.caveats)
    assert sdsim.predict(cap.with_overrides({"workload.rate": 0.4 * sat}), rates=[]).caveats == []
    main(["predict", str(ROOT / "scenarios/capacity-70b-chat.yaml"),
          "--set", "server.replicas=1", "--set", "workload.rate=7.2"])
    assert "caveat:" in capsys.readouterr().err


def test_predict_warns_when_prompts_queue_for_the_token_budget() -> None:
    # 512-token prompts at 25 req/s (80% load) beside ~100 decoding requests that take 5 budget
    # tokens each: a 1,024-token budget leaves room for about one prompt per step, so arrivals
    # queue for it (the engine's first-come-first-served chunked prefill), which the model does
    # not follow; a 2,048-token budget leaves room for three and the model holds (TTFT mean
    # within 1%, 20,000 requests; notes/analytic.md)
    base = sdsim.load_scenario(ROOT / "scenarios/default.yaml", {"workload.rate": 25.0})
    assert sdsim.predict(base, rates=[]).caveats == []
    roomy = sdsim.predict(base.with_overrides({"server.max_num_batched_tokens": 2048}), rates=[])
    assert roomy.caveats == []
    tight = base.with_overrides({"server.max_num_batched_tokens": 1024})
    p = sdsim.predict(tight, rates=[])
    assert p.outside_model is None
    assert any("queue for the token budget" in c for c in p.caveats)
    # and the error it warns of is there: seed 0, 4,000 requests (first 1,000 dropped), the
    # simulated TTFT mean is about twice the model's (51% low on 20,000 requests); 1.3x leaves
    # room for a short run's noise, which is a few per cent of the mean here
    r = sdsim.simulate(tight.with_overrides({"workload.num_requests": 4000}), seed=0).requests
    assert r["ttft"].iloc[1000:].mean() > 1.3 * p.summary["ttft_mean"]
    # prompts longer than a step's room: every one is prefilled over several steps
    long = base.with_overrides(
        {"workload.prompt_tokens": 4096, "server.max_num_batched_tokens": 2048,
         "workload.rate": 2.0}
    )
    assert any("100% of them" in c for c in sdsim.predict(long, rates=[]).caveats)
