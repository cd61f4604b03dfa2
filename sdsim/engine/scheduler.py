"""Batch formation: which requests run in the next engine step, with how many tokens and KV blocks.

One function, :func:`form_batch`, compiled with the rest of the step (:mod:`sdsim.engine.step`)
or run as plain Python (``SDSIM_NO_JIT=1``). It writes the step in hand as ENTRY records (one per
scheduled request: a decode of k + 1 tokens or a prefill chunk) and updates the running set, the
waiting queue and the KV holdings. Two policies, ``server.scheduler``:

``vllm-v1`` (default, after vLLM's v1 scheduler)
    Running requests first, in admission order: each decoding request takes k + 1 tokens of the
    step's token budget (its draft tokens count) and KV slots for ``prompt + generated + k``
    tokens; each request still prefilling takes what is left of its prompt, chunked to the
    budget. When the KV cache cannot hold a running request's slots, the most recently admitted
    running requests are *preempted by recomputation* (blocks freed, back to the front of the
    waiting queue, prefill redone over prompt + generated tokens) until it fits; if even that is
    not enough, the request itself is preempted and the step stops there. Then, if nothing was
    preempted and the budget was not exhausted, waiting requests are admitted FCFS while
    ``max_num_seqs``, the budget and free KV blocks allow, their prefill chunked too.

``prefill-first`` (older engines)
    While requests wait and a sequence slot is free, a step prefills only: the chunks of running
    requests still prefilling, then admissions; decodes wait. When no prefill can go (budget, KV
    cache), the step falls back to the vLLM-v1 rules above.

A new policy is one more branch of :func:`form_batch` built from the same parts
(:func:`_schedule_running`, :func:`_admit`, :func:`_preempt_last`, and the KV functions of
:mod:`sdsim.engine.kvcache`).

Arguments of the functions: ``req`` the request table (REQUEST records), ``e`` the replica's ENGINE
record, ``run`` the running set (slots in admission order, ``e["running"]`` of them), ``batch``
the ENTRY records of the step in hand, ``queue`` the waiting queue's buffer
(:class:`~sdsim.engine.state.IdQueue`).
"""

from __future__ import annotations

__all__ = ["EMPTY", "FORMED", "IDLE", "NO_ROOM", "Batch", "form_batch"]

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from sdsim._jit import jit
from sdsim.engine.kvcache import (
    blocks_for,
    kv_commit,
    kv_free,
    kv_free_blocks,
    kv_hold,
    pool_room,
    prefix_hits,
    take_hits,
)
from sdsim.engine.schema import DECODE, PREFILL, PREFILL_FIRST
from sdsim.engine.state import front_room, pop_front, push_front, waiting_count, waiting_front

_I64 = npt.NDArray[np.int64]

# form_batch results
FORMED = 0  # a batch is in hand
IDLE = 1  # nothing running or waiting
NO_ROOM = 2  # the running set, the batch or the queue's front needs more room (nothing changed)
EMPTY = 3  # requests are present but none could be scheduled (the KV cache check failed)


@jit(callee=True)
def form_batch(
    req: Any, e: Any, kv: Any, run: _I64, batch: Any, queue: _I64, k: int, now: float
) -> int:
    """Form the next batch at ``now`` with draft length ``k`` (see the module docstring).

    Returns :data:`FORMED`, :data:`IDLE`, :data:`NO_ROOM` or :data:`EMPTY`.
    """
    nrun = e["running"]
    waiting = waiting_count(queue)
    if nrun == 0 and waiting == 0:
        return IDLE
    # room for every admission the sequence cap and the token budget allow (an admission takes
    # at least one token), and for preempting every running request
    most = nrun + min(waiting, max(e["max_num_seqs"] - nrun, 0), e["token_budget"])
    if most > run.shape[0] or most > batch.shape[0] or front_room(queue) < nrun:
        return NO_ROOM
    if e["caching"] and not pool_room(e, kv[2], kv[0], most, k):
        return NO_ROOM
    e["k"] = k
    e["waiting_before"] = waiting
    e["entries"] = 0
    e["admitted"] = 0
    e["preempted"] = 0
    e["hit_tokens"] = 0
    prefill_only = False
    if e["policy"] == PREFILL_FIRST and waiting > 0 and nrun < e["max_num_seqs"]:
        prefill_only = _prefill_only(req, e, kv, run, batch, queue, now)
    if not prefill_only:
        budget, blocked = _schedule_running(req, e, kv, run, batch, queue, k)
        if not blocked and budget > 0:
            _admit(req, e, kv, run, batch, queue, budget, now)
    e["kv_in_step"] = e["kv_used"]
    if e["kv_used"] > e["kv_peak"]:
        e["kv_peak"] = e["kv_used"]
    _tally(e, batch)
    return FORMED if e["entries"] > 0 else EMPTY


