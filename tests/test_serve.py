"""`sdsim serve`: the OpenAI-compatible API in process (shapes, streaming, usage, errors)."""

from __future__ import annotations

import asyncio
import json
import warnings

import numpy as np
import pytest

with warnings.catch_warnings():
    # starlette >= 1.x warns that its TestClient will move from httpx to httpx2; httpx works
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from sdsim.serve import LiveEngine, count_tokens, create_app
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
        ["serve", str(tmp_path / "missing.yaml")],
    ):
        with pytest.raises(SystemExit) as ei:
            main(argv)
        assert ei.value.code == 2
