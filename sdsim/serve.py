"""`sdsim serve`: the simulated engine behind an OpenAI-compatible streaming HTTP API.

A load generator (GuideLLM, ``vllm bench serve``, your own client) pointed at this server sees the
scenario's continuous batching, queueing and speculative decoding in its latencies: a digital
twin of the server the scenario describes.

How a request flows
-------------------
* It **arrives** at the simulated moment that corresponds to the wall-clock moment its HTTP request
  was parsed: simulated time ``s`` and wall time ``t`` are tied by ``t = t0 + s * time_scale``
  (``time_scale`` wall seconds per simulated second; 1 = real time, 2 = twice slower).
* It joins the **same engine** ``sdsim.simulate`` uses (:class:`sdsim.engine.Engine`: batch
  formation, step costs, acceptance draws), driven by an asyncio task that executes each simulated
  event when the wall clock reaches its time; no second engine.
* Its tokens are **streamed at the simulated step boundaries**: each engine step that emits tokens
  for the request (its prefill step emits the first token, each decode step accepted + 1 tokens)
  produces one server-sent-event chunk carrying that many tokens.
* **Prompt length** comes from the request: token-id lists count exactly; text is counted with a
  heuristic, ``max(words, ceil(characters / 4))`` (whitespace-separated words; ~4 characters per
  token in English), over all message contents for chat requests. **Output length** is
  ``max_tokens`` (or ``max_completion_tokens``), the server's default when absent; generation
  never stops early (``finish_reason: "length"``), as with ``ignore_eos``.
* The generated text is filler words, one per token.

Acceptance draws use the same counter-based stream as the simulator (request *i* = the *i*-th
request received), so a replay of the same arrivals through ``sdsim.simulate`` gives the same
latencies up to arrival-time jitter: what the end-to-end test checks.

A client that disconnects (streaming or not) has its request aborted: at the next step boundary it
leaves the batch or the queue and its KV blocks are freed, as vLLM aborts such requests
(``/sdsim/requests`` marks it ``aborted`` and lists the requests running and waiting). A request is
refused with 503 when ``limits.max_waiting`` requests already wait.
"""

from __future__ import annotations

__all__ = ["LiveEngine", "count_tokens", "create_app"]

import asyncio
import contextlib
import json
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import simpy

from sdsim.costs.build import build_cost_model
from sdsim.engine.scheduler import Batch
from sdsim.engine.server import Engine
from sdsim.engine.state import RequestTable
from sdsim.memory import kv_capacity
from sdsim.rng import stream, stream_key
from sdsim.scenario import BetaAlpha, Scenario

_WORDS = (
    " the", " model", " of", " a", " server", " token", " and", " batch", " to", " step",
    " in", " queue", " is", " draft", " for", " speculative",
)

# Largest output or prompt a request may ask for; beyond it a request is a mistake, not a load.
MAX_REQUEST_TOKENS = 1_000_000


def count_tokens(text: str) -> int:
    """Approximate token count of a text: ``max(words, ceil(chars / 4), 1)``."""
    return max(len(text.split()), math.ceil(len(text) / 4), 1)


class RequestError(ValueError):
    """A malformed API request (HTTP 400)."""

    def __init__(self, param: str, message: str) -> None:
        self.param = param
        super().__init__(message)


# --------------------------------------------------------------------------- live engine


