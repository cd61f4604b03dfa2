"""Batch formation: which requests run in the next engine step, with how many tokens and KV blocks.

Two policies, selected by ``server.scheduler``:

``vllm-v1`` (default, after vLLM's v1 scheduler)
    Running requests first, in admission order: each decoding request takes k + 1 tokens of the
    step's token budget (its draft tokens count) and k + 1 KV slots; each request still
    prefilling takes what is left of its prompt, chunked to the budget. When the KV cache cannot
    hold a running request's slots, the most recently admitted running requests are *preempted by
    recomputation* (blocks freed, back to the front of the waiting queue, prefill redone over
    prompt + generated tokens) until it fits; if even that is not enough, the request itself is
    preempted and the step stops there. Then, if nothing was preempted and the budget was not
    exhausted, waiting requests are admitted FCFS while ``max_num_seqs``, the budget and free KV
    blocks allow, their prefill chunked too.

``prefill-first`` (older engines)
    While requests wait and a sequence slot is free, a step prefills only: the chunks of running
    requests still prefilling, then admissions; decodes wait. When no prefill can go (budget, KV
    cache), the step falls back to the vLLM-v1 rules above.

All per-request work is vectorised over the running set; the only Python loop is over the
requests admitted in one step.
"""

from __future__ import annotations

__all__ = ["Batch", "form_batch"]

from collections import deque
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from sdsim.engine.kvcache import KVCache
from sdsim.engine.state import IdQueue, RequestTable

_EMPTY = np.zeros(0, dtype=np.int64)


@dataclass
class Batch:
    """One step's work.

    Attributes
    ----------
    decode_ids
        Requests verifying k + 1 tokens this step.
    prefill_ids, prefill_chunks
        Requests with a prefill chunk this step, and the chunk sizes.
    admitted
        Request ids admitted from the waiting queue this step (already appended to the running set).
    preempted
        Request ids preempted this step (already removed from the running set and put back at the
        front of the waiting queue, in admission order).
    preempted_prefilling
        How many of the preempted requests were still prefilling.
    decode_context
        ``prompt + generated`` of each decoding request before the step (aligned with
        ``decode_ids``).
    decode_blocks
        KV blocks each decoding request holds during the step (its k + 1 look-ahead slots
        included); empty when no KV cache was given.
    """

    decode_ids: npt.NDArray[np.int64]
    prefill_ids: npt.NDArray[np.int64]
    prefill_chunks: npt.NDArray[np.int64]
    admitted: list[int]
    preempted: npt.NDArray[np.int64] = field(default_factory=lambda: _EMPTY)
    preempted_prefilling: int = 0
    decode_context: npt.NDArray[np.int64] = field(default_factory=lambda: _EMPTY)
    decode_blocks: npt.NDArray[np.int64] = field(default_factory=lambda: _EMPTY)

    @property
    def num_seqs(self) -> int:
        return int(self.decode_ids.shape[0] + self.prefill_ids.shape[0])


