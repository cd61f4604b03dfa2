"""Queueing-theory oracles: the engine reduced to textbook systems.

With linear costs whose only non-zero coefficient is the verifier's fixed cost ``d``, k = 0 and
one-token prompts, every step lasts exactly ``d`` and a request with N output tokens needs N steps
(the prefill step emits the first token): service time S = N·d. With ``max_num_seqs = 1`` the
engine is then an M/G/1 FCFS queue; with no cap it is M/G/∞ up to step alignment; with a cost per
batched token instead of a fixed cost it is processor sharing.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from sdsim import simulate
from sdsim.metrics import t_confidence_interval
from sdsim.workload import generate_workload
from tests.conftest import small

D = 1e-3  # seconds per step


def queue(rate: float, lengths: Any, max_seqs: int, n: int = 3000, **over: Any):
    zero = {
        f"costs.linear.{f}": 0.0
        for f in (
            "verify_fixed_s",
            "verify_per_token_s",
            "verify_per_kv_token_s",
            "draft_fixed_s",
            "draft_per_token_s",
            "draft_per_kv_token_s",
            "overhead_s",
        )
    }
    zero["costs.linear.verify_fixed_s"] = D
    return small(
        **{
            "spec.k": 0,
            "workload.rate": rate,
            "workload.num_requests": n,
            "workload.prompt_tokens": 1,
            "workload.output_tokens": lengths,
            "server.max_num_seqs": max_seqs,
            "warmup_requests": 200,
            **zero,
            **over,
        }
    )


def ciw_waits(arrival: np.ndarray, service: np.ndarray) -> np.ndarray:
    """Waiting times from Ciw (an independent simulator) on the same arrival and service streams."""
    ciw = pytest.importorskip("ciw")
    gaps = np.diff(np.concatenate(([0.0], arrival))).tolist()
    net = ciw.create_network(
        arrival_distributions=[ciw.dists.Sequential(gaps)],
        service_distributions=[ciw.dists.Sequential(service.tolist())],
        number_of_servers=[1],
    )
    ciw.seed(0)  # Ciw keeps global RNG state; Sequential draws use none of it
    sim = ciw.Simulation(net)
    sim.simulate_until_max_customers(len(arrival), method="Finish")
    recs = sorted(sim.get_all_records(), key=lambda r: r.id_number)
    return np.array([r.waiting_time for r in recs])


@pytest.mark.parametrize("lengths", [20, {"dist": "geometric", "mean": 20}], ids=["MD1", "MM1"])
def test_single_server_matches_ciw_record_by_record(lengths: Any) -> None:
    scn = queue(rate=35.0, lengths=lengths, max_seqs=1, n=800)  # rho = 0.7
    res = simulate(scn, seed=4)
    wl = generate_workload(scn, 4)
    waits = ciw_waits(wl.arrival, wl.output * D)
    ours = res.requests["queue_delay"].to_numpy()
    # Same FCFS system, same streams: identical up to float summation order.
    np.testing.assert_allclose(ours, waits, atol=1e-9)


@pytest.mark.parametrize(
    ("lengths", "es", "es2"),
    [
        (5, 5 * D, (5 * D) ** 2),
        # geometric on 1, 2, ... with mean m: E[N^2] = (2 - p) / p^2, p = 1/m
        ({"dist": "geometric", "mean": 5}, 5 * D, (2 - 0.2) / 0.2**2 * D**2),
    ],
    ids=["MD1", "MM1"],
)
def test_single_server_mean_wait_pollaczek_khinchine(lengths: Any, es: float, es2: float) -> None:
    # Pollaczek-Khinchine E[W] = lambda E[S^2] / (2 (1 - rho)) must lie inside the 99% t-CI of the
    # replication means (6 replications x 3000 requests, seeds 0..5). Deterministic given the seeds;
    # short services (5 steps) keep the run cheap without changing the theory (P-K is exact for any
    # service law).
    rho = 0.6
    lam = rho / es
    theory = lam * es2 / (2 * (1 - rho))
    means = [
        simulate(queue(lam, lengths, 1), seed=s).requests.query("~warmup")["queue_delay"].mean()
        for s in range(6)
    ]
    m, lo, hi = t_confidence_interval(means, 0.99)
    assert lo <= theory <= hi, (theory, m, lo, hi)


def test_infinite_server_never_waits_and_poisson_occupancy() -> None:
    # M/G/inf: no cap and a step time independent of the batch. A request waits at most for the
    # step in progress (< D) and then takes exactly N steps, so E[T] = N D + D/2 (PASTA: arrivals
    # see the step in progress at a uniform point). Number in system ~ Poisson(lambda E[T]).
    lam, n_tok = 400.0, 25
    scn = queue(lam, n_tok, max_seqs=100_000, n=6000, **{"server.max_num_batched_tokens": 10**6})
    res = simulate(scn, seed=9)
    r = res.requests.query("~warmup")
    assert (r["queue_delay"] < D + 1e-12).all()
    e2e_theory = n_tok * D + D / 2
    # the only randomness is U(0, D) per request: se = D / sqrt(12 n), far below 1% of E[T]
    assert r["e2e"].mean() == pytest.approx(e2e_theory, rel=0.01)
    s = res.summary
    assert s["in_system_mean"] == pytest.approx(lam * e2e_theory, rel=0.03)  # Poisson count, se ~1%
    # Poisson occupancy: variance equals mean (sampled at step starts, i.e. uniformly in time).
    occ = res.steps["num_seqs"].to_numpy()[len(res.steps) // 10 :]
    assert occ.var() / occ.mean() == pytest.approx(1.0, abs=0.15)


def test_processor_sharing_mean_sojourn() -> None:
    # Step time = c x (requests in the step): each of n requests gets 1 token per c*n seconds, i.e.
    # egalitarian processor sharing with service S = N c. M/G/1-PS: E[T] = E[S] / (1 - rho).
    # Allowance: arrivals wait for the step in progress (mean residual about c * E[n] ~ 2% of E[T]),
    # so the 99% CI over 5 replications is widened by 3% of E[T].
    c, m, rho = 0.8e-3, 25, 0.5
    es = m * c
    lam = rho / es
    scn = queue(
        lam,
        {"dist": "geometric", "mean": m},
        max_seqs=10_000,
        n=1500,
        **{"costs.linear.verify_fixed_s": 0.0, "costs.linear.verify_per_token_s": c},
    )
    means = [simulate(scn, seed=s).requests.query("~warmup")["e2e"].mean() for s in range(5)]
    theory = es / (1 - rho)
    mean, lo, hi = t_confidence_interval(means, 0.99)
    slack = 0.03 * theory
    assert lo - slack <= theory <= hi + slack, (theory, mean, lo, hi)
    assert math.isfinite(mean)


def test_speculative_single_server_pollaczek_khinchine_with_exact_step_law() -> None:
    # M/G/1 whose service is speculative decoding: one-token prompts, N = 12 output tokens,
    # k = 3 with per-position alpha (0.9, 0.7, 0.5), every step costs D (drafting free). A request
    # takes one prefill step (its first token) and S(N - 1) decode steps, where S(n) is the exact
    # steps-to-finish law of the truncated geometric (sdsim.acceptance, by dynamic programming),
    # so service = D (1 + S). Checks, inside 99% t-CIs over 6 replications x 1500 requests
    # (seeds 0..5; deterministic given them):
    # * the engine's mean decode steps per request against E[S(N - 1)];
    # * the mean wait against Pollaczek-Khinchine with E[service^2] = D^2 ((1 + E S)^2 + Var S).
    from sdsim.acceptance import steps_to_finish_moments

    n_tok, alpha, k, rho = 12, [0.9, 0.7, 0.5], 3, 0.6
    m1, var = steps_to_finish_moments(n_tok - 1, alpha, k)
    es = D * (1 + m1[-1])
    es2 = D**2 * ((1 + m1[-1]) ** 2 + var[-1])
    lam = rho / es
    scn = queue(lam, n_tok, 1, n=1500, **{"spec.k": k, "acceptance.alpha": alpha})
    runs = [simulate(scn, seed=s).requests.query("~warmup") for s in range(6)]
    _, lo, hi = t_confidence_interval([r["steps"].mean() for r in runs], 0.99)
    assert lo <= m1[-1] <= hi, (m1[-1], lo, hi)
    theory = lam * es2 / (2 * (1 - rho))
    _, lo, hi = t_confidence_interval([r["queue_delay"].mean() for r in runs], 0.99)
    assert lo <= theory <= hi, (theory, lo, hi)
    # service is exactly D per step, prefill included
    r = runs[0]
    np.testing.assert_allclose(r["finish"] - r["first_scheduled"], D * (1 + r["steps"]), atol=1e-9)
