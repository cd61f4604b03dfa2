"""`sdsim serve` holds a bounded history: however many requests it serves, it keeps the records of
the last ``history`` to leave plus the requests in the engine, and running summaries that cover
every request (exact counts, sums and means; quantiles from the streaming sketch)."""

from __future__ import annotations

import asyncio
import warnings

import numpy as np
import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's TestClient: the httpx deprecation notice
    from starlette.testclient import TestClient

from sdsim.serve import LiveEngine, create_app
from sdsim.serve_history import MAX_WINDOW, ServeHistory
from tests.conftest import small

WINDOW = 50
WAVES, PER_WAVE = 80, 25  # 2,000 requests: 40 x the window


async def _serve_waves(live: LiveEngine, sizes: list[int]) -> list[int]:
    """Send waves of requests of the given sizes (prompt 32 + i, output 2 + i % 7 tokens), each
    after the previous one has finished; returns the table's slots after each wave."""
    live.start()
    task = asyncio.create_task(live.drive())
    slots = []
    i = 0
    for size in sizes:
        queues = []
        for _ in range(size):
            queues.append(live.submit(32 + i % 50, 2 + i % 7)[1])
            i += 1
        for q in queues:
            while not (await asyncio.wait_for(q.get(), timeout=30))[1]:  # type: ignore[index]
                pass
        slots.append(live.table.n)
    task.cancel()
    return slots


def test_history_is_bounded_and_summaries_cover_every_request() -> None:
    # 2,000 requests through a live engine with a 50-record window (time scale 0.01: the
    # simulated server runs 100 x faster than real time). Every record that leaves the table is
    # also copied here, the full history to compare the summaries with.
    live = LiveEngine(small(**{"spec.k": 3}), capacity=16, time_scale=0.01, history=WINDOW)
    full: list[dict[str, np.ndarray]] = []
    add = live.history.add

    def tee(r: dict[str, np.ndarray]) -> None:
        full.append({k: np.array(v) for k, v in r.items()})
        add(r)

    live.history.add = tee  # type: ignore[method-assign]
    slots = asyncio.run(_serve_waves(live, [PER_WAVE] * WAVES))

    # memory: the window holds 50 records, the table as many slots as a wave needed
    summ = live.summary_json()
    recs = live.records()
    assert live.history.held == WINDOW and recs["rid"].shape[0] == WINDOW
    assert slots[-1] == slots[3] <= 64  # the table stopped growing after the first waves
    assert len(live._slot) == 0  # nothing in flight is remembered once it has left

    # the window: the last 50 requests to finish, in request-id order
    rec = {k: np.concatenate([f[k] for f in full]) for k in full[0]}
    assert rec["rid"].shape[0] == WAVES * PER_WAVE
    np.testing.assert_array_equal(np.sort(rec["rid"]), np.arange(WAVES * PER_WAVE))
    last = np.sort(rec["rid"][np.argsort(rec["finish"], kind="stable")[-WINDOW:]])
    np.testing.assert_array_equal(recs["rid"], last)

    # the summaries: exact counts, sums and means (sums in another order: 1e-12 relative)
    n = WAVES * PER_WAVE
    assert summ["received"] == summ["completed"] == n and summ["aborted"] == 0
    assert summ["running"] == summ["waiting"] == 0
    assert summ["prompt_tokens_sum"] == int(rec["prompt_tokens"].sum())
    assert summ["output_tokens_sum"] == int(rec["output_tokens"].sum())
    e2e = rec["finish"] - rec["arrival"]
    ttft = rec["first_token"] - rec["arrival"]
    many = rec["output_tokens"] > 1
    tpot = (rec["finish"] - rec["first_token"])[many] / (rec["output_tokens"][many] - 1)
    queue = rec["first_scheduled"] - rec["arrival"]
    for name, x in (("e2e", e2e), ("ttft", ttft), ("tpot", tpot), ("queue_delay", queue)):
        assert summ[f"{name}_mean"] == pytest.approx(float(x.mean()), rel=1e-12), name
        # quantiles: each order statistic within the sketch's 0.5%, so their interpolation too;
        # 1% leaves room for values the sketch clamps near zero (queue delays of 0 s count
        # apart, exactly)
        for st, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
            want = float(np.quantile(x, q))
            assert summ[f"{name}_{st}"] == pytest.approx(want, rel=0.01, abs=1e-9), (name, st)


def test_abort_after_a_request_left_does_not_touch_the_request_in_its_slot() -> None:
    # Slots are reused: request 0 finishes and is collected, request 1 takes its slot; a late
    # abort of request 0 (its client hanging up after the last token) must do nothing.
    live = LiveEngine(small(**{"spec.k": 2}), capacity=16, time_scale=0.01, history=10)

    async def run() -> tuple[bool, int, int]:
        live.start()
        task = asyncio.create_task(live.drive())
        _, q0 = live.submit(32, 3)
        while not (await asyncio.wait_for(q0.get(), timeout=30))[1]:  # type: ignore[index]
            pass
        live.collect()
        rid1, q1 = live.submit(40, 400)
        slot1 = live._slot[rid1]
        late = live.abort(0)
        got = 0
        while True:
            new, done, _ = await asyncio.wait_for(q1.get(), timeout=30)  # type: ignore[misc]
            got += new
            if done:
                break
        task.cancel()
        return late, got, slot1

    late, got, slot1 = asyncio.run(run())
    assert slot1 == 0 and not late and got == 400  # request 1 in request 0's slot, served whole
    recs = live.records()
    assert live._slot == {} and recs["rid"].tolist() == [0, 1] and not recs["aborted"].any()


def test_summary_and_window_over_http() -> None:
    app = create_app(small(**{"spec.k": 2}), model="m", history=1)
    with TestClient(app) as client:
        for n in (3, 4):
            r = client.post("/v1/completions", json={"prompt": list(range(20)), "max_tokens": n})
            assert r.status_code == 200
        summ = client.get("/sdsim/summary").json()
        sim = client.get("/sdsim/requests").json()
    assert summ["received"] == summ["completed"] == 2 and summ["output_tokens_sum"] == 7
    assert summ["history_window"] == summ["history_held"] == 1
    assert summ["e2e_mean"] > summ["ttft_mean"] > 0
    assert sim["received"] == 2 and sim["rid"] == [1] and sim["output_tokens"] == [4]


def test_bad_history_is_refused() -> None:
    with pytest.raises(ValueError, match="window"):
        ServeHistory(-1)
    with pytest.raises(ValueError, match="window"):
        ServeHistory(MAX_WINDOW + 1)
