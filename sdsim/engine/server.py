"""The serving engine as SimPy processes: arrivals, a router, and one engine process per replica.

Each replica's process (:meth:`Engine.loop`) drives the step defined once in
:mod:`sdsim.engine.step`: it asks :func:`~sdsim.engine.step.advance` to take the step in hand as
far as it can, prices batches with the :class:`~sdsim.costs.step.StepCostModel` when asked, and
waits on the SimPy clock only where something outside the engine may happen (the next arrival,
the deadline) or where a hook or the draft-length policy must see each step.

Requests reach a replica ``server.api_delay_s`` after they arrive (API server, tokenisation), routed
by :class:`~sdsim.engine.router.Router`. A run stops when every request finished, or early when
more than ``limits.max_waiting`` requests wait (all replicas together) or the clock passes
``limits.max_sim_time_s``.
"""

from __future__ import annotations

__all__ = [
    "Engine",
    "StepHook",
    "Tracker",
    "check_kv_fits",
    "run_simulation",
    "until",
]

import math
from collections.abc import Callable, Generator
from typing import Any

import numpy as np
import numpy.typing as npt
import simpy

from sdsim.acceptance import AcceptanceSampler, position_probs
from sdsim.costs.step import StepCostModel, StepShape
from sdsim.engine import step as steps
from sdsim.engine.draft_length import AdaptiveDraftLength
from sdsim.engine.kvcache import UNLIMITED_BLOCKS, KVCache
from sdsim.engine.prices import DecodePrices
from sdsim.engine.router import Router, affinity_keys
from sdsim.engine.scheduler import Batch
from sdsim.engine.schema import (
    ABORT_REQUESTED,
    DECODE,
    ENGINE,
    ENTRY,
    PREFILL_FIRST,
    STEP_FIELDS,
    VLLM_V1,
)
from sdsim.engine.sessions import SessionArrivals
from sdsim.engine.state import IdQueue, RequestTable, Sink, StepLog
from sdsim.engine.tape import AcceptanceTape
from sdsim.memory import check_request_fits, kv_capacity, num_gpu_blocks
from sdsim.records import SimRun
from sdsim.rng import counter_base, stream_key
from sdsim.scenario import Scenario
from sdsim.workload import Workload

StepHook = Callable[["Engine", Batch], None]

# Request ids whose acceptance tapes are written ahead per bulk call (one engine, batch run).
TAPE_PREFETCH = 2048

# Engine counts are int64: configured limits beyond this are unlimited in effect.
_INT_CAP = 1 << 62

_NO_PRICE = (0.0, 0.0, 0.0, 0.0, 0.0)
_NO_PREFIX = (-1, 0, -1, 0, 0)  # no shared prefix, no conversation