@jit(callee=True)
def _tally(e: Any, batch: Any) -> None:
    """The step's shape, summed over its entries (what the cost model prices)."""
    decodes = prefills = decode_context = prefill_tokens = prefill_context = 0
    for i in range(e["entries"]):
        s = batch[i]
        if s["kind"] == DECODE:
            decodes += 1
            decode_context += s["context"]
        else:
            prefills += 1
            prefill_tokens += s["tokens"]
            prefill_context += s["context"] + s["tokens"]
    e["decodes"] = decodes
    e["prefills"] = prefills
    e["decode_context"] = decode_context
    e["prefill_tokens"] = prefill_tokens
    e["prefill_context"] = prefill_context


@jit(inline=True)
def _add_entry(
    e: Any, batch: Any, r: int, kind: int, tokens: int, context: int, blocks: int
) -> None:
    """Append request ``r``'s work to the step in hand."""
    s = batch[e["entries"]]
    s["rid"] = r
    s["kind"] = kind
    s["tokens"] = tokens
    s["context"] = context
    s["blocks"] = blocks
    e["entries"] += 1


@jit(callee=True)
def _schedule_running(
    req: Any, e: Any, kv: Any, run: _I64, batch: Any, queue: _I64, k: int
) -> tuple[int, bool]:
    """vLLM v1's pass over the running set: the longest prefix that fits the token budget (the
    first prefill that does not fit gets a partial chunk), each request's KV slots reserved in
    admission order, preempting from the back when the cache is short.

    Returns the budget left and whether admissions are blocked (the budget ran out before the
    running set did, or a request was preempted: vLLM v1 admits nothing in such a step).
    """
    budget = e["token_budget"]
    blocked = False
    i = 0
    while i < e["running"]:
        r = run[i]
        q = req[r]
        left = q["prefill_target"] - q["prefilled"]
        if left > 0:
            if budget <= 0:
                blocked = True
                break
            kind = PREFILL
            tokens = min(left, budget)
            cached = q["prefilled"]
            slots = cached + tokens
            committed = slots
        else:
            if k + 1 > budget:
                blocked = True
                break
            kind = DECODE
            tokens = k + 1
            cached = q["prompt"] + q["generated"]
            slots = cached + k  # all k + 1 verify tokens, the newest token's included
            committed = cached  # the draft tokens are not committed
        while not kv_hold(req, e, kv, r, slots):
            _preempt_last(req, e, kv, run, queue)
            blocked = True
            if e["running"] == i:
                break  # request i itself could not fit and was preempted
        if i == e["running"]:
            break
        kv_commit(req, e, kv, r, committed)
        _add_entry(e, batch, r, kind, tokens, cached, q["kv_blocks"])
        budget -= tokens
        i += 1
        if tokens < left:
            blocked = True  # a partial chunk: the budget is spent
            break
    return budget, blocked


@jit(callee=True)
def _preempt_last(req: Any, e: Any, kv: Any, run: _I64, queue: _I64) -> None:
    """Preempt the most recently admitted running request by recomputation: its blocks are
    freed (cached ones stay cached, for it to hit again) and it goes back to the front of the
    queue (preempted in turn from the back, the earliest admitted ends up first, as in vLLM), to
    prefill prompt + generated tokens again."""
    n = e["running"] - 1
    r = run[n]
    q = req[r]
    if q["prefilled"] < q["prefill_target"]:
        e["prefilling"] -= 1
    kv_free(req, e, kv, r, True)
    q["prefilled"] = 0
    q["cacheable"] = 0
    q["prefill_target"] = q["prompt"] + q["generated"]
    q["preemptions"] += 1
    push_front(queue, r)
    e["running"] = n
    e["preempted"] += 1
    e["preemptions"] += 1


