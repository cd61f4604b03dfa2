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
  local ``tokenizer.json`` when one is given (``--tokenizer``), else with the heuristic
  ``max(words, ceil(characters / 4))``, over all message contents for chat requests.
  **Output length** is ``max_tokens`` (or ``max_completion_tokens``), the server's default when
  absent; generation never stops early (``finish_reason: "length"``), as with ``ignore_eos``.
  Requests are validated as :mod:`sdsim.api_requests` says (400 naming the field: types, body
  size and nesting, the model's context, ``n > 1``), and refused when the KV cache could not
  hold them.
* The generated text is filler words, one per token.

Acceptance draws use the same counter-based stream as the simulator (request *i* = the *i*-th
request received), so a replay of the same arrivals through ``sdsim.simulate`` gives the same
latencies up to arrival-time jitter: what the end-to-end test checks.

A client that disconnects (streaming or not) has its request aborted: at the next step boundary it
leaves the batch or the queue and its KV blocks are freed, as vLLM aborts such requests
(``/sdsim/requests`` marks it ``aborted`` and lists the requests running and waiting). A request is
refused with 503 when ``limits.max_waiting`` requests already wait.

Memory is bounded however long the server runs: requests that have left the engine are collected
from its request table (reusable slots) into a :class:`~sdsim.serve_history.ServeHistory`, which
keeps running summaries of every request (``/sdsim/summary``) and the records of the last
``history`` requests to leave (``/sdsim/requests``, with those still in the engine).
"""

from __future__ import annotations

__all__ = ["LiveEngine", "bind", "create_app", "run_server"]

import asyncio
import contextlib
import errno
import json
import math
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import simpy

from sdsim.api_requests import (
    MAX_BODY_BYTES,
    RequestError,
    TokenCounter,
    parse_request,
)
from sdsim.costs.build import build_cost_model
from sdsim.engine.scheduler import Batch
from sdsim.engine.server import Engine
from sdsim.engine.state import RequestTable
from sdsim.errors import ScenarioError
from sdsim.memory import kv_capacity
from sdsim.models import resolve_model
from sdsim.rng import counter_base, stream, stream_key
from sdsim.scenario import BetaAlpha, Scenario
from sdsim.serve_history import DEFAULT_WINDOW, ServeHistory

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# What a request's queue receives after an engine step: (new tokens, finished, simulated time),
# or None when the server aborts the request (shutdown past the drain deadline).
Message = tuple[int, bool, float] | None
SHUTDOWN = "the server is shutting down: request aborted at the drain deadline"
BODY = "request body"  # what an error about the body as a whole names
_WORDS = (
    " the", " model", " of", " a", " server", " token", " and", " batch", " to", " step",
    " in", " queue", " is", " draft", " for", " speculative",
)

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
        Initial request-table slots (reused once their requests have left; the table doubles
        when the requests in the engine fill it).
    history
        Records of requests that have left kept for :meth:`records_json` (the last to leave).

    Attributes
    ----------
    history
        The :class:`~sdsim.serve_history.ServeHistory` of requests that have left the engine.
    """

    def __init__(
        self,
        scn: Scenario,
        seed: int | None = None,
        time_scale: float = 1.0,
        capacity: int = 1024,
        history: int = DEFAULT_WINDOW,
    ) -> None:
        if not (time_scale > 0 and math.isfinite(time_scale)):
            raise ValueError("time_scale must be a positive number")
        self.scn = scn
        self.seed = scn.seed if seed is None else int(seed)
        self.scale = float(time_scale)
        self.env = simpy.Environment()
        self.key = stream_key(self.seed, "acceptance")
        per_request = not isinstance(scn.acceptance.alpha, list)
        self.table = RequestTable.empty(capacity, has_alpha=per_request)
        self.history = ServeHistory(history)
        self._received = 0
        self._slot: dict[int, int] = {}  # request id -> table slot, while in the table
        self._watched: dict[int, bool | None] = {}  # see watch()
        self.engine = Engine(
            self.env, scn, self.table, build_cost_model(scn), on_step=self._on_step
        )
        self.env.process(self.engine.loop())
        self._alpha_rng = stream(self.seed, "alpha")
        self._queues: dict[int, asyncio.Queue[Message]] = {}
        self._sent: dict[int, int] = {}
        self._t0: float | None = None
        self._kick: asyncio.Event | None = None
        self.loop: asyncio.AbstractEventLoop | None = None  # the serving loop, once started

    @property
    def n(self) -> int:
        """Requests received."""
        return self._received

    def _alpha_for_next(self) -> float:
        a = self.scn.acceptance.alpha
        if isinstance(a, BetaAlpha):
            return float(self._alpha_rng.beta(a.a, a.b))
        return float(a) if not isinstance(a, list) else math.nan

    # ------------------------------------------------------------------ clock
    def start(self) -> None:
        """Tie simulated time 0 to now (call inside the running event loop)."""
        self.loop = asyncio.get_running_loop()
        self._t0 = self.loop.time()
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
                # asyncio.timeout, not wait_for: Python 3.11's wait_for loses a cancellation
                # that arrives as the kick is set, and the task would never end
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await kick.wait()
                    continue  # a request arrived: the next event may be sooner
            self._advance(max(self.sim_now(), nxt))

    # ------------------------------------------------------------------ requests
    @property
    def in_flight(self) -> list[int]:
        """Requests whose client is still waiting for tokens."""
        return list(self._queues)

    @property
    def waiting(self) -> int:
        """Requests waiting for admission."""
        return len(self.engine.waiting)

    def submit(
        self, prompt_tokens: int, output_tokens: int
    ) -> tuple[int, asyncio.Queue[Message]]:
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
        rid = self._received
        self._received += 1
        # request i's acceptance draws are keyed by i, as in a simulation of the same arrivals
        base = np.uint64(counter_base(self.key, np.int64(rid)))
        slot = self.table.fill(
            rid, float(self.env.now), prompt_tokens, output_tokens, alpha, base, self._collected
        )
        self._slot[rid] = slot
        q: asyncio.Queue[Message] = asyncio.Queue()
        self._queues[rid] = q
        self._sent[rid] = 0
        self.engine.enqueue(slot)
        self._kick.set()
        return rid, q

    def _collected(self, r: dict[str, np.ndarray]) -> None:
        """Requests that left the engine, collected from the table (their slots are reused)."""
        watched = self._watched
        for rid, aborted in zip(r["rid"].tolist(), r["aborted"].tolist(), strict=True):
            del self._slot[rid]
            if rid in watched:
                watched[rid] = not aborted
        self.history.add(r)

    def collect(self) -> None:
        """Move every request that has left the engine from the table to :attr:`history`."""
        self.table.harvest(self._collected)

    def watch(self, rids: list[int]) -> None:
        """Remember whether requests ``rids`` finish (``True``) or are aborted (``False``) once
        they leave, for :meth:`finished_of`."""
        self._watched.update(dict.fromkeys(rids))

    def finished_of(self, rids: list[int]) -> int:
        """How many of the watched requests ``rids`` have finished (not aborted)."""
        self.collect()
        return sum(1 for rid in rids if self._watched.get(rid))

    def abort(self, rid: int) -> bool:
        """The client of request ``rid`` has gone: abort the request (it leaves the engine at the
        next step boundary) and stop sending it tokens. Returns whether it was still in flight."""
        self._queues.pop(rid, None)
        self._sent.pop(rid, None)
        if self._t0 is not None:
            self._advance(self.sim_now())
        slot = self._slot.get(rid)  # none once it has left and been collected
        done = slot is not None and self.engine.abort(slot)
        if done and self._kick is not None:
            self._kick.set()
        return done

    def abort_all(self) -> int:
        """Abort every request in flight (the drain deadline has passed): each is told so through
        its queue (``None``) and leaves the engine at the next step boundary. Returns how many."""
        rids = self.in_flight
        for rid in rids:
            q = self._queues.get(rid)
            if q is not None:
                q.put_nowait(None)
            self.abort(rid)
        return len(rids)

    def _on_step(self, engine: Engine, batch: Batch) -> None:
        t = self.table
        slots = np.concatenate([batch.decode_ids, batch.prefill_ids])
        now = float(self.env.now)
        for slot, rid in zip(slots.tolist(), t.rid[slots].tolist(), strict=True):
            q = self._queues.get(rid)
            if q is None:
                continue
            gen = int(t.generated[slot])
            new = gen - self._sent[rid]
            done = bool(np.isfinite(t.finish[slot]))
            if new > 0 or done:
                self._sent[rid] = gen
                q.put_nowait((new, done, now))
            if done:
                del self._queues[rid]
                del self._sent[rid]
        if engine.records.size > 100_000:
            engine.records.clear()  # step records are not kept by the server; bound memory

    def records(self) -> dict[str, np.ndarray]:
        """The records of the requests in the engine and of the last ``history`` to leave it,
        as columns in request-id order (:meth:`ServeHistory.records`)."""
        self.collect()
        t = self.table
        assert t.occupied is not None
        return self.history.records(t.records(np.flatnonzero(t.occupied)))

    def records_json(self) -> dict[str, Any]:
        """Per-request simulated times (for checks: latency as the simulation sees it) of the
        requests in the engine and the last ``history`` to leave it (``rid``: their request
        ids; every request while fewer have been received), which were aborted, and the
        requests in the engine now (running, waiting)."""
        recs = self.records()
        t = self.table

        def col(a: np.ndarray) -> list[Any]:
            return [None if not np.isfinite(v) else float(v) for v in a]

        return {
            "time_scale": self.scale,
            "t0_monotonic": self._t0,
            "received": self.n,
            "rid": recs["rid"].tolist(),
            "arrival": col(recs["arrival"]),
            "first_token": col(recs["first_token"]),
            "finish": col(recs["finish"]),
            "prompt_tokens": recs["prompt_tokens"].astype(int).tolist(),
            "output_tokens": recs["output_tokens"].astype(int).tolist(),
            "aborted": recs["aborted"].tolist(),
            "running": t.rid[self.engine.run_ids].tolist(),
            "waiting": t.rid[np.asarray(self.engine.waiting, dtype=np.int64)].tolist(),
            "kv_blocks_used": self.engine.kv.used,
        }

    def summary_json(self) -> dict[str, Any]:
        """Counts and latency statistics of every request since the server started
        (:meth:`ServeHistory.summary`; exact counts, sums and means, quantiles within 0.5%),
        with the requests received and in the engine now and the simulated time."""
        self.collect()
        out: dict[str, Any] = {
            "received": self.n,
            "running": int(self.engine.run_ids.shape[0]),
            "waiting": self.waiting,
            "sim_time_s": float(self.env.now),
        }
        out.update(self.history.summary())
        out["seed"] = self.seed
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in out.items()}