class Tracker:
    """State shared by the replicas: completions (fires ``done`` when all finished), arrivals
    and the number waiting across replicas (the run stops early when it exceeds
    ``limits.max_waiting``: :meth:`arrive`, :meth:`stop`), progress reports, and the times of
    the next events from outside the engines (the next arrival, the deadline), which bound how
    far an engine may run ahead of the clock."""

    def __init__(
        self,
        env: simpy.Environment,
        total: int,
        progress: Callable[[int, int], None] | None,
        max_waiting: int = _INT_CAP,
    ) -> None:
        self.done = env.event()
        self.total = total
        self.completed = 0
        self.waiting = 0
        self.max_waiting = max_waiting
        self.stop_reason = "completed"
        self.stopped_early = False
        self.progress = progress
        self.next_arrival = math.inf
        self.deadline = math.inf
        # below the arrival after the next one (by a few ulps: the float SimPy will fire it at
        # is only known when the next one has fired), and whether a step may run ahead across
        # the next arrival (see Engine._hard)
        self.after_next = math.inf
        self.solo = False
        self._next_report = 0
        self._every = max(1, total // 200)

    def finished(self, count: int) -> None:
        self.completed += count
        if self.progress is not None and self.completed >= self._next_report:
            self.progress(self.completed, self.total)
            self._next_report = self.completed + self._every
        if self.completed >= self.total and not self.done.triggered:
            self.done.succeed()

    def stop(self, reason: str) -> None:
        """End the run early, for ``reason`` (the first reason given is kept)."""
        if not self.done.triggered:
            self.stop_reason = reason
            self.stopped_early = True
            self.done.succeed()

    def arrive(self, engine: Engine, slot: int) -> bool:
        """Request ``slot`` joins ``engine``'s waiting queue. Returns ``False``, having stopped
        the run, when more than ``limits.max_waiting`` requests then wait (all replicas)."""
        engine.enqueue(slot)
        if self.waiting > self.max_waiting:
            self.stop(f"waiting queue exceeded limits.max_waiting={self.max_waiting}")
            return False
        return True


def until(env: simpy.Environment, when: float) -> Generator[simpy.Event, Any, None]:
    """Wait on the SimPy clock until exactly ``when`` (a sum of step durations made ahead of the
    clock), through public timeouts only.

    SimPy fires a timeout at ``now + delay``; the delay ``when - now`` (or a neighbouring float)
    lands exactly on ``when`` unless ``when > 2 now`` (below that, ``when - now`` is exact). Then
    the clock first steps to ``2 now`` (exact: ``now + now``), from where ``when`` is nearer; a
    hop does nothing but wait. (SimPy's queue accepts an event at a given time only through its
    private fields; this keeps to the public API at the cost of an event per hop, rare: see
    notes/speed.md.)
    """
    while True:
        now = env.now
        if when <= now:
            return
        d = when - now
        for _ in range(4):
            s = now + d
            if s == when:
                yield env.timeout(d)
                return
            d = math.nextafter(d, math.inf if s < when else -math.inf)
        yield env.timeout(now)


class Engine:
    """One replica: a continuous-batching engine with speculative decoding and a paged KV cache.

    Parameters
    ----------
    env
        The SimPy environment.
    scn
        The scenario (server limits, draft length and policy, acceptance).
    table
        Shared request state (its ``acc_base`` filled).
    cost
        Step-cost model.
    replica
        Index of this replica.
    on_step
        Check hook called after every step with the engine and the step's :class:`Batch` (the
        engine then waits on the SimPy clock at every step).
    tracker
        Shared completion/waiting counters and the times of the next outside events.
    router
        Shared router (its ``outstanding`` counts are kept current here).
    fast_forward
        Run steps ahead of the SimPy clock up to the next outside event (needs ``tracker``; no
        effect with ``on_step``); the records are the same either way.
    step_sink
        Streaming statistics: full step logs are handed to it instead of being kept.
    log_capacity
        Initial step records.

    Attributes
    ----------
    k
        Draft length of the current (or last) step.
    kv
        This replica's :class:`~sdsim.engine.kvcache.KVCache` (counts, conservation check).
    waiting
        The waiting queue.
    records
        This replica's step log.
    adaptive
        The adaptive draft-length policy, or ``None`` for a fixed k.
    """

    def __init__(
        self,
        env: simpy.Environment,
        scn: Scenario,
        table: RequestTable,
        cost: StepCostModel,
        replica: int = 0,
        on_step: StepHook | None = None,
        tracker: Tracker | None = None,
        router: Router | None = None,
        fast_forward: bool = False,
        step_sink: Callable[[dict[str, npt.NDArray[np.generic]]], None] | None = None,
        log_capacity: int = 4096,
    ) -> None:
        self.env = env
        self.scn = scn
        self.t = table
        self.cost = cost
        self.replica = replica
        self.on_step = on_step
        self.tracker = tracker
        self.router = router
        spec = scn.spec
        self.adaptive: AdaptiveDraftLength | None = None
        if spec.policy == "adaptive":
            self.adaptive = AdaptiveDraftLength(
                cost,
                k_max=spec.k_max,
                k_init=spec.k,
                token_budget=scn.server.max_num_batched_tokens,
                halflife_tokens=spec.alpha_halflife_tokens,
            )
        self.k = spec.k if self.adaptive is None else self.adaptive.k
        blocks = num_gpu_blocks(scn)
        self.state = np.zeros(1, dtype=ENGINE)
        e = self.state[0]
        e["replica"] = replica
        e["block_size"] = scn.server.block_size
        e["kv_capacity"] = UNLIMITED_BLOCKS if blocks is None else min(blocks, UNLIMITED_BLOCKS)
        e["max_num_seqs"] = min(scn.server.max_num_seqs, _INT_CAP)
        e["token_budget"] = min(scn.server.max_num_batched_tokens, _INT_CAP)
        e["policy"] = PREFILL_FIRST if scn.server.scheduler == "prefill-first" else VLLM_V1
        e["max_waiting"] = min(scn.limits.max_waiting, _INT_CAP)
        e["k"] = self.k
        seats = min(scn.server.max_num_seqs, 64) + 1
        k_cap = spec.k if self.adaptive is None else self.adaptive.k_max
        self.kv = KVCache(
            self.state,
            table,
            limited=blocks is not None,
            caching=scn.server.prefix_caching,
            rows=seats,
        )
        # vLLM recomputes the last hit block for an EAGLE drafter (it needs its hidden states)
        e["eagle"] = int(scn.drafter.kind in ("eagle", "eagle3") and k_cap > 0)
        self._k_cap = k_cap
        self._width = 0  # tokens a block table row holds (prefix caching)
        if table.size:  # requests known up front: rows as wide as the longest
            self._widen(int((table.prompt[: table.size] + table.output[: table.size]).max()))
        self.run = np.zeros(seats, dtype=np.int64)
        self.batch = np.zeros(seats, dtype=ENTRY)
        self.waiting = IdQueue()
        self.records = StepLog(self.state, log_capacity, flush=step_sink)
        a = scn.acceptance.alpha
        sampler = AcceptanceSampler(position_probs(a, len(a)) if isinstance(a, list) else None)
        self.tape = AcceptanceTape(sampler, k_cap)
        self.fast_forward = bool(fast_forward and tracker is not None and on_step is None)
        # decode-only prices for steps run ahead (fixed k only: adaptive k is chosen in Python)
        self.prices = DecodePrices(cost, self.k)
        self._table = self.fast_forward and self.adaptive is None
        self.outstanding = 0  # requests routed here and not finished (for the router)
        self.completed = 0
        # called when a request with another turn of its conversation finished (sessions)
        self.on_turn: Callable[[Engine], None] | None = None
        self._wake: simpy.Event | None = None
        self.stopped = False

    # ------------------------------------------------------------------ views
    @property
    def run_ids(self) -> npt.NDArray[np.int64]:
        """Running requests in admission order (a copy)."""
        return self.run[: int(self.state[0]["running"])].copy()

    @property
    def kv_in_step(self) -> int:
        """Blocks in use while the last step ran (look-ahead slots included)."""
        return int(self.state[0]["kv_in_step"])

    @property
    def ff_steps(self) -> int:
        """Steps applied ahead of the SimPy clock."""
        return int(self.state[0]["ahead_steps"])

    @property
    def ff_blocks(self) -> int:
        """Calls that applied steps ahead of the SimPy clock."""
        return int(self.state[0]["ahead_calls"])

    def batch_view(self) -> Batch:
        """The step in hand (or just applied) as a :class:`Batch` of copies."""
        e = self.state[0]
        rows = self.batch[: int(e["entries"])]
        dec = rows["kind"] == DECODE
        pf = ~dec
        admitted = int(e["admitted"])
        return Batch(
            decode_ids=rows["rid"][dec],
            prefill_ids=rows["rid"][pf],
            prefill_chunks=rows["tokens"][pf],
            admitted=rows["rid"][rows.shape[0] - admitted :].tolist() if admitted else [],
            preempted=np.asarray(self.waiting, dtype=np.int64)[: int(e["preempted"])],
            decode_context=rows["context"][dec],
            decode_blocks=rows["blocks"][dec],
        )

    # ------------------------------------------------------------------ requests
    def enqueue(self, rid: int) -> None:
        """A request (its slot) joins this engine's waiting queue (waking the engine if idle)."""
        self.waiting.append(rid)
        self.outstanding += 1
        if self.router is not None:
            self.router.outstanding[self.replica] += 1
        if self.tracker is not None:
            self.tracker.waiting += 1
        self.t.replica[rid] = self.replica
        self._widen(int(self.t.prompt[rid] + self.t.output[rid]))
        if self._wake is not None and not self._wake.triggered:
            self._wake.succeed()

    def _widen(self, tokens: int) -> None:
        """Block table rows wide enough for a request of ``tokens`` prompt + output tokens (its
        look-ahead slots included): the step writes a request's blocks there unchecked."""
        most = tokens + self._k_cap
        if self.kv.caching and most > self._width:
            self.kv.widen(most)
            self._width = self.kv.rows.shape[1] * self.kv.block_size

    def abort(self, rid: int) -> bool:
        """Abort request ``rid`` (waiting or running here): at the next step boundary it leaves
        the batch and the queue, its KV blocks are freed, and its record says aborted, with that
        boundary as its finish time. Returns ``False`` (nothing done) when the request is not in
        this engine, finished, or already being aborted."""
        t = self.t
        here = rid in self.run_ids or rid in np.asarray(self.waiting, dtype=np.int64)
        if not here or not math.isnan(t.finish[rid]) or t.aborted[rid] != 0:
            return False
        t.aborted[rid] = ABORT_REQUESTED
        self.state[0]["aborts"] += 1
        return True

    def _live(self) -> npt.NDArray[np.int64]:
        """Requests of this engine that may hold an acceptance tape (running or waiting)."""
        return np.concatenate([self.run_ids, np.asarray(self.waiting, dtype=np.int64)])

    def _finished(self, n: int) -> None:
        """Count ``n`` requests that left (finished or aborted; the table records them)."""
        self.completed += n
        self.outstanding -= n
        if self.router is not None:
            self.router.outstanding[self.replica] -= n
        if self.tracker is not None:
            self.tracker.finished(n)

    # ------------------------------------------------------------------ loop
    def loop(self) -> Generator[simpy.Event, Any, None]:
        """The engine process: steps from :func:`~sdsim.engine.step.advance`, priced here, on
        the SimPy clock where something outside the engine may happen; idle when empty."""
        env = self.env
        cost = self.cost
        t = self.t
        tracker = self.tracker
        prices = self.prices
        tape = self.tape
        advance = steps.advance
        ahead = self.fast_forward
        table = self._table
        between = self.adaptive is not None or self.on_step is not None
        base = (
            (steps.AHEAD if ahead else 0)
            | (steps.ONE_STEP if between else 0)
            | (steps.TABLE if table else 0)
        )
        unpriced, pending, stepped, past = steps.UNPRICED, steps.PENDING, steps.STEPPED, steps.PAST
        flags = base
        price: tuple[float, ...] = _NO_PRICE
        horizon = hard = -math.inf
        while not self.stopped:
            if ahead:
                assert tracker is not None
                horizon = min(tracker.next_arrival, tracker.deadline)
                hard = self._hard(horizon)
            now = float(env.now)
            arrays = (
                t.data,
                self.state,
                self.kv.arrays,
                self.run,
                self.batch,
                self.waiting.buf,
                tape.arena,
                self.records.rec,
                prices.rows,
                prices.spans,
            )  # built per call: Python replaces an array when it grows (make_room, table)
            out = advance(arrays, now, horizon, hard, flags, self.k, price)
            code, clock, total, finished, grew, b, dctx, pft, pfc, npf = out
            if self.state[0]["follow_done"]:
                self.state[0]["follow_done"] = 0
                if self.on_turn is not None:
                    self.on_turn(self)
            if grew and tracker is not None:
                tracker.waiting += grew
            if finished:
                if clock > now and tracker is not None:
                    if not tracker.solo or tracker.completed + finished >= tracker.total:
                        # completions ahead of the clock are counted when they happen where
                        # another replica may end the run first, or where they end it
                        yield from until(env, clock)
                self._finished(finished)
            if code & steps.NEED_TAPE:
                n = int(self.state[0]["running"])
                adm = self.run[n - int(self.state[0]["admitted"]) : n].copy()
                tape.ensure(t, adm, self._live)
            code &= steps.CODE
            if code == unpriced:
                price = tuple(cost.step(StepShape(b, dctx, self.k, pft, pfc, npf)))
                if table and npf == 0:
                    prices.extend(b, dctx)  # the cache had no price for it
                end = clock + price[0]
                if ahead and (end < horizon or clock < horizon < end < hard):
                    flags = base | steps.PRICE
                    continue
                if clock > now:
                    yield from until(env, clock)
                yield env.timeout(price[0])
                flags = base | steps.PRICE | steps.ENDED
            elif code == past:
                yield from until(env, clock)
                flags, price = base, _NO_PRICE
                if between:
                    self._between_steps()
            elif code == pending:
                if clock > now:
                    yield from until(env, clock)
                yield env.timeout(total)
                flags, price = base | steps.ENDED, _NO_PRICE
            elif code == stepped:
                flags, price = base, _NO_PRICE
                self._between_steps()
            elif code == steps.IDLE:
                flags, price = base, _NO_PRICE
                self._wake = env.event()
                yield self._wake
                self._wake = None
            elif code == steps.NO_ROOM:
                flags, price = base, _NO_PRICE
                self._make_room()
            elif code == steps.LOG_FULL:
                self.records.make_room()  # and the same call again
            else:
                raise RuntimeError("engine step with nothing to run: the KV cache check failed")

    def _between_steps(self) -> None:
        """What runs between two steps: the draft-length policy observes the step's outcome
        and, after any check hook, chooses the next k."""
        e = self.state[0]
        ad = self.adaptive
        if ad is not None and e["decodes"] > 0:
            ad.observe_counts(self.k, float(e["observed_accepted"]), float(e["observed_rejected"]))
        if self.on_step is not None:
            self.on_step(self, self.batch_view())
        if ad is not None:
            self.k = ad.choose(int(e["next_decodes"]), int(e["next_context"]))

    def _hard(self, horizon: float) -> float:
        """How far steps may run ahead of the clock.

        Every step run ahead ends strictly before ``horizon`` (the next arrival or the deadline),
        except the step the next arrival falls into, which may end before the returned bound: a
        step that starts before an arrival does not see it, so it is the same whenever it is
        applied, as long as nothing at that arrival can observe it applied early: one replica
        (the router reads completions), only that arrival before it ends, the deadline after it,
        and no ``limits.max_waiting`` stop at it (checked by the step itself). Returns
        ``horizon`` when no such step may run.
        """
        tr = self.tracker
        assert tr is not None
        if not tr.solo or tr.next_arrival >= tr.deadline:
            return horizon
        return min(tr.after_next, tr.deadline)

    def _make_room(self) -> None:
        """Grow the running set, the batch and the queue's front for the next formation."""
        e = self.state[0]
        nrun = int(e["running"])
        room = max(int(e["max_num_seqs"]) - nrun, 0)
        most = nrun + min(len(self.waiting), room, int(e["token_budget"]))  # as form_batch
        size = self.run.shape[0]
        while size < most:
            size *= 2
        if size > self.run.shape[0]:
            run = np.zeros(size, dtype=np.int64)
            run[: self.run.shape[0]] = self.run
            self.run = run
        if size > self.batch.shape[0]:
            self.batch = np.zeros(size, dtype=ENTRY)
        self.kv.grow_rows(size)
        if self.kv.caching and int(e["pool_need"]) > self.kv.blocks.shape[0]:
            self.kv.grow_pool(int(e["pool_need"]))
        self.waiting.reserve_front(nrun)


def _merge_logs(engines: list[Engine]) -> dict[str, npt.NDArray[np.generic]]:
    """The replicas' step records as columns, by end time then replica."""
    logs = [e.records.columns() for e in engines]
    if len(logs) == 1:
        return logs[0]
    steps = {name: np.concatenate([g[name] for g in logs]) for name in STEP_FIELDS}
    if steps["start"].shape[0]:
        ends = steps["start"] + steps["duration"]
        order = np.lexsort((steps["replica"], ends))
        steps = {k: v[order] for k, v in steps.items()}
    return steps


def check_kv_fits(scn: Scenario, wl: Workload) -> None:
    """Refuse a KV cache too small for the longest request (it could never finish).

    A running request at its largest holds ``prompt + output - 1`` tokens plus ``k`` look-ahead
    slots (``k_max`` under the adaptive policy); the oldest running request can always get that
    by preempting the others, so this bound is what guarantees progress.

    The capacity is ``server.num_gpu_blocks``, or derived from GPU memory when that is null
    (:func:`sdsim.memory.kv_capacity`).

    Raises
    ------
    ScenarioError
        Naming ``server.num_gpu_blocks``.
    """
    if len(wl) == 0:
        return
    check_request_fits(scn, int((wl.prompt + wl.output).max()))


def run_simulation(
    scn: Scenario,
    wl: Workload,
    cost: StepCostModel,
    seed: int,
    on_step: StepHook | None = None,
    progress: Callable[[int, int], None] | None = None,
    *,
    fast_forward: bool = True,
    request_sink: Sink | None = None,
    step_sink: Callable[[dict[str, npt.NDArray[np.generic]]], None] | None = None,
) -> SimRun:
    """Run the SimPy model until every request finished or a saturation bound is hit.

    Parameters
    ----------
    scn
        Scenario.
    wl
        Requests.
    cost
        Step-cost model.
    seed
        Run seed (keys the acceptance stream and the router's).
    on_step
        Check hook called after every engine step (every step then waits on the SimPy clock).
    progress
        Called now and then with (requests completed, total).
    fast_forward
        Run steps ahead of the SimPy clock up to the next outside event; the records are the
        same either way.
    request_sink
        Streaming statistics: requests live in reusable slots and are handed to this callable in
        batches once finished (the rest at the end), so memory follows the requests in the
        system; the returned table is then empty of records.
    step_sink
        Streaming statistics: step records are handed to this callable in blocks instead of
        being kept; ``SimRun.steps`` is then empty.

    Raises
    ------
    ScenarioError
        When the KV cache cannot hold the longest request.
    """
    check_kv_fits(scn, wl)
    env = simpy.Environment()
    n = len(wl)
    streaming = request_sink is not None
    key = stream_key(seed, "acceptance")
    table = RequestTable(wl, capacity=1024 if streaming else None, accept_key=key)
    replicas = scn.server.replicas
    if step_sink is not None:
        log_capacity = 1 << 16
    else:
        # step-count guess: output tokens / ~2 per step / batch ~ 8, over the replicas; grows
        log_capacity = int(min(max(1024, wl.output.sum() // 16 // replicas), 5_000_000))
    tracker = Tracker(env, n, progress, scn.limits.max_waiting)
    tracker.solo = replicas == 1
    keys = None
    if scn.server.router == "prefix-affinity":
        keys = affinity_keys(wl.prefix_group, wl.prefix_len, wl.conv, scn.server.block_size, n)
    router = Router(
        scn.server.router, replicas, n, seed, keys=keys, imbalance=scn.server.affinity_imbalance
    )
    engines = [
        Engine(
            env,
            scn,
            table,
            cost,
            replica=r,
            on_step=on_step,
            tracker=tracker,
            router=router,
            fast_forward=fast_forward,
            step_sink=step_sink,
            log_capacity=log_capacity,
        )
        for r in range(replicas)
    ]
    ahead = None  # reusable slots and one engine: the tape a request is pointed at on arrival
    sessions = wl.next_turn is not None
    if sessions and streaming:
        raise ValueError("a session workload keeps its records (its arrivals are not known ahead)")
    if sessions:
        pass  # turns get their ids as they arrive: no tape is written ahead of an arrival
    elif not streaming and len(engines) == 1:
        # one engine owns every request id (slot == id): write acceptance tapes ahead in bulk
        engines[0].tape.prefetch = TAPE_PREFETCH
    elif len(engines) == 1:
        # reusable slots: write tapes ahead by request id
        ahead = engines[0]
        ahead.tape.ahead(wl.output, wl.alpha, key, TAPE_PREFETCH)
    done = tracker.done
    api_delay = scn.server.api_delay_s
    arrived = [0]

    def arrivals() -> Generator[simpy.Event, Any, None]:
        chunk = 4096
        for c0 in range(0, n, chunk):
            c1 = min(n, c0 + chunk)
            arr = (wl.arrival[c0 : min(n, c1 + 1)] + api_delay).tolist()
            if streaming:
                raw = wl.arrival[c0:c1].tolist()
                prompt = wl.prompt[c0:c1].tolist()
                output = wl.output[c0:c1].tolist()
                alpha = None if wl.alpha is None else wl.alpha[c0:c1].tolist()
                bases = counter_base(key, np.arange(c0, c1, dtype=np.int64))
                groups = None if wl.prefix_group is None else wl.prefix_group[c0:c1].tolist()
                lens = None if wl.prefix_len is None else wl.prefix_len[c0:c1].tolist()
            for i in range(c1 - c0):
                rid = c0 + i
                dt = arr[i] - env.now
                if dt > 0:
                    tracker.next_arrival = env.now + dt  # the float SimPy will fire it at
                    if i + 1 < len(arr):
                        a2 = arr[i + 1]
                        tracker.after_next = a2 - abs(a2) * 1e-15
                    else:
                        tracker.after_next = math.inf
                    yield env.timeout(dt)
                if streaming:
                    slot = table.fill(
                        rid,
                        raw[i],
                        prompt[i],
                        output[i],
                        None if alpha is None else alpha[i],
                        bases[i],
                        request_sink,
                        _NO_PREFIX
                        if groups is None or lens is None
                        else (groups[i], lens[i], -1, 0, 0),
                    )
                    if ahead is not None:
                        ahead.tape.assign(table, slot, rid, ahead._live)
                else:
                    slot = rid
                arrived[0] = rid + 1
                if not tracker.arrive(engines[router.choose(rid)], slot):
                    return
        tracker.next_arrival = math.inf

    def deadline(max_t: float) -> Generator[simpy.Event, Any, None]:
        yield env.timeout(max_t)
        tracker.stop(f"simulated time exceeded limits.max_sim_time_s={max_t}")

    if sessions:
        sender = SessionArrivals(env, wl, table, engines, router, tracker, key, api_delay)
        env.process(sender.first_turns())
    else:
        env.process(arrivals())
    for e in engines:
        env.process(e.loop())
    if scn.limits.max_sim_time_s is not None:
        tracker.deadline = float(scn.limits.max_sim_time_s)
        env.process(deadline(scn.limits.max_sim_time_s))
    if n == 0:
        done.succeed()
    env.run(until=done)
    for e in engines:
        e.stopped = True
    if progress is not None:
        progress(tracker.completed, n)
    end = float(env.now)
    info: dict[str, Any] = {
        "kv_blocks_total": engines[0].kv.total if engines else None,
        "kv_capacity_source": kv_capacity(scn).source,
        "kv_peak_blocks": max((e.kv.peak for e in engines), default=0),
        "api_delay_s": float(api_delay),
        "replicas": len(engines),
        "prefix_caching": bool(scn.server.prefix_caching),
        "prefix_evictions": sum(e.kv.evictions for e in engines),
    }
    if streaming:
        assert request_sink is not None
        table.harvest(request_sink, everything=True)
        _sink_unarrived(wl, arrived[0], request_sink)
    if step_sink is not None:
        for e in engines:
            e.records.finish()
    steps = _merge_logs(engines)
    return SimRun(
        table=table,
        steps=steps,
        end_time=end if math.isfinite(end) else 0.0,
        stopped_early=tracker.stopped_early,
        stop_reason=tracker.stop_reason,
        engines=engines,
        info=info,
    )


def _sink_unarrived(wl: Workload, first: int, sink: Sink) -> None:
    """Hand the requests that never reached an engine (run stopped early) to ``sink``."""
    n = len(wl)
    for c0 in range(first, n, 1 << 16):
        c1 = min(n, c0 + (1 << 16))
        m = c1 - c0
        nan = np.full(m, np.nan)
        zeros = np.zeros(m, dtype=np.int64)
        recs: dict[str, npt.NDArray[np.generic]] = {
            "rid": np.arange(c0, c1, dtype=np.int64),
            "arrival": wl.arrival[c0:c1],
            "first_scheduled": nan,
            "first_token": nan,
            "finish": nan,
            "prompt_tokens": wl.prompt[c0:c1],
            "output_tokens": wl.output[c0:c1],
            "steps": zeros,
            "drafted": zeros,
            "accepted": zeros,
            "preemptions": zeros,
            "cached_tokens": zeros,
            "replica": zeros,
            "aborted": np.zeros(m, dtype=np.bool_),
        }
        if wl.alpha is not None:
            recs["alpha"] = wl.alpha[c0:c1]
        sink(recs)
