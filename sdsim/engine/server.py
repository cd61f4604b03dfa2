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
"""

from __future__ import annotations

__all__ = ["Engine", "SimRun", "StepHook", "Tracker", "check_kv_fits", "run_simulation"]

import math
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import simpy

from sdsim.acceptance import AcceptanceSampler, position_probs
from sdsim.costs.step import StepCostModel, StepShape
from sdsim.engine.draft_length import AdaptiveDraftLength
from sdsim.engine.kvcache import KVCache
from sdsim.engine.router import Router
from sdsim.engine.scheduler import Batch, form_batch
from sdsim.engine.state import RequestTable, StepColumns
from sdsim.memory import check_request_fits, kv_capacity, num_gpu_blocks
from sdsim.rng import counter_base, counter_uniform_from_base, stream_key
from sdsim.scenario import Scenario
from sdsim.workload import Workload

StepHook = Callable[["Engine", Batch], None]


class Tracker:
    """State shared by the replicas: completions (fires ``done`` when all finished), the number
    waiting across replicas (for ``limits.max_waiting``), and progress reports."""

    def __init__(
        self, env: simpy.Environment, total: int, progress: Callable[[int, int], None] | None
    ) -> None:
        self.done = env.event()
        self.total = total
        self.completed = 0
        self.waiting = 0
        self.progress = progress
        self._next_report = 0
        self._every = max(1, total // 200)

    def finished(self, count: int) -> None:
        self.completed += count
        if self.progress is not None and self.completed >= self._next_report:
            self.progress(self.completed, self.total)
            self._next_report = self.completed + self._every
        if self.completed >= self.total and not self.done.triggered:
            self.done.succeed()


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
        self.kv = KVCache(num_gpu_blocks(scn), self.block_size, table.kv_blocks)
        self.kv_in_step = 0
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
        # the per-request half of the acceptance hash, computed once (same draws as
        # counter_uniform(key, id, decode_counter))
        self.acc_base = (
            acc_base
            if acc_base is not None
            else counter_base(accept_key, np.arange(table.n, dtype=np.int64))
        )
        self.run_ids: npt.NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        self.n_prefilling = 0
        self.waiting: deque[int] = deque()
        self.outstanding = 0  # requests routed here and not finished (for the router)
        self.completed = 0
        self.preemptions = 0
        self._wake: simpy.Event | None = None
        self.stopped = False

    def table_resized(self) -> None:
        """Re-bind per-request arrays after the request table grew in place (live serving)."""
        self.kv.held = self.t.kv_blocks
        self.acc_base = counter_base(self.key, np.arange(self.t.n, dtype=np.int64))

    # ------------------------------------------------------------------ arrivals
    def enqueue(self, rid: int) -> None:
        """A request joins this engine's waiting queue (waking the engine if idle)."""
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

    # ------------------------------------------------------------------ loop
    def loop(self) -> Generator[simpy.Event, Any, None]:
        """The engine process: form a batch, run the step, apply its outcome; idle when empty."""
        t = self.t
        env = self.env
        kv = self.kv
        bs = kv.block_size
        adaptive = self.adaptive
        tracker = self.tracker
        while not self.stopped:
            if self.run_ids.shape[0] == 0 and not self.waiting:
                self._wake = env.event()
                yield self._wake
                self._wake = None
                continue
            k = self.k if adaptive is None else self._choose_k()
            self.k = k
            waiting_before = len(self.waiting)
            batch, self.run_ids = form_batch(
                self.run_ids,
                self.n_prefilling,
                self.waiting,
                t,
                k,
                self.max_num_seqs,
                self.budget,
                self.policy,
                kv,
            )
            npre = int(batch.preempted.shape[0])
            self.n_prefilling += len(batch.admitted) - batch.preempted_prefilling
            self.preemptions += npre
            if tracker is not None:
                tracker.waiting += len(self.waiting) - waiting_before
            if batch.num_seqs == 0:  # pragma: no cover - prevented by check_kv_fits
                raise RuntimeError("engine step with nothing to run: the KV cache check failed")
            now = env.now
            if batch.admitted:
                adm = np.asarray(batch.admitted, dtype=np.int64)
                fresh = adm[np.isnan(t.first_scheduled[adm])]
                t.first_scheduled[fresh] = now
            dec = batch.decode_ids
            pf = batch.prefill_ids
            chunks = batch.prefill_chunks
            b = int(dec.shape[0])
            dec_ctx = int(batch.decode_context.sum()) if b else 0
            npf = int(pf.shape[0])
            pf_tokens = int(chunks.sum()) if npf else 0
            pf_ctx = int((t.prefilled[pf] + chunks).sum()) if npf else 0
            self.kv_in_step = kv.used
            st = self.cost.step(StepShape(b, dec_ctx, k, pf_tokens, pf_ctx, npf))
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
                    emitted += int(done_pf.shape[0])
                    ft = done_pf[np.isnan(t.first_token[done_pf])]
                    t.first_token[ft] = end
                    finishing = bool((t.generated[done_pf] >= t.output[done_pf]).any())
            if b:
                u = counter_uniform_from_base(self.acc_base[dec], t.decode_counter[dec])
                t.decode_counter[dec] += 1
                acc = self.sampler.sample(u, k, None if t.alpha is None else t.alpha[dec])
                if adaptive is not None:
                    adaptive.observe(k, acc)
                need = t.output[dec] - t.generated[dec]
                emit = np.minimum(acc + 1, need)
                t.generated[dec] += emit
                t.accepted[dec] += emit - 1
                t.drafted[dec] += k
                t.steps[dec] += 1
                esum = int(emit.sum())
                emitted += esum
                acc_total = esum - b
                # keep blocks for prompt + generated - 1 tokens; the rejected drafts' slots go back
                kept = (batch.decode_context + emit + (bs - 2)) // bs
                kv.used -= int(batch.decode_blocks.sum() - kept.sum())
                kv.held[dec] = kept
                if not finishing:
                    finishing = bool((emit >= need).any())
            # completions
            if finishing:
                touched = self.run_ids
                fin_mask = t.generated[touched] >= t.output[touched]
                fin = touched[fin_mask]
                t.finish[fin] = end
                kv.release(fin)
                self.run_ids = touched[~fin_mask]
                nf = int(fin.shape[0])
                self.completed += nf
                self.outstanding -= nf
                if self.router is not None:
                    self.router.outstanding[self.replica] -= nf
                if tracker is not None:
                    tracker.finished(nf)
            self.records.append(
                (
                    now,
                    st.total,
                    batch.num_seqs,
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
                    self.replica,
                )
            )
            if self.on_step is not None:
                self.on_step(self, batch)


