"""One engine step, defined once: form a batch, price it, apply its outcome, record it.

The functions here and in :mod:`sdsim.engine.scheduler` and :mod:`sdsim.engine.kvcache` are
plain Python over the record arrays of :mod:`sdsim.engine.schema`, compiled with numba
(:mod:`sdsim._jit`; ``SDSIM_NO_JIT=1`` runs them as the Python they are, the reference for tests
and for reading). :class:`~sdsim.engine.server.Engine` drives them from a SimPy process.

A step
------
1. **Abort**: requests whose abort was asked for leave the running set or the queue (blocks
   freed, finish time = this step boundary, marked aborted).
2. **Form** the batch (:func:`~sdsim.engine.scheduler.form_batch`): decodes of k + 1 tokens and
   prefill chunks, KV slots reserved, preemptions, admissions.
3. **Price** it: the cost model's ``step`` (in Python), or for a decode-only batch at a fixed k
   the price cache (:mod:`sdsim.engine.prices`, the same floats).
4. **Outcome** at its end (:func:`apply_outcome`): prefill chunks advance, and a request whose
   prefill completes emits a token (its first, or after a preemption the next one); each decode
   reads its accepted draft tokens from its acceptance tape (:mod:`sdsim.engine.tape`; counter-
   based draws keyed by request and decode step), emits accepted + 1 tokens, never more than it
   still needs, and keeps the KV blocks of ``prompt + generated - 1`` tokens (the rejected drafts'
   look-ahead slots go back); finished requests free their blocks; the step's record is written.

Running ahead (fast-forward)
----------------------------
:func:`advance` loops over that step ahead of the SimPy clock while nothing from outside the
engine can happen: every step it runs ends strictly before ``horizon`` (the next arrival or the
deadline), except that the last may be the step an arrival falls into (``hard``: see
:meth:`sdsim.engine.server.Engine._hard`). A step needs Python only to be priced (a batch with a
prefill chunk, or a decode batch the price cache lacks) and between steps when a draft-length
policy or a check hook must run; everything else happens inside one call, with the same integer
arithmetic and the same float additions (``start + duration``) SimPy's clock would make, so the
records are those of a step-by-step run.
"""

from __future__ import annotations

__all__ = [
    "AHEAD",
    "ENDED",
    "FORMED",
    "FREE",
    "LOG_FULL",
    "NEED_TAPE",
    "ONE_STEP",
    "PAST",
    "PENDING",
    "PRICE",
    "PRICED",
    "SOURCES",
    "STEPPED",
    "TABLE",
    "UNPRICED",
    "advance",
    "apply_outcome",
]

import hashlib
import math
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from sdsim._jit import jit
from sdsim.engine import scheduler
from sdsim.engine.kvcache import kv_free, kv_keep
from sdsim.engine.prices import cached_price
from sdsim.engine.schema import ABORT_DONE, ABORT_REQUESTED, DECODE
from sdsim.engine.state import waiting_count

_I64 = npt.NDArray[np.int64]

# ENGINE.phase: the step in hand
FREE = 0  # none: the next call forms one
FORMED = 1  # formed, not priced
PRICED = 2  # formed and priced, not applied

# advance() flags
PRICE = 1  # the arguments price the formed batch
ENDED = 2  # the priced step ran on the SimPy clock and ended at `now`: apply its outcome
AHEAD = 4  # run steps ahead of the clock (before `horizon`)
ONE_STEP = 8  # return after each outcome (a draft-length policy or a hook runs between steps)
TABLE = 16  # price decode-only batches from the price cache

# advance() results (low bits) and flags
CODE = 15
IDLE = scheduler.IDLE  # nothing running or waiting (at `clock`)
NO_ROOM = scheduler.NO_ROOM  # an array needs more room; call again once it has it
EMPTY = scheduler.EMPTY  # requests are present but none could be scheduled
UNPRICED = 4  # a batch was formed at `clock`; its shape is returned for pricing
PENDING = 5  # the priced batch formed at `clock` must run on the SimPy clock (`total` long)
STEPPED = 6  # ONE_STEP: a step's outcome was applied at `clock`; nothing is formed
PAST = 7  # a step that an arrival falls into was applied at `clock`; nothing is formed
LOG_FULL = 8  # ENDED: the step log has no room for the record; nothing was applied
NEED_TAPE = 16  # an admitted request has no acceptance tape yet