class LiveEngine:
    """The simulated engine, advanced in step with the wall clock by an asyncio task.

    Parameters
    ----------
    scn
        Scenario (server, speculation, acceptance, costs; its workload is not used).
    seed
        Seed of the acceptance and per-request-alpha streams; default the scenario's.
    time_scale
        Wall seconds per simulated second.
    capacity
        Initial request-table size (it doubles when full).
    """

    def __init__(
        self, scn: Scenario, seed: int | None = None, time_scale: float = 1.0, capacity: int = 1024
    ) -> None:
        if not (time_scale > 0 and math.isfinite(time_scale)):
            raise ValueError("time_scale must be a positive number")
        self.scn = scn
        self.seed = scn.seed if seed is None else int(seed)
        self.scale = float(time_scale)
        self.env = simpy.Environment()
        self.key = stream_key(self.seed, "acceptance")
        per_request = not isinstance(scn.acceptance.alpha, list)
        self.table = RequestTable.empty(max(16, capacity), has_alpha=per_request)
        self.engine = Engine(
            self.env, scn, self.table, build_cost_model(scn), on_step=self._on_step
        )
        self.env.process(self.engine.loop())
        self._alpha_rng = stream(self.seed, "alpha")
        self._queues: dict[int, asyncio.Queue[tuple[int, bool, float]]] = {}
        self._sent: dict[int, int] = {}
        self._t0: float | None = None
        self._kick: asyncio.Event | None = None

    @property
    def n(self) -> int:
        """Requests received."""
        return self.table.size

    def _alpha_for_next(self) -> float:
        a = self.scn.acceptance.alpha
        if isinstance(a, BetaAlpha):
            return float(self._alpha_rng.beta(a.a, a.b))
        return float(a) if not isinstance(a, list) else math.nan

    # ------------------------------------------------------------------ clock
    def start(self) -> None:
        """Tie simulated time 0 to now (call inside the running event loop)."""
        self._t0 = asyncio.get_running_loop().time()
        self._kick = asyncio.Event()

    def sim_now(self) -> float:
        """The simulated time that corresponds to the wall clock now."""
        assert self._t0 is not None, "LiveEngine.start() not called"
        return (asyncio.get_running_loop().time() - self._t0) / self.scale

    def _advance(self, t: float) -> None:
        """Execute every simulated event due at or before ``t`` and move the clock to ``t``."""
        env = self.env
        if env.now < t:
            # a marker event at t, so the clock reaches t even when nothing else is due
            # (not env.run(until=t): SimPy 4.1 leaves a spent stop event behind at t)
            env.timeout(t - env.now)
        while env.peek() <= t:
            env.step()

    async def drive(self) -> None:
        """Run forever: execute each simulated event when the wall clock reaches its time."""
        assert self._t0 is not None and self._kick is not None, "LiveEngine.start() not called"
        loop = asyncio.get_running_loop()
        kick = self._kick
        while True:
            nxt = self.env.peek()
            if math.isinf(nxt):
                kick.clear()
                await kick.wait()
                continue
            delay = self._t0 + nxt * self.scale - loop.time()
            if delay > 0:
                kick.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(kick.wait(), timeout=delay)
                    continue  # a request arrived: the next event may be sooner
            self._advance(max(self.sim_now(), nxt))

    # ------------------------------------------------------------------ requests
    @property
    def waiting(self) -> int:
        """Requests waiting for admission."""
        return len(self.engine.waiting)

    def submit(
        self, prompt_tokens: int, output_tokens: int
    ) -> tuple[int, asyncio.Queue[tuple[int, bool, float]]]:
        """A request arrives now.

        Returns
        -------
        rid, queue
            Request id and the queue that receives ``(new_tokens, finished, sim_time)`` after
            every engine step that emits tokens for it.
        """
        assert self._kick is not None, "LiveEngine.start() not called"
        self._advance(self.sim_now())
        alpha = self._alpha_for_next() if self.table.alpha is not None else None
        rid = self.table.append(
            float(self.env.now), prompt_tokens, output_tokens, alpha, self.key
        )
        q: asyncio.Queue[tuple[int, bool, float]] = asyncio.Queue()
        self._queues[rid] = q
        self._sent[rid] = 0
        self.engine.enqueue(rid)
        self._kick.set()
        return rid, q

    def abort(self, rid: int) -> bool:
        """The client of request ``rid`` has gone: abort the request (it leaves the engine at the
        next step boundary) and stop sending it tokens. Returns whether it was still in flight."""
        self._queues.pop(rid, None)
        self._sent.pop(rid, None)
        if self._t0 is not None:
            self._advance(self.sim_now())
        done = self.engine.abort(rid)
        if done and self._kick is not None:
            self._kick.set()
        return done

    def _on_step(self, engine: Engine, batch: Batch) -> None:
        t = self.table
        ids = np.concatenate([batch.decode_ids, batch.prefill_ids])
        now = float(self.env.now)
        for rid in ids.tolist():
            q = self._queues.get(rid)
            if q is None:
                continue
            gen = int(t.generated[rid])
            new = gen - self._sent[rid]
            done = bool(np.isfinite(t.finish[rid]))
            if new > 0 or done:
                self._sent[rid] = gen
                q.put_nowait((new, done, now))
            if done:
                del self._queues[rid]
                del self._sent[rid]
        if engine.records.size > 100_000:
            engine.records.clear()  # step records are not kept by the server; bound memory

    def records_json(self) -> dict[str, Any]:
        """Per-request simulated times so far (for checks: latency as the simulation sees it),
        which were aborted, and the requests in the engine now (running, waiting)."""
        t = self.table
        n = self.n
        recs = t.records(np.arange(n, dtype=np.int64))

        def col(a: np.ndarray) -> list[Any]:
            return [None if not np.isfinite(v) else float(v) for v in a]

        return {
            "time_scale": self.scale,
            "t0_monotonic": self._t0,
            "arrival": col(recs["arrival"]),
            "first_token": col(recs["first_token"]),
            "finish": col(recs["finish"]),
            "prompt_tokens": recs["prompt_tokens"].astype(int).tolist(),
            "output_tokens": recs["output_tokens"].astype(int).tolist(),
            "aborted": recs["aborted"].tolist(),
            "running": self.engine.run_ids.tolist(),
            "waiting": list(self.engine.waiting),
            "kv_blocks_used": self.engine.kv.used,
        }


