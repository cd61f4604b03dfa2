"""The serving engine as SimPy processes: arrivals, a router, and one engine loop per replica.

One engine step = a draft length (fixed, or chosen by :mod:`sdsim.engine.draft_length`), batch
formation with KV-slot reservation and preemption (:mod:`sdsim.engine.scheduler`,
:mod:`sdsim.engine.kvcache`), a duration from the :class:`~sdsim.costs.step.StepCostModel`, then
the outcome applied to every request in the batch at once: prefill chunks advance; a request whose
prefill completes emits a token at the end of the step (its first, or after a preemption the next
one); each decoding request draws its accepted draft tokens (truncated geometric, counter-based
uniforms keyed by request id and its decode counter) and emits accepted + 1 tokens, never more
than it still needs; the KV slots of rejected draft tokens are released; finished requests free
their blocks.

Requests reach a replica ``server.api_delay_s`` after they arrive (API server, tokenisation), routed
by :class:`~sdsim.engine.router.Router`. A run stops when every request finished, or early when
more than ``limits.max_waiting`` requests wait (all replicas together) or the clock passes
``limits.max_sim_time_s``.

Two loops give the same records: the reference loop (numpy, per step; run with an ``on_step``
hook, ``fast_forward=False``, the adaptive policy or per-step counters), and the compiled loop
(:mod:`sdsim.engine.compiled`, numba) that ``run_simulation`` uses otherwise.
"""

from __future__ import annotations

__all__ = ["Engine", "StepHook", "Tracker", "check_kv_fits", "run_simulation"]

import math
from collections.abc import Callable, Generator
from dataclasses import dataclass
from heapq import heappush
from typing import Any

import numpy as np
import numpy.typing as npt
import simpy
from simpy.events import NORMAL

from sdsim.acceptance import AcceptanceSampler, position_probs
from sdsim.costs.step import StepCostModel, StepShape, StepTime, decode_step_times
from sdsim.engine import compiled as ck
from sdsim.engine.draft_length import AdaptiveDraftLength
from sdsim.engine.kvcache import KVCache
from sdsim.engine.router import Router
from sdsim.engine.scheduler import Batch, form_batch
from sdsim.engine.state import IdQueue, RequestTable, Sink, StepColumns
from sdsim.engine.tape import AcceptanceTape
from sdsim.memory import check_request_fits, kv_capacity, num_gpu_blocks
from sdsim.records import SimRun
from sdsim.rng import counter_base, stream_key
from sdsim.scenario import Scenario
from sdsim.workload import Workload

StepHook = Callable[["Engine", Batch], None]

# Fast-forward is tried when at least this many steps fit before the next arrival (a shorter run
# saves less than its planning costs).
MIN_RUN = 4

# Most steps one compiled decode run may take (its records are reserved up front).
RUN_MAX = 4096

# Request ids whose acceptance tapes are written ahead per bulk call (one engine, batch run).
TAPE_PREFETCH = 2048

# ndarray.sum goes through a Python wrapper; the ufunc reduction itself is what a step needs
_sum = np.add.reduce
_any = np.logical_or.reduce


class Tracker:
    """State shared by the replicas: completions (fires ``done`` when all finished), the number
    waiting across replicas (for ``limits.max_waiting``), progress reports, and the times of the
    next events from outside the engines (the next arrival, the deadline), which bound how far an
    engine may fast-forward."""

    def __init__(
        self, env: simpy.Environment, total: int, progress: Callable[[int, int], None] | None
    ) -> None:
        self.done = env.event()
        self.total = total
        self.completed = 0
        self.waiting = 0
        self.progress = progress
        self.next_arrival = math.inf
        self.deadline = math.inf
        # below the arrival after the next one (by a few ulps: the float SimPy will fire it at
        # is only known when the next one has fired), and whether a decode run may include the
        # step the next arrival falls into (see Engine._straddle)
        self.after_next = math.inf
        self.max_waiting = math.inf
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


@dataclass
class _Block:
    """A planned run of ``m`` decode-only steps with the same batch (see ``Engine._plan``)."""

    m: int
    times: npt.NDArray[np.float64]  # t_0 .. t_m: step starts, then the end of the last step
    total: npt.NDArray[np.float64]
    draft: npt.NDArray[np.float64]
    verify: npt.NDArray[np.float64]
    overhead: npt.NDArray[np.float64]
    emitted: npt.NDArray[np.int64]  # per step (the last one capped at what requests need)
    kv_used: npt.NDArray[np.int64]  # blocks in use during each step
    tot_emit: npt.NDArray[np.int64]  # per request, over the block
    last_acc: npt.NDArray[np.int64]  # accepted drafts of the last step (adaptive observation)
    observe_last: bool