def form_batch(
    run: npt.NDArray[np.int64],
    n_prefilling: int,
    waiting: deque[int] | IdQueue,
    table: RequestTable,
    k: int,
    max_num_seqs: int,
    token_budget: int,
    policy: str = "vllm-v1",
    kv: KVCache | None = None,
) -> tuple[Batch, npt.NDArray[np.int64]]:
    """Form the next batch, reserving its KV slots and preempting if the cache is short.

    Parameters
    ----------
    run
        Running request ids in admission order.
    n_prefilling
        How many of them are still prefilling (0 enables the all-decode fast path).
    waiting
        FCFS queue of waiting ids; admitted ids are popped from its front, preempted ones pushed
        back onto it.
    table
        Request state (preemption resets ``prefilled`` and grows ``prefill_target``).
    k
        Draft length this step.
    max_num_seqs, token_budget
        vLLM's ``max_num_seqs`` and ``max_num_batched_tokens``.
    policy
        ``"vllm-v1"`` or ``"prefill-first"`` (see the module docstring).
    kv
        The replica's KV cache; ``None`` skips KV accounting entirely.

    Returns
    -------
    batch, run
        The batch and the new running set (admitted ids appended, preempted ids removed).
    """
    if policy == "prefill-first" and waiting and run.shape[0] < max_num_seqs:
        got = _prefill_first(run, n_prefilling, waiting, table, max_num_seqs, token_budget, kv)
        if got is not None:
            return got
    per_decode = k + 1
    nrun = run.shape[0]
    budget = token_budget
    # 1. token budget: the longest prefix of the running set that fits (partial last chunk)
    sel_pf: npt.NDArray[np.bool_] | None = None  # None: every selected request is decoding
    if n_prefilling == 0:
        fit = min(nrun, budget // per_decode)
        sel = run if fit == nrun else run[:fit]
        tok: npt.NDArray[np.int64] | None = None
        budget -= fit * per_decode
        blocked = fit < nrun
    else:
        rem = table.prefill_target[run] - table.prefilled[run]
        need_tok = np.where(rem > 0, rem, per_decode)
        cum = np.cumsum(need_tok)
        full = cum <= budget
        nfull = int(full.sum()) if full.all() else int(np.argmin(full))
        budget -= int(cum[nfull - 1]) if nfull > 0 else 0
        blocked = nfull < nrun
        tok = need_tok[:nfull]
        sel_pf = rem[:nfull] > 0
        sel = run[:nfull]
        if blocked and rem[nfull] > 0 and budget > 0:
            # the first request that does not fit is prefilling: give it a partial chunk
            sel = run[: nfull + 1]
            tok = np.append(tok, budget)
            sel_pf = np.append(sel_pf, True)
            budget = 0
    # 2. KV slots for the selected requests, in admission order; preempt from the back if short
    ctx = table.prompt[sel] + table.generated[sel]
    preempted = _EMPTY
    n_pf_pre = 0
    target: npt.NDArray[np.int64] = _EMPTY
    if kv is not None:
        if sel_pf is None or tok is None:
            target = kv.blocks_for(ctx + k)
        else:
            target = kv.blocks_for(np.where(sel_pf, table.prefilled[sel] + tok, ctx + k))
        held = kv.held
        add = target - held[sel]
        total_add = int(np.add.reduce(add))
        if total_add > kv.free:
            m, j = _kv_cut(add, held[run], kv.free)
            if m < sel.shape[0]:
                sel = sel[:m]
                target = target[:m]
                ctx = ctx[:m]
                if tok is not None and sel_pf is not None:
                    tok = tok[:m]
                    sel_pf = sel_pf[:m]
            preempted = run[j:]
            n_pf_pre = _preempt(preempted, table, kv, waiting)
            run = run[:j]
            blocked = True  # vLLM v1 admits nothing in a step that preempted
        kv.grow(sel, target, total_add if sel.shape[0] == add.shape[0] else None)
    # 3. split the selection into decodes and prefill chunks
    if sel_pf is None:
        decode_ids = sel
        dec_ctx = ctx
        dec_blocks = target
        prefill_ids = _EMPTY
        chunks = _EMPTY
    else:
        assert tok is not None
        is_dec = ~sel_pf
        decode_ids = sel[is_dec]
        dec_ctx = ctx[is_dec]
        dec_blocks = target[is_dec] if kv is not None else _EMPTY
        prefill_ids = sel[sel_pf]
        chunks = tok[sel_pf]
    # 4. admissions: FCFS while sequence slots, token budget and KV blocks allow
    admitted: list[int] = []
    if not blocked and budget > 0 and waiting and run.shape[0] < max_num_seqs:
        new_chunks: list[int] = []
        nrun = run.shape[0]
        while waiting and nrun + len(admitted) < max_num_seqs and budget > 0:
            rid = waiting[0]
            left = int(table.prefill_target[rid] - table.prefilled[rid])
            c = min(left, budget)
            if kv is not None and not _reserve_one(kv, rid, int(table.prefilled[rid]) + c):
                break
            waiting.popleft()
            budget -= c
            admitted.append(rid)
            new_chunks.append(c)
        if admitted:
            adm = np.asarray(admitted, dtype=np.int64)
            prefill_ids = np.concatenate([prefill_ids, adm])
            chunks = np.concatenate([chunks, np.asarray(new_chunks, dtype=np.int64)])
            run = np.concatenate([run, adm])
    batch = Batch(
        decode_ids, prefill_ids, chunks, admitted, preempted, n_pf_pre, dec_ctx, dec_blocks
    )
    return batch, run


def _kv_cut(
    add: npt.NDArray[np.int64], held_run: npt.NDArray[np.int64], free: int
) -> tuple[int, int]:
    """Where the KV cache cuts the step (vLLM v1's allocate-or-preempt loop, vectorised).

    Parameters
    ----------
    add
        New blocks each selected request needs (a prefix of the running set, in order).
    held_run
        Blocks held by every running request, in admission order.
    free
        Free blocks.

    Returns
    -------
    m, j
        The first ``m`` selected requests run; running requests from index ``j`` on are preempted
        (``j >= m``; ``j == m`` when the cut fell inside the selection).
    """
    nrun = held_run.shape[0]
    nsel = add.shape[0]
    # d[m]: blocks the first m selected requests add; s[j]: blocks held by running[j:].
    d = np.zeros(nsel + 1, dtype=np.int64)
    np.cumsum(add, out=d[1:])
    s = np.zeros(nrun + 1, dtype=np.int64)
    s[:-1] = np.cumsum(held_run[::-1])[::-1]
    # Prefix m is feasible when d[m] <= free + s[m] (preempting everyone after it);
    # d[m] - s[m] is non-decreasing in m, so the feasible prefixes are an initial segment.
    g = d - s[: nsel + 1]
    m = int(np.searchsorted(g, free, side="right")) - 1
    if m < nsel:
        # the request at m cannot fit even after preempting everyone behind it: it goes too
        return m, m
    # all selected fit: preempt the shortest tail that frees enough (s is non-increasing)
    short = int(d[nsel]) - free
    j = int(np.searchsorted(-s[nsel:], -short, side="right")) - 1 + nsel
    return m, j


def _preempt(
    ids: npt.NDArray[np.int64],
    table: RequestTable,
    kv: KVCache,
    waiting: deque[int] | IdQueue,
) -> int:
    """Preempt ``ids`` by recomputation; returns how many of them were still prefilling."""
    if ids.shape[0] == 0:
        return 0
    kv.release(ids)
    n_pf = int((table.prefilled[ids] < table.prefill_target[ids]).sum())
    table.prefilled[ids] = 0
    # recomputation: the prefill covers the prompt and every token generated so far
    table.prefill_target[ids] = table.prompt[ids] + table.generated[ids]
    table.preemptions[ids] += 1
    # back to the front of the queue, keeping admission order (vLLM prepends each as it pops the
    # running tail, so the earliest admitted ends up first)
    waiting.extendleft(reversed(ids.tolist()))
    return n_pf


def _reserve_one(kv: KVCache, rid: int, tokens: int) -> bool:
    """Reserve blocks for ``tokens`` tokens of request ``rid`` if they are free."""
    bs = kv.block_size
    want = (tokens + bs - 1) // bs
    add = want - int(kv.held[rid])
    if add > kv.free:
        return False
    if add > 0:
        kv.held[rid] = want
        kv.used += add
        if kv.used > kv.peak:
            kv.peak = kv.used
    return True


def _prefill_first(
    run: npt.NDArray[np.int64],
    n_prefilling: int,
    waiting: deque[int] | IdQueue,
    table: RequestTable,
    max_num_seqs: int,
    token_budget: int,
    kv: KVCache | None,
) -> tuple[Batch, npt.NDArray[np.int64]] | None:
    """A prefill-only step, or ``None`` when no prefill can go (then decode by vLLM-v1 rules)."""
    budget = token_budget
    ids: list[int] = []
    chunks: list[int] = []
    kv_short = False
    if n_prefilling:
        rem = table.prefill_target[run] - table.prefilled[run]
        for rid, r in zip(run[rem > 0].tolist(), rem[rem > 0].tolist(), strict=True):
            if budget <= 0:
                break
            c = min(int(r), budget)
            if kv is not None and not _reserve_one(kv, rid, int(table.prefilled[rid]) + c):
                kv_short = True
                break
            ids.append(rid)
            chunks.append(c)
            budget -= c
    admitted: list[int] = []
    while not kv_short and waiting and run.shape[0] + len(admitted) < max_num_seqs and budget > 0:
        rid = waiting[0]
        c = min(int(table.prefill_target[rid] - table.prefilled[rid]), budget)
        if kv is not None and not _reserve_one(kv, rid, int(table.prefilled[rid]) + c):
            break
        waiting.popleft()
        budget -= c
        admitted.append(rid)
        ids.append(rid)
        chunks.append(c)
    if not ids:
        return None
    if admitted:
        run = np.concatenate([run, np.asarray(admitted, dtype=np.int64)])
    return (
        Batch(
            _EMPTY, np.asarray(ids, dtype=np.int64), np.asarray(chunks, dtype=np.int64), admitted
        ),
        run,
    )
