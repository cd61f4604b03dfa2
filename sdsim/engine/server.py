"""The serving engine as SimPy processes: arrivals, and one engine loop per replica.

One engine step = batch formation (:mod:`sdsim.engine.scheduler`), a duration from the
:class:`~sdsim.costs.step.StepCostModel`, then the outcome applied to every request in the batch at
once: prefill chunks advance; a request whose prefill completes emits its first token at the end of
the step; each decoding request draws its accepted draft tokens (truncated geometric) and emits
accepted + 1 tokens, never more than it still needs.
"""

from __future__ import annotations

__all__ = ["Engine", "SimRun", "run_simulation"]

import math
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import simpy

from sdsim.acceptance import AcceptanceSampler, position_probs
from sdsim.costs.step import StepCostModel, StepShape
from sdsim.engine.scheduler import Batch, form_batch
from sdsim.engine.state import RequestTable, StepColumns
from sdsim.rng import counter_uniform, stream_key
from sdsim.scenario import Scenario
from sdsim.workload import Workload

StepHook = Callable[["Engine", Batch], None]


class Tracker:
    """Counts completions across replicas; fires ``done`` when all requests have finished."""

    def __init__(
        self, env: simpy.Environment, total: int, progress: Callable[[int, int], None] | None
    ) -> None:
        self.done = env.event()
        self.total = total
        self.completed = 0
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
    """One replica: a continuous-batching engine with speculative decoding.

    Parameters
    ----------
    env
        The SimPy environment.
    scn
        The scenario (server limits, draft length, acceptance).
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
        self.k = scn.spec.k
        self.max_num_seqs = scn.server.max_num_seqs
        self.budget = scn.server.max_num_batched_tokens
        self.block_size = scn.server.block_size
        self.policy = scn.server.scheduler
        a = scn.acceptance.alpha
        self.sampler = AcceptanceSampler(position_probs(a, len(a)) if isinstance(a, list) else None)
        self.run_ids: npt.NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        self.n_prefilling = 0
        self.waiting: deque[int] = deque()
        self.outstanding = 0  # requests routed here and not finished (for the router)
        self.completed = 0
        self._wake: simpy.Event | None = None
        self.stopped = False

    # ------------------------------------------------------------------ arrivals
    def enqueue(self, rid: int) -> None:
        """A request joins this engine's waiting queue (waking the engine if idle)."""
        self.waiting.append(rid)
        self.outstanding += 1
        self.t.replica[rid] = self.replica
        if self._wake is not None and not self._wake.triggered:
            self._wake.succeed()

    # ------------------------------------------------------------------ loop
    def loop(self) -> Generator[simpy.Event, Any, None]:
        """The engine process: form a batch, run the step, apply its outcome; idle when empty."""
        t = self.t
        env = self.env
        k = self.k
        while not self.stopped:
            if self.run_ids.shape[0] == 0 and not self.waiting:
                self._wake = env.event()
                yield self._wake
                self._wake = None
                continue
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
            )
            self.n_prefilling += len(batch.admitted)
            now = env.now
            if batch.admitted:
                adm = np.asarray(batch.admitted, dtype=np.int64)
                fresh = adm[np.isnan(t.first_scheduled[adm])]
                t.first_scheduled[fresh] = now
            dec = batch.decode_ids
            pf = batch.prefill_ids
            chunks = batch.prefill_chunks
            b = int(dec.shape[0])
            dec_ctx = int((t.prompt[dec] + t.generated[dec]).sum()) if b else 0
            pf_tokens = int(chunks.sum()) if pf.shape[0] else 0
            pf_ctx = int((t.prefilled[pf] + chunks).sum()) if pf.shape[0] else 0
            st = self.cost.step(StepShape(b, dec_ctx, k, pf_tokens, pf_ctx, int(pf.shape[0])))
            yield env.timeout(st.total)
            end = env.now

            emitted = 0
            acc_total = 0
            # prefill chunks advance; a completed prefill emits one token at the end of the step
            if pf.shape[0]:
                t.prefilled[pf] += chunks
                done_pf = pf[t.prefilled[pf] >= t.prefill_target[pf]]
                if done_pf.shape[0]:
                    self.n_prefilling -= int(done_pf.shape[0])
                    t.generated[done_pf] += 1
                    emitted += int(done_pf.shape[0])
                    ft = done_pf[np.isnan(t.first_token[done_pf])]
                    t.first_token[ft] = end
            if b:
                u = counter_uniform(self.key, dec, t.decode_counter[dec])
                t.decode_counter[dec] += 1
                acc = self.sampler.sample(u, k, None if t.alpha is None else t.alpha[dec])
                need = t.output[dec] - t.generated[dec]
                emit = np.minimum(acc + 1, need)
                t.generated[dec] += emit
                t.accepted[dec] += emit - 1
                t.drafted[dec] += k
                t.steps[dec] += 1
                emitted += int(emit.sum())
                acc_total = int(emit.sum()) - b
            # completions
            touched = self.run_ids
            fin_mask = t.generated[touched] >= t.output[touched]
            if fin_mask.any():
                fin = touched[fin_mask]
                t.finish[fin] = end
                self.run_ids = touched[~fin_mask]
                nf = int(fin.shape[0])
                self.completed += nf
                self.outstanding -= nf
                if self.tracker is not None:
                    self.tracker.finished(nf)
            kv_tokens = int((t.prompt[self.run_ids] + t.generated[self.run_ids]).sum())
            kv_blocks = -(-kv_tokens // self.block_size)
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
                    kv_blocks,
                    waiting_before,
                    k,
                    acc_total,
                    emitted,
                    0,
                    self.replica,
                )
            )
            if self.on_step is not None:
                self.on_step(self, batch)


@dataclass
class SimRun:
    """Raw outcome of a simulation: request table, step columns, stop reason."""

    table: RequestTable
    steps: dict[str, npt.NDArray[np.generic]]
    end_time: float
    stopped_early: bool
    stop_reason: str
    engines: list[Engine]


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
        Run seed (keys the acceptance stream).
    on_step
        Check hook called after every engine step.
    progress
        Called now and then with (requests completed, total).
    """
    env = simpy.Environment()
    table = RequestTable(wl)
    n = table.n
    # step-count guess for preallocation: output tokens / ~2 per step / batch ~ 8; grows if short
    cap = int(min(max(1024, wl.output.sum() // 16), 5_000_000))
    records = StepColumns(cap)
    key = stream_key(seed, "acceptance")
    tracker = Tracker(env, n, progress)
    engines = [
        Engine(env, scn, table, cost, key, records, replica=r, on_step=on_step, tracker=tracker)
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
        rr = 0
        for rid in range(n):
            dt = float(arr[rid]) - env.now
            if dt > 0:
                yield env.timeout(dt)
            if len(engines) == 1:
                eng = engines[0]
            else:
                eng = engines[rr % len(engines)]
                rr += 1
            eng.enqueue(rid)
            if len(eng.waiting) > max_waiting:
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
    return SimRun(
        table=table,
        steps=records.as_dict(),
        end_time=end if math.isfinite(end) else 0.0,
        stopped_early=bool(state["early"]),
        stop_reason=str(state["reason"]),
        engines=engines,
    )