@dataclass
class SimRun:
    """Raw outcome of a simulation: request table, step columns, stop reason, engine facts.

    ``info`` holds run-level facts the summary reports: ``kv_blocks_total`` (per replica, ``None``
    when unlimited), ``kv_peak_blocks`` (largest use on any replica), ``api_delay_s``,
    ``replicas``.
    """

    table: RequestTable
    steps: dict[str, npt.NDArray[np.generic]]
    end_time: float
    stopped_early: bool
    stop_reason: str
    engines: list[Engine]
    info: dict[str, Any] = field(default_factory=dict)


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
        Check hook called after every engine step.
    progress
        Called now and then with (requests completed, total).

    Raises
    ------
    ScenarioError
        When the KV cache cannot hold the longest request.
    """
    check_kv_fits(scn, wl)
    env = simpy.Environment()
    table = RequestTable(wl)
    n = table.n
    # step-count guess for preallocation: output tokens / ~2 per step / batch ~ 8; grows if short
    cap = int(min(max(1024, wl.output.sum() // 16), 5_000_000))
    records = StepColumns(cap)
    key = stream_key(seed, "acceptance")
    acc_base = counter_base(key, np.arange(n, dtype=np.int64))
    tracker = Tracker(env, n, progress)
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
        )
        for r in range(scn.server.replicas)
    ]
    done = tracker.done
    state = {"reason": "completed", "early": False}
    max_waiting = scn.limits.max_waiting
    api_delay = scn.server.api_delay_s

    def stop(reason: str) -> None:
        if not done.triggered:
            state["reason"] = reason
            state["early"] = True
            done.succeed()

    def arrivals() -> Generator[simpy.Event, Any, None]:
        arr = table.arrival + api_delay
        for rid in range(n):
            dt = float(arr[rid]) - env.now
            if dt > 0:
                yield env.timeout(dt)
            engines[router.choose(rid)].enqueue(rid)
            if tracker.waiting > max_waiting:
                stop(f"waiting queue exceeded limits.max_waiting={max_waiting}")
                return

    def deadline(max_t: float) -> Generator[simpy.Event, Any, None]:
        yield env.timeout(max_t)
        stop(f"simulated time exceeded limits.max_sim_time_s={max_t}")

    env.process(arrivals())
    for e in engines:
        env.process(e.loop())
    if scn.limits.max_sim_time_s is not None:
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
    return SimRun(
        table=table,
        steps=records.as_dict(),
        end_time=end if math.isfinite(end) else 0.0,
        stopped_early=bool(state["early"]),
        stop_reason=str(state["reason"]),
        engines=engines,
        info=info,
    )