class Engine:
    """One replica: a continuous-batching engine with speculative decoding and a paged KV cache.

    Parameters
    ----------
    env
        The SimPy environment.
    scn
        The scenario (server limits, draft length and policy, acceptance).
    table
        Shared request state.
    cost
        Step-cost model.
    accept_key
        Key of the counter-based acceptance stream.
    records
        Where step records go.
    replica
        Index of this replica.
    on_step
        Optional check hook called after every step with the engine and the batch.
    tracker
        Shared completion/waiting counters.
    router
        Shared router (its ``outstanding`` counts are kept current here).
    acc_base
        Per-slot acceptance hash halves (``table.acc_base`` is used when it is set up by the
        simulation; computed from ``accept_key`` for slot == request id otherwise).
    fast_forward
        The fast path. With a fixed k and derived per-request counters: the compiled loop
        (:meth:`_loop_compiled`, :mod:`sdsim.engine.compiled`): one kernel call per step, and
        runs of decode-only steps up to the next arrival (across completions) in one call and
        one SimPy event. Under the adaptive policy: runs in which nothing but decoding can happen
        (no arrival, completion, admission, preemption or change of k) in one vectorised
        operation (:meth:`_plan`). Needs ``tracker`` (for the next arrival) and no ``on_step``
        hook; results are identical to the reference loop's (``False``).

    Attributes
    ----------
    k
        Draft length of the current (or last) step.
    kv
        This replica's :class:`~sdsim.engine.kvcache.KVCache`.
    kv_in_step
        Blocks in use while the last step ran (look-ahead slots included); after the step,
        ``kv.used`` is lower by the released slots.
    adaptive
        The adaptive draft-length policy, or ``None`` for a fixed k.
    ff_steps, ff_blocks
        Steps advanced by fast-forward, and in how many blocks.
    """

    def __init__(
        self,
        env: simpy.Environment,
        scn: Scenario,
        table: RequestTable,
        cost: StepCostModel,
        accept_key: int,
        records: StepColumns,
        replica: int = 0,
        on_step: StepHook | None = None,
        tracker: Tracker | None = None,
        router: Router | None = None,
        acc_base: npt.NDArray[np.uint64] | None = None,
        fast_forward: bool = False,
    ) -> None:
        self.env = env
        self.scn = scn
        self.t = table
        self.cost = cost
        self.key = accept_key
        self.records = records
        self.replica = replica
        self.on_step = on_step
        self.tracker = tracker
        self.router = router
        self.k = scn.spec.k
        self.max_num_seqs = scn.server.max_num_seqs
        self.budget = scn.server.max_num_batched_tokens
        self.block_size = scn.server.block_size
        self.policy = scn.server.scheduler
        # engine state shared with the compiled kernels (sdsim.engine.compiled): KV counts,
        # waiting-queue ends, running-set size, the current batch's shape; `rb` holds the running
        # set and the current batch
        self.es = ck.new_state(
            0, self.block_size, self.max_num_seqs, self.budget, self.k, replica,
            self.policy == "prefill-first",
        )  # fmt: skip
        self.rb = np.zeros((6, min(self.max_num_seqs, 64) + 1), dtype=np.int64)
        self.kv = KVCache(
            num_gpu_blocks(scn),
            self.block_size,
            table.kv_blocks,
            counts=self.es[ck.KV_USED : ck.KV_PEAK + 1],
        )
        self.es[ck.KV_CAP] = self.kv.capacity
        self.adaptive: AdaptiveDraftLength | None = None
        if scn.spec.policy == "adaptive":
            self.adaptive = AdaptiveDraftLength(
                cost,
                k_max=scn.spec.k_max,
                k_init=scn.spec.k,
                token_budget=self.budget,
                halflife_tokens=scn.spec.alpha_halflife_tokens,
            )
        a = scn.acceptance.alpha
        self.sampler = AcceptanceSampler(position_probs(a, len(a)) if isinstance(a, list) else None)
        self.tape = AcceptanceTape(self.sampler, None if self.adaptive is not None else self.k)
        # the per-request half of the acceptance hash, computed once (same draws as
        # counter_uniform(key, id, decode_counter))
        if acc_base is None:
            acc_base = counter_base(accept_key, np.arange(table.n, dtype=np.int64))
        table.acc_base = acc_base
        self.waiting = IdQueue(self.es[ck.WHEAD : ck.WTAIL + 1])
        self.outstanding = 0  # requests routed here and not finished (for the router)
        self.completed = 0
        self.preemptions = 0
        self._wake: simpy.Event | None = None
        self.stopped = False
        self.fast_forward = bool(fast_forward and tracker is not None and on_step is None)
        self._k_next: int | None = None  # k already chosen for the next step (fast-forward)
        self._ff_cap = 32
        self._ff_len = float(MIN_RUN)  # running mean of planned run lengths
        self._ff_skip = 0
        self.ff_steps = 0
        self.ff_blocks = 0

    @property
    def run_ids(self) -> npt.NDArray[np.int64]:
        """Running requests in admission order (a copy)."""
        return self.rb[ck.RUN, : self.es[ck.NRUN]].copy()

    @run_ids.setter
    def run_ids(self, ids: npt.NDArray[np.int64]) -> None:
        n = int(ids.shape[0])
        self._reserve_rb(n)
        self.rb[ck.RUN, :n] = ids
        self.es[ck.NRUN] = n

    @property
    def n_prefilling(self) -> int:
        """Running requests still prefilling."""
        return int(self.es[ck.NPFING])

    @n_prefilling.setter
    def n_prefilling(self, n: int) -> None:
        self.es[ck.NPFING] = n

    @property
    def kv_in_step(self) -> int:
        """Blocks in use while the last step ran (look-ahead slots included)."""
        return int(self.es[ck.KV_IN_STEP])

    @kv_in_step.setter
    def kv_in_step(self, n: int) -> None:
        self.es[ck.KV_IN_STEP] = n

    def _reserve_rb(self, n: int) -> None:
        """Make the running-set/batch buffer hold at least ``n`` requests."""
        cap = self.rb.shape[1]
        if n <= cap:
            return
        while cap < n:
            cap *= 2
        rb = np.zeros((self.rb.shape[0], cap), dtype=np.int64)
        rb[:, : self.rb.shape[1]] = self.rb
        self.rb = rb

    @property
    def acc_base(self) -> npt.NDArray[np.uint64]:
        """Per-slot halves of the acceptance hash (``rng.counter_base`` of each request id)."""
        return self.t.acc_base

    def table_resized(self) -> None:
        """Re-bind per-request arrays after the request table grew in place (live serving)."""
        self.kv.held = self.t.kv_blocks
        if not self.t.reusable:
            self.t.acc_base = counter_base(self.key, np.arange(self.t.n, dtype=np.int64))

    # ------------------------------------------------------------------ arrivals
    def enqueue(self, rid: int) -> None:
        """A request (its slot) joins this engine's waiting queue (waking the engine if idle)."""
        self.waiting.append(rid)
        self.outstanding += 1
        if self.router is not None:
            self.router.outstanding[self.replica] += 1
        if self.tracker is not None:
            self.tracker.waiting += 1
        self.t.replica[rid] = self.replica
        if self._wake is not None and not self._wake.triggered:
            self._wake.succeed()

    def _choose_k(self) -> int:
        assert self.adaptive is not None
        t = self.t
        run = self.run_ids
        if self.n_prefilling:
            run = run[t.prefilled[run] >= t.prefill_target[run]]
        nd = int(run.shape[0])
        ctx = int((t.prompt[run] + t.generated[run]).sum()) if nd else 0
        return self.adaptive.choose(nd, ctx)

    def _live(self) -> npt.NDArray[np.int64]:
        """Requests of this engine that may hold an acceptance tape (running or waiting)."""
        if not self.waiting:
            return self.run_ids
        return np.concatenate([self.run_ids, np.fromiter(self.waiting, dtype=np.int64)])

    # ------------------------------------------------------------------ loop
    def loop(self) -> Generator[simpy.Event, Any, None]:
        """The engine process: form a batch, run the step, apply its outcome; idle when empty."""
        if (
            self.fast_forward
            and self.adaptive is None
            and self.tape.k is not None
            and self.t.derived_counts
        ):
            yield from self._loop_compiled()
            return
        t = self.t
        env = self.env
        kv = self.kv
        bs = kv.block_size
        adaptive = self.adaptive
        tape = self.tape
        fixed_tape = tape.k is not None
        records = self.records
        cost = self.cost
        replica = self.replica
        derived = t.derived_counts
        while not self.stopped:
            if self.run_ids.shape[0] == 0 and not self.waiting:
                self._wake = env.event()
                yield self._wake
                self._wake = None
                continue
            if self._k_next is not None:
                k = self._k_next
                self._k_next = None
            else:
                k = self.k if adaptive is None else self._choose_k()
            self.k = k
            now = env.now
            batch, waiting_before, npre = self._form(k, now)
            dec = batch.decode_ids
            pf = batch.prefill_ids
            chunks = batch.prefill_chunks
            b, dec_ctx, pf_tokens, pf_ctx, npf = _shape(batch, t)
            self.kv_in_step = kv.used
            st = cost.step(StepShape(b, dec_ctx, k, pf_tokens, pf_ctx, npf))

            if (
                self.fast_forward
                and npf == 0
                and npre == 0
                and b == self.run_ids.shape[0]
                and self.n_prefilling == 0
            ):
                block = None
                if self._ff_skip:
                    self._ff_skip -= 1
                else:
                    block = self._plan(batch, k, st, now, dec_ctx, waiting_before)
                    # planning a run costs about two plain steps: when runs come out short
                    # (busy engine, frequent arrivals and completions), try only now and then
                    m = 0 if block is None else block.m
                    self._ff_len = 0.75 * self._ff_len + 0.25 * m
                    if self._ff_len < MIN_RUN:
                        self._ff_skip = 8
                if block is not None:
                    yield _timeout_at(env, float(block.times[-1]))
                    self._apply(block, batch, k, waiting_before)
                    continue

            yield env.timeout(st.total)
            end = env.now

            emitted = 0
            acc_total = 0
            finishing = False
            # prefill chunks advance; a completed prefill emits one token at the end of the step
            if npf:
                t.prefilled[pf] += chunks
                done_pf = pf[t.prefilled[pf] >= t.prefill_target[pf]]
                if done_pf.shape[0]:
                    self.n_prefilling -= int(done_pf.shape[0])
                    t.generated[done_pf] += 1
                    t.prefill_done[done_pf] += 1
                    emitted += int(done_pf.shape[0])
                    ft = done_pf[np.isnan(t.first_token[done_pf])]
                    t.first_token[ft] = end
                    finishing = bool((t.generated[done_pf] >= t.output[done_pf]).any())
            if b:
                # each per-request array is gathered once and written back once
                dc = t.decode_counter[dec]
                pos = t.tape_pos[dec] + dc
                gen = t.generated[dec]
                need = t.output[dec] - gen
                if fixed_tape:
                    acc = tape.arena[pos]
                else:
                    acc = self.sampler.sample(
                        tape.arena[pos], k, None if t.alpha is None else t.alpha[dec]
                    )
                    t.drafted[dec] += k
                t.decode_counter[dec] = dc + 1
                if not derived:
                    t.steps[dec] += 1
                if adaptive is not None:
                    adaptive.observe(k, acc)
                emit = np.minimum(acc + 1, need)
                t.generated[dec] = gen + emit
                if not derived:
                    t.accepted[dec] += emit - 1
                esum = int(_sum(emit))
                emitted += esum
                acc_total = esum - b
                # keep blocks for prompt + generated - 1 tokens; the rejected drafts' slots go back
                kept = (batch.decode_context + emit + (bs - 2)) // bs
                kv.used -= int(_sum(batch.decode_blocks - kept))
                kv.held[dec] = kept
                if not finishing:
                    finishing = bool(_any(emit >= need))
            if finishing:
                self._complete(end)
            records.append(
                (
                    now,
                    st.total,
                    b + npf,
                    pf_tokens,
                    b,
                    b * (k + 1),
                    st.draft,
                    st.verify,
                    st.prefill,
                    st.overhead,
                    self.kv_in_step,
                    waiting_before,
                    k,
                    acc_total,
                    emitted,
                    npre,
                    replica,
                )
            )
            if self.on_step is not None:
                self.on_step(self, batch)

    def _loop_compiled(self) -> Generator[simpy.Event, Any, None]:
        """The engine loop with the per-step work compiled (:mod:`sdsim.engine.compiled`).

        Same steps, records and SimPy events as the reference loop, which still runs with an
        ``on_step`` hook, the adaptive policy or per-step counters: one kernel call applies the
        outcome of the step that ended and forms the next batch (the scheduler's Python
        :func:`form_batch` only when it preempts, or for ``prefill-first`` admissions); the cost
        model prices the batch; then either one SimPy timeout for the step, or, when the batch
        is decode-only with nothing waiting, one compiled run of the decode steps that end
        before the next arrival (across completions) and one event at its end.
        """
        t = self.t
        env = self.env
        es = self.es
        tape = self.tape
        records = self.records
        cost = self.cost
        tracker = self.tracker
        assert tracker is not None
        waiting = self.waiting
        k = self.k
        step = ck.step
        run_decode = ck.run_decode
        table = ck.DecodeCostTable(cost, k)
        formed, idle, fallback, grow, empty = ck.FORMED, ck.IDLE, ck.FALLBACK, ck.GROW, ck.EMPTY
        need_tape = ck.NEED_TAPE
        pf_row = ck.PF
        mode = ck.MODE_FORM
        both = ck.MODE_OUTCOME | ck.MODE_FORM
        total = draft = verify = prefill = overhead = start = 0.0
        while not self.stopped:
            ri = 0
            if mode & ck.MODE_OUTCOME:
                ri = records._size
                if ri >= records._cap or records._buf:
                    ri = records.reserve(1)
            now = float(env.now)  # SimPy starts at int 0: one compiled signature
            code, nfin, nadm, b, dctx, pft, pfc, npf = step(
                t.ints, t.floats, tape.arena, es, self.rb, waiting.buf, records.rec, ri, mode,
                now, total, draft, verify, prefill, overhead, start,
            )  # fmt: skip
            if mode & ck.MODE_OUTCOME:
                records._size = ri + 1
            if nfin:
                self._finished(nfin)
            c = code & 7
            if c != formed:
                if c == idle:
                    self._wake = env.event()
                    yield self._wake
                    self._wake = None
                    mode = ck.MODE_FORM
                    continue
                if c == grow:
                    self._reserve_rb(2 * self.rb.shape[1])
                    mode = ck.MODE_FORM
                    continue
                if c == fallback:
                    b, dctx, pft, pfc, npf = self._form_python(k, now)
                elif c == empty:  # pragma: no cover - prevented by check_kv_fits
                    raise RuntimeError("engine step with nothing to run: the KV cache check failed")
            if nadm:
                if code & need_tape:
                    tape.ensure(t, self.rb[pf_row, npf - nadm : npf].copy(), self._live)
                tracker.waiting -= nadm
            st = cost.step(StepShape(b, dctx, k, pft, pfc, npf))
            total = st.total
            if npf == 0 and b == es[ck.NRUN] and not es[ck.NPRE]:
                horizon = min(tracker.next_arrival, tracker.deadline)
                hard = self._straddle(horizon)
                if now < horizon and now + total < hard:
                    ri = records.reserve(RUN_MAX)
                    m, nfin, end, miss_b, miss_ctx = run_decode(
                        t.ints, t.floats, tape.arena, es, self.rb, waiting.buf, records.rec, ri,
                        RUN_MAX,
                        now, horizon, hard, total, st.draft, st.verify, st.overhead, table.ctab,
                        table.cidx,
                    )  # fmt: skip
                    if miss_b:
                        table.extend(miss_b, miss_ctx)
                    if m:
                        records._size = ri + m
                        if m > 1:
                            self.ff_steps += m
                            self.ff_blocks += 1
                        yield _timeout_at(env, end)
                        if nfin:
                            self._finished(nfin)
                        mode = ck.MODE_FORM
                        continue
            draft, verify, prefill, overhead = st.draft, st.verify, st.prefill, st.overhead
            start = now
            yield env.timeout(total)
            mode = both

    def _straddle(self, horizon: float) -> float:
        """Latest end for the last step of a decode run (the step the next arrival falls into).

        A step that starts before an arrival does not see it, so a run may end with the step
        during which the next request arrives, as long as nothing at that arrival can observe
        the run's steps applied ahead of their time: one replica (the router reads completions),
        no ``limits.max_waiting`` stop at it, only that one arrival before the step ends, and the
        deadline after it. Returns ``horizon`` when the run must end before the arrival.
        """
        tr = self.tracker
        assert tr is not None
        if not tr.solo or tr.next_arrival >= tr.deadline or tr.waiting + 1 > tr.max_waiting:
            return horizon
        return min(tr.after_next, tr.deadline)

    def _finished(self, nf: int) -> None:
        """Count ``nf`` completions (the table already records them)."""
        self.completed += nf
        self.outstanding -= nf
        if self.router is not None:
            self.router.outstanding[self.replica] -= nf
        if self.tracker is not None:
            self.tracker.finished(nf)

    def _form(self, k: int, now: float) -> tuple[Batch, int, int]:
        """Form the next batch with :func:`form_batch` and apply what forming it did (preempted
        and admitted requests, their tapes, the waiting count); returns the batch, the queue
        length before it and the number of requests it preempted."""
        t = self.t
        waiting_before = len(self.waiting)
        batch, self.run_ids = form_batch(
            self.run_ids, self.n_prefilling, self.waiting, t, k, self.max_num_seqs,
            self.budget, self.policy, self.kv,
        )  # fmt: skip
        npre = int(batch.preempted.shape[0])
        if npre:
            self.preemptions += npre
            self.n_prefilling -= batch.preempted_prefilling
        if batch.admitted:
            self.n_prefilling += len(batch.admitted)
            adm = np.asarray(batch.admitted, dtype=np.int64)
            fresh = adm[np.isnan(t.first_scheduled[adm])]
            t.first_scheduled[fresh] = now
            self.tape.ensure(t, adm, self._live)
        if self.tracker is not None:
            self.tracker.waiting += len(self.waiting) - waiting_before
        return batch, waiting_before, npre

    def _form_python(self, k: int, now: float) -> tuple[int, int, int, int, int]:
        """Form the batch with :meth:`_form` (preemption, prefill-first admissions) and load it
        into the compiled loop's state; returns the step's shape."""
        es = self.es
        batch, waiting_before, npre = self._form(k, now)
        dec, pf = batch.decode_ids, batch.prefill_ids
        b, npf = int(dec.shape[0]), int(pf.shape[0])
        self._reserve_rb(max(b, npf))
        rb = self.rb
        rb[ck.DEC, :b] = dec
        rb[ck.DCTX, :b] = batch.decode_context
        rb[ck.DBLK, :b] = batch.decode_blocks
        rb[ck.PF, :npf] = pf
        rb[ck.CHUNK, :npf] = batch.prefill_chunks
        es[ck.B] = b
        es[ck.NPF] = npf
        es[ck.NADM] = 0
        es[ck.NPRE] = npre
        es[ck.WAIT_BEFORE] = waiting_before
        es[ck.KV_IN_STEP] = self.kv.used
        b, dec_ctx, pf_tokens, pf_ctx, npf = _shape(batch, self.t)
        return b, dec_ctx, pf_tokens, pf_ctx, npf

    def _complete(self, end: float) -> None:
        """Retire the running requests that have emitted their last token (at time ``end``)."""
        t = self.t
        touched = self.run_ids
        fin_mask = t.generated[touched] >= t.output[touched]
        fin = touched[fin_mask]
        t.finish[fin] = end
        self.kv.release(fin)
        self.run_ids = touched[~fin_mask]
        self._finished(int(fin.shape[0]))

    # ------------------------------------------------------------------ fast-forward
    def _plan(
        self, batch: Batch, k: int, st0: StepTime, now: float, ctx0: int, waiting: int
    ) -> _Block | None:
        """Plan the run of steps that starts with ``batch`` and in which nothing but decoding can
        happen, exactly as the step-by-step loop would run them.

        The batch is decode-only and holds every running request. Step ``j`` of the run forms the
        same batch as long as, at its start, no request has finished (a completion may end the
        run's last step), no arrival or deadline has passed (the run must end strictly before the
        next one), the KV cache holds every request's look-ahead slots (no preemption), the
        request at the head of the queue cannot be admitted, and the adaptive policy keeps k.
        Acceptance draws come from the tapes (pure functions of request and decode counter);
        durations from the cost model at each step's context total (it grows by the tokens
        emitted); times by the same float additions SimPy would make.

        Returns ``None`` when no run of two or more steps is possible (the step runs alone).
        """
        tr = self.tracker
        assert tr is not None
        horizon = min(tr.next_arrival, tr.deadline)
        d0 = st0.total
        if not now + d0 < horizon or d0 <= 0.0:
            return None
        # step lengths grow with the context, so the first one bounds how many fit
        room = (horizon - now) / d0
        if room < MIN_RUN:
            return None
        t = self.t
        dec = batch.decode_ids
        b = int(dec.shape[0])
        need = t.output[dec] - t.generated[dec]
        min_need = int(need.min())
        m_top = min(min_need, self._ff_cap, max(2, (1 << 17) // b))
        if room < m_top:
            m_top = int(room) + 1
        if m_top < 2:
            return None
        tape = self.tape
        draws = tape.read_block(t, dec, m_top)
        alpha = None
        if tape.k is None and t.alpha is not None:
            alpha = np.broadcast_to(t.alpha[dec], (m_top, b)).ravel()
        acc = tape.accepted(draws.ravel(), k, alpha).reshape(m_top, b)
        x = acc + 1
        cum = np.cumsum(x, axis=0)  # tokens emitted after each step (uncapped)
        fin_rows = (cum >= need).any(axis=1)
        m = m_top
        if fin_rows.any():
            m = int(np.argmax(fin_rows)) + 1  # the first completion ends the run (inclusive)
        # context total before each step (the steps before the last are never capped)
        e_rows = x.sum(axis=1)
        ctx_tot = np.empty(m, dtype=np.int64)
        ctx_tot[0] = ctx0
        if m > 1:
            np.cumsum(e_rows[: m - 1], out=ctx_tot[1:])
            ctx_tot[1:] += ctx0
        # KV: look-ahead slots each step reserves; preemption when they exceed the capacity
        kv = self.kv
        bs = kv.block_size
        ctx_req = batch.decode_context
        used = np.empty(m, dtype=np.int64)
        used[0] = self.kv_in_step
        if m > 1:
            tgt = (ctx_req[None, :] + cum[: m - 1] + (k + bs - 1)) // bs
            used[1:] = tgt.sum(axis=1)
            cut = m
            if kv.limited:
                over = used[1:] > kv.capacity
                if over.any():
                    cut = int(np.argmax(over)) + 1
            if self.waiting:
                cut = min(cut, self._admission_cut(b, k, used, ctx_req, cum, m))
            m = min(m, cut)
        if m < 2:
            return None
        total, draft, verify, overhead = decode_step_times(self.cost, b, ctx_tot[:m], k)
        total[0] = d0
        times = np.empty(m + 1, dtype=np.float64)
        times[0] = now
        times[1:] = total
        np.cumsum(times, out=times)  # sequential additions: the floats SimPy's clock would hold
        m = min(m, int(np.searchsorted(times[1:], horizon, side="left")))  # steps ending < horizon
        if m < 2:
            return None
        # the adaptive policy chooses k before every step: the run ends where k would change
        # (the choice made for that step is kept for it); its estimate sees each step's outcome
        observe_last = True
        ad = self.adaptive
        if ad is not None:
            a_rows = acc[:m].sum(axis=1)
            r_rows = (acc[:m] < k).sum(axis=1)
            for j in range(1, m):
                ad.observe_counts(k, float(a_rows[j - 1]), float(r_rows[j - 1]))
                kj = ad.choose(b, int(ctx_tot[j]))
                if kj != k:
                    self._k_next = kj
                    m = j
                    observe_last = False
                    break
        self._ff_cap = min(4096, max(8, 2 * m))
        emitted = e_rows[:m].astype(np.int64)
        tot_emit = np.minimum(cum[m - 1], need)
        emitted[m - 1] = int(tot_emit.sum()) - (int(cum[m - 2].sum()) if m >= 2 else 0)
        return _Block(
            m=m,
            times=times[: m + 1],
            total=total[:m],
            draft=draft[:m],
            verify=verify[:m],
            overhead=overhead[:m],
            emitted=emitted,
            kv_used=used[:m],
            tot_emit=tot_emit,
            last_acc=acc[m - 1],
            observe_last=observe_last,
        )

    def _admission_cut(
        self,
        b: int,
        k: int,
        used: npt.NDArray[np.int64],
        ctx_req: npt.NDArray[np.int64],
        cum: npt.NDArray[np.int64],
        m: int,
    ) -> int:
        """First step (1..m-1) at which the head of the waiting queue would be admitted, else m.

        Mirrors :func:`~sdsim.engine.scheduler.form_batch` for a decode-only running set that
        fits the token budget: ``prefill-first`` admits when the queue head's first chunk fits
        the blocks free before the decodes reserve theirs; both policies then admit when it fits
        what the decodes' look-ahead slots leave (``used``), within ``max_num_seqs`` and the
        token budget left after the decodes.
        """
        t = self.t
        kv = self.kv
        bs = kv.block_size
        w = self.waiting[0]
        left = int(t.prefill_target[w] - t.prefilled[w])
        done = int(t.prefilled[w])
        held_w = int(kv.held[w])
        cap = kv.capacity
        cut = m
        if b >= self.max_num_seqs:
            return cut
        if self.policy == "prefill-first" and self.budget > 0:
            add = -(-(done + min(left, self.budget)) // bs) - held_w
            kept = ((ctx_req[None, :] + cum[: m - 1] + (bs - 2)) // bs).sum(axis=1)
            ok = add <= cap - kept
            if ok.any():
                cut = min(cut, int(np.argmax(ok)) + 1)
        budget_left = self.budget - b * (k + 1)
        if budget_left > 0:
            add = -(-(done + min(left, budget_left)) // bs) - held_w
            ok = add <= cap - used[1:m]
            if ok.any():
                cut = min(cut, int(np.argmax(ok)) + 1)
        return cut

    def _apply(self, block: _Block, batch: Batch, k: int, waiting: int) -> None:
        """Apply a fast-forwarded run of steps at its end (the SimPy clock is at its end time)."""
        t = self.t
        kv = self.kv
        bs = kv.block_size
        dec = batch.decode_ids
        m = block.m
        b = int(dec.shape[0])
        te = block.tot_emit
        t.generated[dec] += te
        t.decode_counter[dec] += m
        if not t.derived_counts:
            t.accepted[dec] += te - m
            t.steps[dec] += m
        if self.adaptive is not None:
            t.drafted[dec] += k * m
            if block.observe_last:
                self.adaptive.observe(k, block.last_acc)
        kept = (batch.decode_context + te + (bs - 2)) // bs
        kv.used += int(kept.sum() - batch.decode_blocks.sum())
        kv.held[dec] = kept
        peak = int(block.kv_used.max())
        if peak > kv.peak:
            kv.peak = peak
        self.kv_in_step = int(block.kv_used[-1])
        self.records.extend(
            {
                "start": block.times[:m],
                "duration": block.total,
                "num_seqs": b,
                "prefill_tokens": 0,
                "decode_seqs": b,
                "verify_tokens": b * (k + 1),
                "draft_s": block.draft,
                "verify_s": block.verify,
                "prefill_s": 0.0,
                "overhead_s": block.overhead,
                "kv_blocks_used": block.kv_used,
                "waiting": waiting,
                "k": k,
                "accepted": block.emitted - b,
                "emitted": block.emitted,
                "preempted": 0,
                "replica": self.replica,
            }
        )
        self.ff_steps += m
        self.ff_blocks += 1
        if bool((t.generated[dec] >= t.output[dec]).any()):
            self._complete(float(block.times[-1]))


def _shape(batch: Batch, t: RequestTable) -> tuple[int, int, int, int, int]:
    """``(decode_seqs, decode_context, prefill_tokens, prefill_context, prefill_seqs)`` of a
    formed batch: what the cost model prices."""
    b = int(batch.decode_ids.shape[0])
    pf = batch.prefill_ids
    npf = int(pf.shape[0])
    if b + npf == 0:  # pragma: no cover - prevented by check_kv_fits
        raise RuntimeError("engine step with nothing to run: the KV cache check failed")
    dec_ctx = int(_sum(batch.decode_context)) if b else 0
    if npf:
        chunks = batch.prefill_chunks
        return b, dec_ctx, int(_sum(chunks)), int(_sum(t.prefilled[pf] + chunks)), npf
    return b, dec_ctx, 0, 0, 0


def _timeout_at(env: simpy.Environment, when: float) -> simpy.Event:
    """An event that fires at exactly ``when`` (>= now), the float a run of step-by-step
    additions to the clock gives.

    SimPy fires a timeout at ``now + delay``; when some float delay lands exactly on ``when``,
    a plain timeout is used. Sometimes none does (the clock and the delay are in binades with
    different spacing, and the rounded sums step over ``when``); the event is then put on the
    queue at ``when`` itself, as ``Environment.schedule`` does with the sum (SimPy 4 keeps its
    queue as ``(time, priority, event id, event)``).
    """
    now = env.now
    d = when - now
    for _ in range(4):
        s = now + d
        if s == when:
            return env.timeout(d)
        d = math.nextafter(d, math.inf if s < when else -math.inf)
    ev = env.event()
    ev._ok = True
    ev._value = None
    heappush(env._queue, (when, NORMAL, next(env._eid), ev))
    return ev


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
        Check hook called after every engine step (turns fast-forward off: it needs every step).
    progress
        Called now and then with (requests completed, total).
    fast_forward
        Advance runs of pure decode steps in one event (:class:`Engine`); the records are the
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
    table = RequestTable(wl, capacity=1024 if streaming else None)
    fixed_k = scn.spec.k if scn.spec.policy == "fixed" else None
    table.fixed_k = fixed_k
    # steps and accepted are filled at the end (or on harvest); a step hook sees them per step
    table.derived_counts = on_step is None
    if step_sink is not None:
        records = StepColumns(1 << 16, flush=step_sink)
    else:
        # step-count guess for preallocation: output tokens / ~2 per step / batch ~ 8; grows
        cap = int(min(max(1024, wl.output.sum() // 16), 5_000_000))
        records = StepColumns(cap)
    key = stream_key(seed, "acceptance")
    acc_base = table.acc_base if streaming else counter_base(key, np.arange(n, dtype=np.int64))
    tracker = Tracker(env, n, progress)
    tracker.max_waiting = scn.limits.max_waiting
    tracker.solo = scn.server.replicas == 1
    router = Router(scn.server.router, scn.server.replicas, n, seed)
    engines = [
        Engine(
            env,
            scn,
            table,
            cost,
            key,
            records,
            replica=r,
            on_step=on_step,
            tracker=tracker,
            router=router,
            acc_base=acc_base,
            fast_forward=fast_forward,
        )
        for r in range(scn.server.replicas)
    ]
    table.on_resize.extend(e.table_resized for e in engines)
    if not streaming and len(engines) == 1:
        # one engine owns every request id (slot == id): write acceptance tapes ahead in bulk
        engines[0].tape.prefetch = TAPE_PREFETCH
    elif len(engines) == 1:
        # reusable slots: write tapes ahead by request id, copied in at first admission
        engines[0].tape.ahead(wl.output, wl.alpha, key, TAPE_PREFETCH)
    done = tracker.done
    state = {"reason": "completed", "early": False}
    max_waiting = scn.limits.max_waiting
    api_delay = scn.server.api_delay_s
    arrived = [0]

    def stop(reason: str) -> None:
        if not done.triggered:
            state["reason"] = reason
            state["early"] = True
            done.succeed()

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
                    )
                else:
                    slot = rid
                arrived[0] = rid + 1
                engines[router.choose(rid)].enqueue(slot)
                if tracker.waiting > max_waiting:
                    stop(f"waiting queue exceeded limits.max_waiting={max_waiting}")
                    return
        tracker.next_arrival = math.inf

    def deadline(max_t: float) -> Generator[simpy.Event, Any, None]:
        yield env.timeout(max_t)
        stop(f"simulated time exceeded limits.max_sim_time_s={max_t}")

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
    }
    if streaming:
        assert request_sink is not None
        table.harvest(request_sink, everything=True)
        _sink_unarrived(wl, arrived[0], request_sink)
    else:
        table.derive_counts()
        if fixed_k is not None:
            table.drafted[:] = table.steps * fixed_k
    if step_sink is not None:
        records.finish()
    steps = records.as_dict()
    if len(engines) > 1 and steps["start"].shape[0]:
        # canonical order: by end time, then replica (fast-forwarded runs of steps are recorded
        # when they end, so the raw order of simultaneous replicas depends on the setting)
        ends = np.asarray(steps["start"], dtype=np.float64) + np.asarray(steps["duration"])
        order = np.lexsort((steps["replica"], ends))
        steps = {k: v[order] for k, v in steps.items()}
    return SimRun(
        table=table,
        steps=steps,
        end_time=end if math.isfinite(end) else 0.0,
        stopped_early=bool(state["early"]),
        stop_reason=str(state["reason"]),
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
            "replica": zeros,
        }
        if wl.alpha is not None:
            recs["alpha"] = wl.alpha[c0:c1]
        sink(recs)
