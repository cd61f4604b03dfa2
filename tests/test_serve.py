"""`sdsim serve`: the OpenAI-compatible API in process (shapes, streaming, usage, errors)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import warnings
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

with warnings.catch_warnings():
    # starlette >= 1.x warns that its TestClient will move from httpx to httpx2; httpx works
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from sdsim.api_requests import count_tokens
from sdsim.serve import LiveEngine, create_app
from tests.conftest import small


@pytest.fixture
def client() -> TestClient:
    app = create_app(small(**{"spec.k": 2}), model="sim-model", default_max_tokens=7)
    with TestClient(app) as c:
        yield c


def test_count_tokens_heuristic() -> None:
    assert count_tokens("") == 1
    assert count_tokens("a b c d e") == 5  # words beat chars/4 for short words
    assert count_tokens("x" * 40) == 10  # 4 characters per token


def test_models_and_health(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    data = client.get("/v1/models").json()
    assert data["object"] == "list" and data["data"][0]["id"] == "sim-model"


def test_completion_non_streaming(client: TestClient) -> None:
    r = client.post("/v1/completions", json={"prompt": list(range(50)), "max_tokens": 5})
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "text_completion"
    assert body["usage"] == {"prompt_tokens": 50, "completion_tokens": 5, "total_tokens": 55}
    assert body["choices"][0]["finish_reason"] == "length"
    assert len(body["choices"][0]["text"].split()) == 5
    # the default output length applies when max_tokens is absent
    r2 = client.post("/v1/completions", json={"prompt": "hello"}).json()
    assert r2["usage"]["completion_tokens"] == 7


def test_chat_streaming_chunks_and_usage(client: TestClient) -> None:
    req = {
        "messages": [{"role": "user", "content": [{"type": "text", "text": "x" * 400}]}],
        "max_completion_tokens": 20,
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }
    with client.stream("POST", "/v1/chat/completions", json=req) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln]
    assert lines[-1] == "data: [DONE]"
    msgs = [json.loads(ln.removeprefix("data: ")) for ln in lines[:-1]]
    content = [m for m in msgs if m["choices"]]
    assert content[0]["choices"][0]["delta"]["role"] == "assistant"
    tokens = [len(m["choices"][0]["delta"]["content"].split()) for m in content]
    assert sum(tokens) == 20
    # speculation (k = 2) emits 1..3 tokens per step; the first chunk is the prefill's one token
    assert tokens[0] == 1 and max(tokens) <= 3
    assert content[-1]["choices"][0]["finish_reason"] == "length"
    assert all(
        m["usage"]["completion_tokens"] == c
        for m, c in zip(content, np.cumsum(tokens), strict=True)
    )
    assert msgs[-1]["choices"] == [] and msgs[-1]["usage"]["prompt_tokens"] == 100
    sim = client.get("/sdsim/requests").json()
    assert sim["output_tokens"] == [20] and sim["prompt_tokens"] == [100]
    assert sim["first_token"][0] > sim["arrival"][0]


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/completions", {"prompt": "hi", "max_tokens": 0}, "max_tokens"),
        ("/v1/completions", {"prompt": "hi", "max_tokens": "many"}, "max_tokens"),
        ("/v1/completions", {"prompt": ["a", "b"]}, "prompt"),
        ("/v1/completions", {"max_tokens": 3}, "prompt"),
        ("/v1/chat/completions", {"messages": []}, "messages"),
    ],
)
def test_bad_requests_are_400(client: TestClient, path: str, body: dict, param: str) -> None:
    r = client.post(path, json=body)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == param and err["message"].startswith(param)


def test_live_engine_grows_its_table() -> None:
    """More requests than the initial table holds: all finish with their own lengths."""

    async def run() -> LiveEngine:
        live = LiveEngine(small(**{"spec.k": 3}), capacity=16)
        live.start()
        task = asyncio.create_task(live.drive())
        queues = [live.submit(32 + i, 3 + i % 5)[1] for i in range(40)]
        got = []
        for q in queues:
            n = 0
            while True:
                new, done, _ = await asyncio.wait_for(q.get(), timeout=30)
                n += new
                if done:
                    break
            got.append(n)
        task.cancel()
        assert got == [3 + i % 5 for i in range(40)]
        return live

    live = asyncio.run(run())
    assert live.table.n >= 40
    rec = live.records_json()
    assert rec["prompt_tokens"] == [32 + i for i in range(40)]
    assert all(f is not None for f in rec["finish"])


def test_cli_serve_bad_options_exit_2(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from sdsim.cli import main

    p = tmp_path / "s.yaml"
    p.write_text(small().to_yaml())
    for argv in (
        ["serve", str(p), "--time-scale", "0"],
        ["serve", str(p), "--port", "70000"],
        ["serve", str(p), "--history", "-1"],
        ["serve", str(tmp_path / "missing.yaml")],
    ):
        with pytest.raises(SystemExit) as ei:
            main(argv)
        assert ei.value.code == 2


# --------------------------------------------------------------------------- disconnects


@contextlib.contextmanager
def _serving(**over: Any) -> Iterator[tuple[str, LiveEngine]]:
    """The app behind a real uvicorn server on a loopback port (TestClient cannot disconnect):
    ~50 ms steps in real time, so an abandoned 2,000-token request would run ~30 s."""
    import socket
    import threading

    import uvicorn

    scn = small(
        **{
            "spec.k": 2,
            "costs.linear.verify_fixed_s": 0.05,
            "server.num_gpu_blocks": 4000,
            **over,
        }
    )
    app = create_app(scn, model="sim-model")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", app.state.live
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def live_server() -> Iterator[tuple[str, LiveEngine]]:
    with _serving() as served:
        yield served


def _wait_aborted(base: str, rid: int) -> dict[str, Any]:
    """Poll /sdsim/requests until request ``rid`` is marked aborted (10 s at most)."""
    deadline = time.monotonic() + 10
    while True:
        sim = httpx.get(f"{base}/sdsim/requests").json()
        if rid in sim["rid"] and sim["aborted"][sim["rid"].index(rid)]:
            return sim
        assert time.monotonic() < deadline, f"request {rid} not aborted: {sim}"
        time.sleep(0.02)


@pytest.mark.parametrize("stream", [True, False])
def test_client_that_disconnects_has_its_request_aborted(live_server: Any, stream: bool) -> None:
    # A client asks for 2,000 tokens and goes away: streaming, after its first chunk; not
    # streaming, when its read times out. Its request is aborted at the next step boundary after
    # the server sees the disconnect: it leaves the running set, frees its KV blocks and is
    # marked aborted. The tolerance on when: one step (50 ms) plus 1 s for the server to see
    # the closed socket on a loaded machine (the request would have run ~30 s).
    base, live = live_server
    body = {"prompt": list(range(64)), "max_tokens": 2000, "stream": stream}
    with httpx.Client(base_url=base, timeout=httpx.Timeout(30.0, read=1.0)) as client:
        if stream:
            with client.stream("POST", "/v1/completions", json=body) as r:
                assert r.status_code == 200
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        break  # one chunk, then hang up
        else:
            with pytest.raises(httpx.ReadTimeout):
                client.post("/v1/completions", json=body)
        gone = time.monotonic()
    sim = _wait_aborted(base, 0)
    assert sim["running"] == [] and sim["waiting"] == [] and sim["kv_blocks_used"] == 0
    finish = sim["finish"][0]
    assert finish is not None
    gone_sim = (gone - sim["t0_monotonic"]) / sim["time_scale"]
    assert finish <= gone_sim + 0.05 + 1.0
    assert sim["output_tokens"] == [2000]
    # it stopped long before its 2,000 tokens (a decode step emits at most k + 1 = 3)
    assert live.records()["steps"][0] < 200


def test_a_queued_client_that_leaves_is_aborted_and_a_leaving_client_frees_its_seat() -> None:
    # One seat (max_num_seqs = 1). A holds it with a 2,000-token stream; B waits behind it and
    # gives up (read timeout): B leaves the queue at the next step boundary, never scheduled.
    # Then A hangs up: the seat and A's KV blocks are freed, and C is served at once (a few
    # steps of 50 ms, against ~100 s had A kept the seat). Tolerance on "at once": 3 s for a
    # loaded machine.
    with _serving(**{"server.max_num_seqs": 1}) as (base, live):
        body = {"prompt": list(range(64)), "max_tokens": 2000, "stream": True}
        with httpx.Client(base_url=base, timeout=httpx.Timeout(30.0, read=1.0)) as a:
            with a.stream("POST", "/v1/completions", json=body) as r:
                lines = r.iter_lines()  # kept: closing the iterator would close the connection
                next(ln for ln in lines if ln.startswith("data: "))
                with httpx.Client(base_url=base, timeout=httpx.Timeout(30.0, read=0.5)) as b:
                    with pytest.raises(httpx.ReadTimeout):
                        with b.stream("POST", "/v1/completions", json=body) as rb:
                            list(rb.iter_lines())
                sim = _wait_aborted(base, 1)
                assert sim["running"] == [0] and sim["waiting"] == []
                assert sim["first_token"][1] is None  # never scheduled
                assert live.table.kv_blocks[1] == 0
                assert not live.table.aborted[0]  # A, still reading, keeps its seat
            sim = _wait_aborted(base, 0)
            assert sim["running"] == [] and sim["kv_blocks_used"] == 0
        t0 = time.monotonic()
        r = httpx.post(f"{base}/v1/completions", json={"prompt": "hi", "max_tokens": 3}, timeout=30)
        assert r.status_code == 200 and time.monotonic() - t0 < 3.0
        assert r.json()["usage"]["completion_tokens"] == 3