@jit(callee=True)
def apply_outcome(
    req: Any, e: Any, kv: Any, run: _I64, batch: Any, tape: _I64, log: Any, end: float
) -> int:
    """Apply the outcome of the step in hand at its ``end`` and write its record (the log has
    room). Returns how many requests finished."""
    k = e["k"]
    prefill_emitted = 0
    decode_emitted = 0
    observed = 0
    rejected = 0
    finishing = False
    for i in range(e["entries"]):
        s = batch[i]
        r = s["rid"]
        q = req[r]
        if s["kind"] == DECODE:
            accepted = min(tape[q["tape_pos"] + q["steps"]], k)
            q["steps"] += 1
            q["drafted"] += k
            observed += accepted
            if accepted < k:
                rejected += 1
            need = q["output"] - q["generated"]
            emit = min(accepted + 1, need)
            q["generated"] += emit
            q["accepted"] += emit - 1
            decode_emitted += emit
            # the newest token's keys and values are written by the next step
            kv_keep(req, e, kv, r, s["context"] + emit - 1)
            if emit == need:
                finishing = True
        else:
            q["prefilled"] += s["tokens"]
            if q["prefilled"] >= q["prefill_target"]:
                e["prefilling"] -= 1
                q["generated"] += 1
                prefill_emitted += 1
                if math.isnan(q["first_token"]):
                    q["first_token"] = end
                if q["generated"] >= q["output"]:
                    finishing = True
    e["observed_accepted"] = observed
    e["observed_rejected"] = rejected
    finished = _complete(req, e, kv, run, end) if finishing else 0
    _record(e, log, prefill_emitted + decode_emitted, decode_emitted - e["decodes"])
    e["phase"] = FREE
    e["clock"] = end
    return finished


@jit(callee=True)
def _record(e: Any, log: Any, emitted: int, accepted: int) -> None:
    """Write the record of the step in hand (it started at ``e["clock"]``)."""
    row = log[e["records"]]
    row["start"] = e["clock"]
    row["duration"] = e["total"]
    row["num_seqs"] = e["decodes"] + e["prefills"]
    row["prefill_tokens"] = e["prefill_tokens"]
    row["decode_seqs"] = e["decodes"]
    row["verify_tokens"] = e["decodes"] * (e["k"] + 1)
    row["draft_s"] = e["draft_s"]
    row["verify_s"] = e["verify_s"]
    row["prefill_s"] = e["prefill_s"]
    row["overhead_s"] = e["overhead_s"]
    row["kv_blocks_used"] = e["kv_in_step"]
    row["waiting"] = e["waiting_before"]
    row["k"] = e["k"]
    row["accepted"] = accepted
    row["emitted"] = emitted
    row["preempted"] = e["preempted"]
    row["replica"] = e["replica"]
    row["cached_tokens"] = e["hit_tokens"]
    e["records"] += 1


@jit(callee=True)
def _complete(req: Any, e: Any, kv: Any, run: _I64, end: float) -> int:
    """Retire the running requests that emitted their last token (finish time ``end``, blocks
    freed: cached for the next turn when one follows), keeping the others in order. Returns how
    many finished."""
    kept = 0
    finished = 0
    for i in range(e["running"]):
        r = run[i]
        q = req[r]
        if q["generated"] >= q["output"]:
            q["finish"] = end
            kv_free(req, e, kv, r, q["follow"] > 0)
            if q["follow"] > 0:
                e["follow_done"] += 1
            finished += 1
            if q["aborted"] == ABORT_REQUESTED:  # it finished before the abort took effect
                q["aborted"] = 0
                e["aborts"] -= 1
        else:
            run[kept] = r
            kept += 1
    e["running"] = kept
    return finished