# --------------------------------------------------------------------------- HTTP


def _prompt_len_completions(body: dict[str, Any]) -> int:
    p = body.get("prompt")
    if isinstance(p, str):
        return count_tokens(p)
    if isinstance(p, list) and p:
        if all(isinstance(x, int) and not isinstance(x, bool) for x in p):
            return len(p)
        if len(p) == 1:
            x = p[0]
            if isinstance(x, str):
                return count_tokens(x)
            if isinstance(x, list) and all(isinstance(v, int) for v in x) and x:
                return len(x)
        raise RequestError("prompt", "batched prompts are not supported; send one prompt")
    raise RequestError("prompt", "must be a non-empty string or a list of token ids")


def _prompt_len_chat(body: dict[str, Any]) -> int:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise RequestError("messages", "must be a non-empty list of messages")
    total = 0
    for m in msgs:
        if not isinstance(m, dict):
            raise RequestError("messages", "each message must be an object")
        c = m.get("content")
        if isinstance(c, str):
            total += count_tokens(c)
        elif isinstance(c, list):
            for part in c:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    total += count_tokens(part["text"])
    return max(total, 1)


def _int_field(body: dict[str, Any], names: tuple[str, ...], default: int) -> int:
    for name in names:
        v = body.get(name)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int):
            raise RequestError(name, "must be an integer")
        if not 1 <= v <= MAX_REQUEST_TOKENS:
            raise RequestError(name, f"must be between 1 and {MAX_REQUEST_TOKENS}")
        return v
    return default


