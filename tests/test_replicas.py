"""Replicas behind a router: replicas = 1 is the single engine, routers spread load as specified."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sdsim import simulate
from sdsim.costs.build import build_cost_model
from sdsim.engine.router import Router
from sdsim.engine.scheduler import Batch
from sdsim.engine.server import Engine, run_simulation
from sdsim.workload import Workload, generate_workload
from tests.conftest import small


@pytest.mark.parametrize("router", ["round-robin", "least-outstanding", "random"])
def test_one_replica_is_the_single_engine(router: str) -> None:
    base = simulate(small(**{"server.num_gpu_blocks": 200}), seed=4)
    one = simulate(
        small(**{"server.num_gpu_blocks": 200, "server.replicas": 1, "server.router": router}),
        seed=4,
    )
    pd.testing.assert_frame_equal(base.requests, one.requests)
    pd.testing.assert_frame_equal(base.steps, one.steps)
    assert (one.requests["replica"] == 0).all()


def test_round_robin_replicas_are_independent_engines() -> None:
    # With deterministic acceptance (alpha = 1), replica r of a round-robin pool must behave
    # exactly like one engine fed only requests r, r + N, r + 2N, ... at their arrival times.
    over = {"acceptance.alpha": 1.0, "workload.rate": 90.0, "server.num_gpu_blocks": 40}
    pool = small(**over, **{"server.replicas": 3})
    res = simulate(pool, seed=2)
    wl = generate_workload(pool, 2)
    one = small(**over)
    cost = build_cost_model(one)
    for r in range(3):
        ids = np.arange(r, len(wl), 3)
        sub = Workload(wl.arrival[ids], wl.prompt[ids], wl.output[ids], wl.alpha[ids])  # type: ignore[index]
        ref = run_simulation(one, sub, cost, seed=2)
        got = res.requests.iloc[ids]
        assert (got["replica"] == r).all()
        np.testing.assert_array_equal(got["first_token"].to_numpy(), ref.table.first_token)
        np.testing.assert_array_equal(got["finish"].to_numpy(), ref.table.finish)
        np.testing.assert_array_equal(got["preemptions"].to_numpy(), ref.table.preemptions)
    assert res.summary["preemptions"] > 0  # the KV limit binds on every replica


def test_round_robin_assignment() -> None:
    res = simulate(small(**{"server.replicas": 4, "workload.rate": 60.0}))
    df = res.requests
    np.testing.assert_array_equal(df["replica"], df["request_id"] % 4)
    assert set(res.steps["replica"]) == {0, 1, 2, 3}


def test_random_router_is_uniform_seeded_and_schedule_free() -> None:
    # 3000 requests over 3 replicas: each count is Binomial(3000, 1/3), sd 25.8; 5 sd = 130.
    r = Router("random", 3, 3000, seed=9)
    picks = np.array([r.choose(i) for i in range(3000)])
    counts = np.bincount(picks, minlength=3)
    assert (np.abs(counts - 1000) < 130).all()
    again = Router("random", 3, 3000, seed=9)
    assert [again.choose(i) for i in range(3000)] == picks.tolist()
    other = Router("random", 3, 3000, seed=10)
    assert [other.choose(i) for i in range(3000)] != picks.tolist()
    # the assignment depends on the seed only, not on load or draft length (common random numbers)
    a = simulate(small(**{"server.replicas": 3, "server.router": "random"}), seed=3).requests
    b = simulate(
        small(**{"server.replicas": 3, "server.router": "random", "spec.k": 1, "workload.rate": 5}),
        seed=3,
    ).requests
    np.testing.assert_array_equal(a["replica"], b["replica"])


def test_least_outstanding_picks_the_emptiest_replica() -> None:
    r = Router("least-outstanding", 4, 10)
    r.outstanding[:] = [3, 1, 2, 1]
    assert r.choose(0) == 1  # ties go to the lowest index
    r.outstanding[:] = [0, 0, 0, 0]
    assert r.choose(5) == 0
    with pytest.raises(ValueError, match="unknown router"):
        Router("fastest", 2, 10)


def test_least_outstanding_counts_are_kept_and_balance_better_than_random() -> None:
    # Heavy-tailed outputs (lognormal, CV 2) on 4 replicas of 4 sequences each: joining the
    # emptiest replica avoids queueing behind long requests. Measured mean queueing delay with
    # 800 requests, seeds 0, 1, 2: least-outstanding 15-25 ms, random 69-241 ms, round-robin
    # 82-157 ms; mean e2e 0.22-0.24 s vs 0.27-0.46 s. We require a factor 2 on queueing delay
    # at seed 0 (observed 4.5) and 10% lower mean e2e than both (observed 20%).
    over = {
        "server.replicas": 4,
        "server.max_num_seqs": 4,
        "workload.rate": 60.0,
        "workload.num_requests": 800,
        "workload.output_tokens": {"dist": "lognormal", "mean": 64, "cv": 2.0},
    }

    def hook(engine: Engine, batch: Batch) -> None:
        assert engine.router is not None
        here = engine.run_ids.shape[0] + len(engine.waiting)
        assert engine.router.outstanding[engine.replica] == engine.outstanding == here

    lo = simulate(small(**over, **{"server.router": "least-outstanding"}), on_step=hook, seed=0)
    rnd = simulate(small(**over, **{"server.router": "random"}), seed=0)
    rr = simulate(small(**over, **{"server.router": "round-robin"}), seed=0)
    assert lo.summary["stable"] and rnd.summary["stable"]
    assert lo.summary["queue_delay_mean"] < 0.5 * rnd.summary["queue_delay_mean"]
    assert lo.summary["queue_delay_mean"] < 0.5 * rr.summary["queue_delay_mean"]
    assert lo.summary["e2e_mean"] < 0.9 * min(rnd.summary["e2e_mean"], rr.summary["e2e_mean"])
    counts = np.bincount(lo.requests["replica"], minlength=4)
    assert counts.min() > 0.15 * 800  # every replica takes a real share