@jit(callee=True)
def _drop_aborted(req: Any, e: Any, kv: Any, run: _I64, queue: _I64, now: float) -> int:
    """Requests whose abort was asked for leave the running set and the queue at ``now``: blocks
    freed, finish time ``now``, marked aborted. Returns how many left."""
    left = 0
    kept = 0
    for i in range(e["running"]):
        r = run[i]
        q = req[r]
        if q["aborted"] == ABORT_REQUESTED:
            if q["prefilled"] < q["prefill_target"]:
                e["prefilling"] -= 1
            kv_free(req, e, kv, r, False)
            q["finish"] = now
            q["aborted"] = ABORT_DONE
            left += 1
        else:
            run[kept] = r
            kept += 1
    e["running"] = kept
    head = queue[0]
    kept = head
    for i in range(head, queue[1]):
        r = queue[i]
        q = req[r]
        if q["aborted"] == ABORT_REQUESTED:
            q["finish"] = now
            q["aborted"] = ABORT_DONE
            left += 1
        else:
            queue[kept] = r
            kept += 1
    queue[1] = kept
    e["aborts"] -= left
    return left


@jit(callee=True)
def _decoding(req: Any, e: Any, run: _I64) -> None:
    """Count the running requests that would decode next, and their context (what a draft-length
    policy reads before the next batch is formed)."""
    n = 0
    context = 0
    for i in range(e["running"]):
        q = req[run[i]]
        if q["prefilled"] >= q["prefill_target"]:
            n += 1
            context += q["prompt"] + q["generated"]
    e["next_decodes"] = n
    e["next_context"] = context


@jit(callee=True)
def _advance(
    arrays: Any,
    now: float,
    horizon: float,
    hard: float,
    flags: int,
    k: int,
    price: tuple[float, float, float, float, float],
) -> tuple[int, float, float, int, int, int, int, int, int, int]:
    """The body of :func:`advance` (compiled with it)."""
    req, eng, kv, run, batch, queue, tape, log, prices, spans = arrays
    total, prefill, draft, verify, overhead = price
    e = eng[0]
    finished = 0
    waiting0 = waiting_count(queue)
    ahead = 0
    code = -1
    if flags & PRICE:
        _set_price(e, total, prefill, draft, verify, overhead)
    if flags & ENDED:
        if e["records"] >= log.shape[0]:
            code = LOG_FULL
        else:
            finished += apply_outcome(req, e, kv, run, batch, tape, log, now)
            if flags & ONE_STEP or e["follow_done"] > 0:
                code = STEPPED
    if code < 0 and e["phase"] == FREE and now > e["clock"]:
        e["clock"] = now
    while code < 0:
        if e["phase"] == FREE:
            if e["aborts"] > 0:
                finished += _drop_aborted(req, e, kv, run, queue, e["clock"])
            formed = scheduler.form_batch(req, e, kv, run, batch, queue, k, e["clock"])
            if formed != scheduler.FORMED:
                code = formed
                break
            e["phase"] = FORMED
            if flags & TABLE and e["prefills"] == 0:
                j = cached_price(prices, spans, e["decodes"], e["decode_context"])
                if j >= 0:
                    p = prices[j]
                    _set_price(e, p["total"], p["prefill"], p["draft"], p["verify"], p["overhead"])
        if e["phase"] == FORMED:
            code = UNPRICED
            break
        # a priced step: run it ahead when it ends before the horizon, or is the step the next
        # arrival falls into and nothing at that arrival can see it run early
        start = e["clock"]
        end = start + e["total"]
        inside = end < horizon
        runs = inside or (start < horizon < end < hard and waiting_count(queue) < e["max_waiting"])
        if not flags & AHEAD or not runs or e["records"] >= log.shape[0]:
            code = PENDING  # on the SimPy clock (a full log is emptied at its end)
            break
        finished += apply_outcome(req, e, kv, run, batch, tape, log, end)
        ahead += 1
        if not inside:
            code = PAST
        elif flags & ONE_STEP or e["follow_done"] > 0:
            code = STEPPED  # (a finished turn's next turn must be scheduled first)
    if ahead:
        e["ahead_steps"] += ahead
        e["ahead_calls"] += 1
    if flags & ONE_STEP and (code == STEPPED or code == PAST):
        _decoding(req, e, run)
    if code == UNPRICED and e["admitted"] > 0:
        n = e["running"]
        for i in range(n - e["admitted"], n):
            if req[run[i]]["tape_end"] == 0:
                code |= NEED_TAPE
                break
    return (
        code,
        e["clock"],
        e["total"],
        finished,
        waiting_count(queue) - waiting0,
        e["decodes"],
        e["decode_context"],
        e["prefill_tokens"],
        e["prefill_context"],
        e["prefills"],
    )