# --------------------------------------------------------------------------- HTTP


async def _read_body(request: Any, limit: int) -> bytes:
    """The request body, refused (:class:`RequestError`) once it is longer than ``limit`` bytes:
    a declared length is checked before reading, a chunked body as it arrives."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise RequestError(BODY, f"larger than {limit:,} bytes ({int(declared):,})")
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
        if len(buf) > limit:
            raise RequestError(BODY, f"larger than {limit:,} bytes")
    return bytes(buf)


async def _disconnected(receive: Any) -> None:
    """Return when the HTTP client disconnects (the request body has been read)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class _Client:
    """A request's messages from the engine, while its HTTP client is connected.

    :meth:`next` gives the next ``(new_tokens, finished, sim_time)``, or ``None`` once the client
    has disconnected or the server has aborted the request (``stopped``); :meth:`close` (always
    called) aborts the request in the engine unless it finished.
    """

    def __init__(
        self, live: LiveEngine, rid: int, q: asyncio.Queue[Message], receive: Any
    ) -> None:
        self.live = live
        self.rid = rid
        self.q = q
        self.finished = False
        self.stopped = False  # aborted by the server (shutdown), not by the client
        self.gone = asyncio.ensure_future(_disconnected(receive))
        # abort as soon as the disconnect is seen, whatever the response is doing then (a
        # streaming response cancelled between chunks unwinds only when collected)
        self.gone.add_done_callback(self._on_gone)

    def _on_gone(self, fut: asyncio.Future[None]) -> None:
        if not fut.cancelled() and not self.finished:
            self.live.abort(self.rid)

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
        if msg is None:
            self.stopped = True
            return None
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
    counter: TokenCounter | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    history: int = DEFAULT_WINDOW,
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
        Output length of requests that give no ``max_tokens`` (cut to the context left).
    counter
        Counts prompt text in tokens (default: :func:`sdsim.api_requests.count_tokens`).
    max_body_bytes
        Largest request body; a larger one is answered with 400.
    history
        Records of requests that have left the engine kept for ``/sdsim/requests`` (the last
        to leave; the summaries cover every request either way).

    Routes: ``GET /health``, ``GET /v1/models``, ``POST /v1/completions``,
    ``POST /v1/chat/completions`` (``stream: true`` for server-sent events; ``stream_options``
    ``include_usage`` and ``continuous_usage_stats`` honoured), ``GET /sdsim/requests``
    (simulated per-request times of the requests in the engine and the last ``history`` to
    leave it, for checks), ``GET /sdsim/summary`` (counts and latency statistics of every
    request since start).
    """
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    live = LiveEngine(scn, seed=seed, time_scale=time_scale, history=history)
    model_name = model or scn.target
    counter = counter or TokenCounter()
    max_context = resolve_model(scn.target, "target").max_context
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
            live.abort_all()  # none after a drain; any the server's own deadline cancelled
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

    async def summary_view(request: Request) -> Response:
        return JSONResponse(live.summary_json())

    async def generate(request: Request, chat: bool) -> Response:
        try:
            body = await _read_body(request, max_body_bytes)
            req = parse_request(body, chat, counter, max_context, default_max_tokens)
            prompt, out = req.prompt_tokens, req.max_tokens
            if kv_tokens is not None and prompt + out - 1 + k_top > kv_tokens:
                raise RequestError(
                    req.output_field,
                    f"prompt ({prompt}) + max tokens ({out}) exceed the KV cache of "
                    f"{kv_tokens} tokens (with {k_top} look-ahead slots)",
                )
        except RequestError as exc:
            return error(400, str(exc), None if exc.field == BODY else exc.field)
        if live.waiting >= max_waiting:
            return error(503, f"server overloaded: {live.waiting} requests waiting")
        include_usage, continuous = req.include_usage, req.continuous_usage
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
        if not req.stream:
            done = 0
            try:
                while True:
                    got = await client.next()
                    if got is None and client.stopped:
                        return error(503, SHUTDOWN)
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
                if got is None and client.stopped:
                    # as vLLM reports an error mid-stream: an error event, no [DONE]
                    err = {"message": SHUTDOWN, "type": "server_error", "param": None, "code": 503}
                    yield f"data: {json.dumps({'error': err})}\n\n"
                    return
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
            Route("/sdsim/summary", summary_view, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.live = live
    return app


# --------------------------------------------------------------------------- process


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free one), bound before the server
    starts so that a taken port is one line, not a server that fails after starting.

    Raises
    ------
    ScenarioError
        ``--port`` in use or not permitted; ``--host`` unknown or not an address of this machine.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise ScenarioError("--host", f"cannot resolve {host!r} ({exc})") from None
    family, _, _, _, addr = infos[0]
    try:
        return socket.create_server(addr, family=family, backlog=2048)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ScenarioError(
                "--port", f"port {port} on {host} is in use; choose another (0 picks a free one)"
            ) from None
        if exc.errno == errno.EACCES:
            raise ScenarioError(
                "--port", f"no permission to bind port {port} on {host} (below 1024 needs root)"
            ) from None
        raise ScenarioError("--host", f"cannot bind {host}:{port} ({exc.strerror})") from None


def run_server(
    app: Any, sock: socket.socket, drain_timeout: float, say: Callable[[str], None]
) -> None:
    """Serve ``app`` on ``sock`` until SIGINT or SIGTERM, then drain and return.

    On the signal the server stops accepting connections and lets in-flight requests finish for
    up to ``drain_timeout`` seconds; requests still running then are cancelled, which aborts them
    in the engine. ``say`` receives one line when the signal arrives and one when the server has
    stopped (requests finished while draining, requests aborted). A second SIGINT stops at once.
    """
    import uvicorn  # deferred: the HTTP server is only needed here

    live: LiveEngine = app.state.live
    draining: list[int] = []

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            if not self.should_exit:
                draining.extend(live.in_flight)
                live.watch(draining)
                say(
                    f"sdsim serve: {signal.Signals(sig).name}: draining {len(draining)} "
                    f"request(s) in flight for up to {drain_timeout:g} s"
                )
                # the deadline: abort what is still running, so that every response ends and
                # uvicorn's wait for open connections ends with them (call_soon_threadsafe is
                # the loop's way in from a signal handler)
                loop = live.loop
                if loop is not None:
                    loop.call_soon_threadsafe(loop.call_later, drain_timeout, live.abort_all)
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app,
        log_level="warning",
        lifespan="on",
        # a backstop only: uvicorn cancels handlers still running this long after the signal
        timeout_graceful_shutdown=int(drain_timeout) + 5,
    )
    server = Server(config)
    # uvicorn re-raises the signal it stopped on once it has shut down: handled here, it ends
    # the command normally (exit 0) instead of killing the process or raising KeyboardInterrupt
    previous = {sig: signal.signal(sig, lambda s, f: None) for sig in _STOP_SIGNALS}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
    finished = live.finished_of(draining)
    say(
        f"sdsim serve: stopped: {finished} request(s) finished while draining, "
        f"{len(draining) - finished} aborted"
    )