@jit(callee=True)
def _admit(
    req: Any, e: Any, kv: Any, run: _I64, batch: Any, queue: _I64, budget: int, now: float
) -> int:
    """FCFS admissions while a sequence slot, token budget and the KV blocks of the first chunk
    are free; a request's cached prefix blocks (prefix caching) are taken first and its prefill
    starts after them. Returns the budget left."""
    while waiting_count(queue) > 0 and e["running"] < e["max_num_seqs"] and budget > 0:
        r = waiting_front(queue)
        q = req[r]
        hits, free_hits = prefix_hits(req, e, kv, r)
        start = hits * e["block_size"]
        tokens = min(q["prefill_target"] - start, budget)
        if hits > 0:
            # the new blocks and the free hit blocks both come out of the free blocks
            need = blocks_for(start + tokens, e["block_size"]) - hits + free_hits
            if need > kv_free_blocks(e):
                break
            take_hits(req, e, kv, r, hits)
            e["hit_tokens"] += start
            if math.isnan(q["first_scheduled"]):
                q["cached_tokens"] = start
        if not kv_hold(req, e, kv, r, q["prefilled"] + tokens):
            break
        kv_commit(req, e, kv, r, q["prefilled"] + tokens)
        pop_front(queue)
        run[e["running"]] = r
        e["running"] += 1
        e["prefilling"] += 1
        e["admitted"] += 1
        _add_entry(e, batch, r, PREFILL, tokens, q["prefilled"], q["kv_blocks"])
        budget -= tokens
        if math.isnan(q["first_scheduled"]):
            q["first_scheduled"] = now
    return budget


@jit(callee=True)
def _prefill_only(
    req: Any, e: Any, kv: Any, run: _I64, batch: Any, queue: _I64, now: float
) -> bool:
    """The prefill-first policy's step: chunks of the running requests still prefilling, then
    admissions, within the budget and the free blocks. Returns whether any prefill was scheduled
    (nothing was changed when not)."""
    budget = e["token_budget"]
    short = False
    if e["prefilling"] > 0:
        for i in range(e["running"]):
            r = run[i]
            q = req[r]
            left = q["prefill_target"] - q["prefilled"]
            if left <= 0:
                continue
            if budget <= 0:
                break
            tokens = min(left, budget)
            if not kv_hold(req, e, kv, r, q["prefilled"] + tokens):
                short = True
                break
            kv_commit(req, e, kv, r, q["prefilled"] + tokens)
            _add_entry(e, batch, r, PREFILL, tokens, q["prefilled"], q["kv_blocks"])
            budget -= tokens
    if not short:
        _admit(req, e, kv, run, batch, queue, budget, now)
    return bool(e["entries"] > 0)


@dataclass
class Batch:
    """One step's work, as check hooks see it (copies; see ``Engine.batch_view``).

    Attributes
    ----------
    decode_ids
        Requests verifying k + 1 tokens this step, in admission order.
    prefill_ids, prefill_chunks
        Requests with a prefill chunk this step (running ones, then admitted ones), and the chunk
        sizes.
    admitted
        Requests admitted from the waiting queue this step (in the running set now).
    preempted
        Requests preempted this step (back at the front of the waiting queue, in admission order).
    decode_context
        ``prompt + generated`` of each decoding request before the step.
    decode_blocks
        KV blocks each decoding request held during the step (its k + 1 look-ahead slots
        included).
    """

    decode_ids: _I64
    prefill_ids: _I64
    prefill_chunks: _I64
    admitted: list[int]
    preempted: _I64
    decode_context: _I64
    decode_blocks: _I64

    @property
    def num_seqs(self) -> int:
        return int(self.decode_ids.shape[0] + self.prefill_ids.shape[0])