@jit(callee=True)
def _set_price(
    e: Any, total: float, prefill: float, draft: float, verify: float, overhead: float
) -> None:
    """Price the formed batch."""
    e["total"] = total
    e["prefill_s"] = prefill
    e["draft_s"] = draft
    e["verify_s"] = verify
    e["overhead_s"] = overhead
    e["phase"] = PRICED


# The engine modules the compiled step's functions and constants come from.
SOURCES = ("step.py", "scheduler.py", "kvcache.py", "state.py", "prices.py", "schema.py")


def _sources_key() -> str:
    """SHA-256 of :data:`SOURCES`: numba's on-disk cache checks only the file that defines the
    cached function."""
    here = Path(__file__).parent
    h = hashlib.sha256()
    for name in SOURCES:
        h.update((here / name).read_bytes())
    return h.hexdigest()


def _entry(sources: str) -> Any:
    """The compiled step's entry point (cached), keyed on ``sources`` (:func:`_sources_key`):
    a closure variable is part of numba's cache key, so editing any module the step is built
    from recompiles it."""

    @jit
    def advance(
        arrays: Any,
        now: float,
        horizon: float,
        hard: float,
        flags: int,
        k: int,
        price: tuple[float, float, float, float, float],
    ) -> tuple[int, float, float, int, int, int, int, int, int, int]:
        """Take the replica's step in hand as far as it can go without Python.

        ``arrays`` is the replica's state, a plain tuple (numba dispatches a plain tuple of
        arrays as fast as separate arguments; a named tuple costs ~1 us more per call):
        ``(req, eng, kv, run, batch, queue, tape, log, prices, spans)``, the request table, the
        ENGINE array (one record), the KV cache's arrays (``(blocks, slots, rows)``,
        :mod:`sdsim.engine.kvcache`), the running set, the ENTRY array, the waiting queue, the
        acceptance tape arena, the step log (STEP records), and the price cache (PRICE rows,
        PRICE_SPAN per batch size). ``now`` is the SimPy clock; ``horizon`` and ``hard`` bound
        the steps run ahead (see the module docstring); ``k`` is the draft length of a batch
        formed in this call; ``price`` is ``(total, prefill, draft, verify, overhead)`` (a
        :class:`~sdsim.costs.step.StepTime`'s fields), read when ``flags & PRICE``.

        Flags: :data:`PRICE` (the formed batch costs this), :data:`ENDED` (the priced step ran
        on the SimPy clock and ended at ``now``: apply it), :data:`AHEAD` (run steps ahead of
        the clock), :data:`ONE_STEP` (return after each outcome), :data:`TABLE` (decode-only
        batches are priced from the cache).

        Returns ``(code, clock, total, finished, waiting_change, decode_seqs, decode_context,
        prefill_tokens, prefill_context, prefill_seqs)``: what the replica needs next (``code
        & CODE``: :data:`UNPRICED`, :data:`PENDING`, :data:`STEPPED`, :data:`PAST`,
        :data:`IDLE`, :data:`NO_ROOM`, :data:`LOG_FULL`, :data:`EMPTY`; ``code & NEED_TAPE``),
        the time of its last step boundary, the price of a :data:`PENDING` step, the requests
        that finished or were aborted in this call, how much the waiting queue grew, and the
        shape of an :data:`UNPRICED` batch.
        """
        _ = sources  # the closure variable in the cache key
        return _advance(arrays, now, horizon, hard, flags, k, price)

    return advance


# The step (see _advance), compiled and cached as one function.
advance = _entry(_sources_key())