async def _disconnected(receive: Any) -> None:
    """Return when the HTTP client disconnects (the request body has been read)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class _Client:
    """A request's messages from the engine, while its HTTP client is connected.

    :meth:`next` gives the next ``(new_tokens, finished, sim_time)``, or ``None`` once the client
    has disconnected; :meth:`close` (always called) aborts the request in the engine unless it
    finished.
    """

    def __init__(
        self, live: LiveEngine, rid: int, q: asyncio.Queue[tuple[int, bool, float]], receive: Any
    ) -> None:
        self.live = live
        self.rid = rid
        self.q = q
        self.finished = False
        self.gone = asyncio.ensure_future(_disconnected(receive))

    async def next(self) -> tuple[int, bool, float] | None:
        get = asyncio.ensure_future(self.q.get())
        try:
            done, _ = await asyncio.wait({get, self.gone}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the response was cancelled (the client went away)
            get.cancel()
            raise
        if get not in done:
            get.cancel()
            return None
        msg = get.result()
        self.finished = msg[1]
        return msg

    def close(self) -> None:
        self.gone.cancel()
        if not self.finished:
            self.live.abort(self.rid)


def _text(start: int, n: int) -> str:
    return "".join(_WORDS[(start + i) % len(_WORDS)] for i in range(n))


def create_app(
    scn: Scenario,
    seed: int | None = None,
    time_scale: float = 1.0,
    model: str | None = None,
    default_max_tokens: int = 256,
) -> Any:
    """The ASGI application (Starlette) serving a scenario.

    Parameters
    ----------
    scn
        The scenario whose engine serves the requests.
    seed
        Acceptance seed (default the scenario's).
    time_scale
        Wall seconds per simulated second.
    model
        Model name listed by ``/v1/models`` and echoed in responses (default ``scn.target``).
        Requests naming another model are served anyway.
    default_max_tokens
        Output length of requests that give no ``max_tokens``.

    Routes: ``GET /health``, ``GET /v1/models``, ``POST /v1/completions``,
    ``POST /v1/chat/completions`` (``stream: true`` for server-sent events; ``stream_options``
    ``include_usage`` and ``continuous_usage_stats`` honoured), ``GET /sdsim/requests``
    (simulated per-request times, for checks).
    """
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    live = LiveEngine(scn, seed=seed, time_scale=time_scale)
    model_name = model or scn.target
    max_waiting = scn.limits.max_waiting
    # a request the KV cache cannot hold would never finish: refuse it as vLLM does
    # (prompt + output - 1 cached tokens plus the k look-ahead slots)
    kv_tokens = kv_capacity(scn).tokens
    k_top = scn.spec.k if scn.spec.policy == "fixed" else max(scn.spec.k, scn.spec.k_max)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        live.start()
        task = asyncio.create_task(live.drive())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def error(status: int, message: str, param: str | None = None) -> JSONResponse:
        kind = "invalid_request_error" if status == 400 else "server_error"
        return JSONResponse(
            {"error": {"message": message, "type": kind, "param": param, "code": status}},
            status_code=status,
        )

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def models(request: Request) -> Response:
        return JSONResponse(
            {
                "object": "list",
                "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "sdsim"}],
            }
        )

    async def requests_view(request: Request) -> Response:
        return JSONResponse(live.records_json())

    async def generate(request: Request, chat: bool) -> Response:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return error(400, "request body must be JSON")
        if not isinstance(body, dict):
            return error(400, "request body must be a JSON object")
        try:
            prompt = _prompt_len_chat(body) if chat else _prompt_len_completions(body)
            if prompt > MAX_REQUEST_TOKENS:
                raise RequestError("prompt", f"longer than {MAX_REQUEST_TOKENS} tokens")
            names = ("max_completion_tokens", "max_tokens") if chat else ("max_tokens",)
            out = _int_field(body, names, default_max_tokens)
            if kv_tokens is not None and prompt + out - 1 + k_top > kv_tokens:
                raise RequestError(
                    names[-1],
                    f"prompt ({prompt}) + max tokens ({out}) exceed the KV cache of "
                    f"{kv_tokens} tokens (with {k_top} look-ahead slots)",
                )
        except RequestError as exc:
            return error(400, f"{exc.param}: {exc}", exc.param)
        if live.waiting >= max_waiting:
            return error(503, f"server overloaded: {live.waiting} requests waiting")
        stream_opts = body.get("stream_options") or {}
        include_usage = bool(isinstance(stream_opts, dict) and stream_opts.get("include_usage"))
        continuous = bool(
            isinstance(stream_opts, dict) and stream_opts.get("continuous_usage_stats")
        )
        rid, q = live.submit(prompt, out)
        created = int(time.time())
        rid_s = f"{'chatcmpl' if chat else 'cmpl'}-sdsim-{rid}"
        obj = "chat.completion" if chat else "text_completion"

        def usage(done: int) -> dict[str, int]:
            return {
                "prompt_tokens": prompt,
                "completion_tokens": done,
                "total_tokens": prompt + done,
            }

        client = _Client(live, rid, q, request.receive)
        if not body.get("stream"):
            done = 0
            try:
                while True:
                    got = await client.next()
                    if got is None:
                        return Response(status_code=499)  # the client has gone
                    new, finished, _ = got
                    done += new
                    if finished:
                        break
            finally:
                client.close()
            text = _text(0, done)
            choice: dict[str, Any] = (
                {"index": 0, "message": {"role": "assistant", "content": text}}
                if chat
                else {"index": 0, "text": text, "logprobs": None}
            )
            choice["finish_reason"] = "length"
            return JSONResponse(
                {
                    "id": rid_s,
                    "object": obj,
                    "created": created,
                    "model": model_name,
                    "choices": [choice],
                    "usage": usage(done),
                }
            )

        chunk_obj = "chat.completion.chunk" if chat else "text_completion"

        async def events() -> AsyncIterator[str]:
            try:
                async for chunk in _chunks():
                    yield chunk
            finally:
                client.close()

        async def _chunks() -> AsyncIterator[str]:
            done = 0
            while True:
                got = await client.next()
                if got is None:
                    return  # the client has gone
                new, finished, _ = got
                if new == 0 and not finished:
                    continue
                text = _text(done, new)
                done += new
                if chat:
                    delta: dict[str, Any] = {"content": text}
                    if done == new:
                        delta = {"role": "assistant", "content": text}
                    ch: dict[str, Any] = {"index": 0, "delta": delta}
                else:
                    ch = {"index": 0, "text": text, "logprobs": None}
                ch["finish_reason"] = "length" if finished else None
                msg: dict[str, Any] = {
                    "id": rid_s,
                    "object": chunk_obj,
                    "created": created,
                    "model": model_name,
                    "choices": [ch],
                }
                if continuous:
                    msg["usage"] = usage(done)
                yield f"data: {json.dumps(msg)}\n\n"
                if finished:
                    break
            if include_usage:
                msg = {
                    "id": rid_s,
                    "object": chunk_obj,
                    "created": created,
                    "model": model_name,
                    "choices": [],
                    "usage": usage(done),
                }
                yield f"data: {json.dumps(msg)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def completions(request: Request) -> Response:
        return await generate(request, chat=False)

    async def chat_completions(request: Request) -> Response:
        return await generate(request, chat=True)

    app = Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/sdsim/requests", requests_view, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.live = live
    return app
