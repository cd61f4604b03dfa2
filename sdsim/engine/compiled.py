"""Compiled per-step kernels of the engine (numba): the common path of a step in one call.

The engine loop (:meth:`sdsim.engine.server.Engine.loop`) spends most of its time in numpy's
per-call overhead on arrays of a few dozen entries; these kernels do the same work in compiled
loops over the running set, reading and writing the request table in place:

:func:`step`
    Applies the outcome of the step that just ended (prefill chunks, acceptance draws from the
    tapes, tokens emitted, KV slots kept, completions, the step record) and forms the next batch
    under the ``vllm-v1`` rules (running requests first, chunked prefill, FCFS admissions) as
    long as no preemption is needed. A batch that needs preemption, or a ``prefill-first`` step
    with requests waiting, is left to :func:`sdsim.engine.scheduler.form_batch` (``FALLBACK``).
:func:`run_decode`
    Runs a whole sequence of decode-only steps while nothing from outside the engine can happen
    (no arrival, no deadline; the waiting queue is empty), across completions: a completion only
    shrinks the batch. Step durations come from a table of the cost model's decode-only steps
    (:class:`DecodeCostTable`, bit-identical to ``cost.step``), times from the same float
    additions SimPy makes.

Both reproduce :func:`~sdsim.engine.scheduler.form_batch` and the engine's step outcome operation
for operation (integer arithmetic, and float additions in the same order), so the records are
identical; tests/test_fast_forward.py compares them with the reference loop.

State layout (all int64 unless said): the request table's ``ints`` (rows :data:`INT_ROWS`) and
``floats`` (rows :data:`FLOAT_ROWS`); the engine's state vector ``es`` (indices below); ``rb``,
the running set and the current batch (rows ``RUN``, ``DEC``, ``DCTX``, ``DBLK``, ``PF``,
``CHUNK``); the waiting queue's buffer (``es[WHEAD]:es[WTAIL]``); the step records ``rec``
(float64, one column per step, fields in :data:`~sdsim.engine.state.STEP_FIELDS` order).
"""

from __future__ import annotations

__all__ = ["DecodeCostTable", "new_state", "run_decode", "step"]

from typing import Any

import numpy as np
import numpy.typing as npt

from sdsim._jit import jit
from sdsim.costs.step import StepCostModel, decode_step_times
from sdsim.engine.state import FLOAT_ROWS, INT_ROWS

_I64 = npt.NDArray[np.int64]
_F64 = npt.NDArray[np.float64]

# rows of the table's ints / floats
_I = {name: i for i, name in enumerate(INT_ROWS)}
PROMPT = _I["prompt"]
OUTPUT = _I["output"]
TARGET = _I["prefill_target"]
PREFILLED = _I["prefilled"]
GENERATED = _I["generated"]
DCOUNT = _I["decode_counter"]
HELD = _I["kv_blocks"]
TPOS = _I["tape_pos"]
TEND = _I["tape_end"]
PFDONE = _I["prefill_done"]
_F = {name: i for i, name in enumerate(FLOAT_ROWS)}
FIRST_SCHED = _F["first_scheduled"]
FIRST_TOKEN = _F["first_token"]
FINISH = _F["finish"]

# the engine state vector
KV_USED, KV_PEAK, WHEAD, WTAIL = 0, 1, 2, 3
NRUN, NPFING, B, NPF, NADM, KV_IN_STEP, WAIT_BEFORE, NPRE = 4, 5, 6, 7, 8, 9, 10, 11
KV_CAP, BS, MAXSEQ, BUDGET, K, REPLICA, PREFILL_FIRST = 12, 13, 14, 15, 16, 17, 18
STATE_SIZE = 19

# rows of rb
RUN, DEC, DCTX, DBLK, PF, CHUNK = 0, 1, 2, 3, 4, 5

# step() codes (low bits) and flags
FORMED, IDLE, FALLBACK, GROW, EMPTY = 0, 1, 2, 3, 4
NEED_TAPE = 8
MODE_OUTCOME, MODE_FORM = 1, 2


def new_state(
    capacity: int, block_size: int, max_num_seqs: int, budget: int, k: int, replica: int,
    prefill_first: bool,
) -> npt.NDArray[np.int64]:  # fmt: skip
    """A fresh engine state vector (see the module docstring)."""
    es = np.zeros(STATE_SIZE, dtype=np.int64)
    es[KV_CAP] = capacity
    es[BS] = block_size
    es[MAXSEQ] = max_num_seqs
    es[BUDGET] = budget
    es[K] = k
    es[REPLICA] = replica
    es[PREFILL_FIRST] = int(prefill_first)
    return es


@jit
def _complete(ti: _I64, tf: _F64, es: _I64, rb: _I64, end: float) -> int:  # pragma: no cover
    """Retire running requests that emitted their last token (finish time ``end``, blocks
    freed), keeping the others in order. Returns how many finished."""
    nrun = es[NRUN]
    j = 0
    nfin = 0
    for i in range(nrun):
        r = rb[RUN, i]
        if ti[GENERATED, r] >= ti[OUTPUT, r]:
            tf[FINISH, r] = end
            es[KV_USED] -= ti[HELD, r]
            ti[HELD, r] = 0
            nfin += 1
        else:
            rb[RUN, j] = r
            j += 1
    es[NRUN] = j
    return nfin


@jit
def _decode_outcome(  # pragma: no cover - compiled
    ti: _I64, arena: npt.NDArray[Any], es: _I64, rb: _I64, b: int, bs: int
) -> tuple[int, bool]:
    """Outcome of the batch's ``b`` decodes: each reads its acceptance draw from its tape, emits
    ``min(accepted + 1, tokens left)`` and keeps the KV blocks of what it holds now.

    Returns the tokens emitted and whether a request emitted its last one.
    """
    esum = 0
    rel = 0
    finishing = False
    for i in range(b):
        r = rb[DEC, i]
        dc = ti[DCOUNT, r]
        acc = arena[ti[TPOS, r] + dc]
        ti[DCOUNT, r] = dc + 1
        gen = ti[GENERATED, r]
        need = ti[OUTPUT, r] - gen
        emit = acc + 1
        if emit >= need:
            emit = need
            finishing = True
        ti[GENERATED, r] = gen + emit
        esum += emit
        # keep blocks for prompt + generated - 1 tokens; the rejected drafts' slots go back
        kept = (rb[DCTX, i] + emit + (bs - 2)) // bs
        rel += rb[DBLK, i] - kept
        ti[HELD, r] = kept
    es[KV_USED] -= rel
    return esum, finishing


@jit
def step(  # pragma: no cover - compiled
    ti: _I64,
    tf: _F64,
    arena: npt.NDArray[Any],
    es: _I64,
    rb: _I64,
    wbuf: _I64,
    rec: _F64,
    ri: int,
    mode: int,
    now: float,
    total: float,
    draft: float,
    verify: float,
    prefill: float,
    overhead: float,
    start: float,
) -> tuple[int, int, int, int, int, int, int, int]:
    """Outcome of the current batch (``mode & 1``: it ran from ``start`` to ``now`` with the
    given cost breakdown; its record goes to column ``ri`` of ``rec``), then the next batch
    (``mode & 2``), formed at ``now``.

    Returns ``(code, finished, admitted, decode_seqs, decode_context, prefill_tokens,
    prefill_context, prefill_seqs)``; ``code & 7`` is ``FORMED``, ``IDLE`` (nothing to run),
    ``FALLBACK`` (the batch needs :func:`form_batch`; nothing was changed for it), ``GROW``
    (``rb`` is too small; nothing was changed) or ``EMPTY``; ``code & NEED_TAPE``: an admitted
    request has no acceptance tape yet.
    """
    k = es[K]
    bs = es[BS]
    nfin = 0
    if mode & MODE_OUTCOME:
        b = es[B]
        npf = es[NPF]
        emitted = 0
        finishing = False
        for i in range(npf):
            r = rb[PF, i]
            ti[PREFILLED, r] += rb[CHUNK, i]
            if ti[PREFILLED, r] >= ti[TARGET, r]:
                es[NPFING] -= 1
                ti[GENERATED, r] += 1
                ti[PFDONE, r] += 1
                emitted += 1
                if np.isnan(tf[FIRST_TOKEN, r]):
                    tf[FIRST_TOKEN, r] = now
                if ti[GENERATED, r] >= ti[OUTPUT, r]:
                    finishing = True
        esum, fin = _decode_outcome(ti, arena, es, rb, b, bs)
        finishing = finishing or fin
        emitted += esum
        if finishing:
            nfin = _complete(ti, tf, es, rb, now)
        c = rec[:, ri]
        c[0] = start
        c[1] = total
        c[2] = b + npf
        pf_tokens = 0
        for i in range(npf):
            pf_tokens += rb[CHUNK, i]
        c[3] = pf_tokens
        c[4] = b
        c[5] = b * (k + 1)
        c[6] = draft
        c[7] = verify
        c[8] = prefill
        c[9] = overhead
        c[10] = es[KV_IN_STEP]
        c[11] = es[WAIT_BEFORE]
        c[12] = k
        c[13] = esum - b
        c[14] = emitted
        c[15] = es[NPRE]
        c[16] = es[REPLICA]
    if not mode & MODE_FORM:
        return FORMED, nfin, 0, 0, 0, 0, 0, 0
    # ---------------------------------------------------------------- batch formation (vllm-v1)
    nrun = es[NRUN]
    head = es[WHEAD]
    wlen = es[WTAIL] - head
    maxseq = es[MAXSEQ]
    if nrun == 0 and wlen == 0:
        return IDLE, nfin, 0, 0, 0, 0, 0, 0
    if es[PREFILL_FIRST] and wlen > 0 and nrun < maxseq:
        return FALLBACK, nfin, 0, 0, 0, 0, 0, 0
    room = maxseq - nrun
    if room < 0:
        room = 0
    if nrun + min(wlen, room) > rb.shape[1]:
        return GROW, nfin, 0, 0, 0, 0, 0, 0
    per_decode = k + 1
    budget = es[BUDGET]
    cap = es[KV_CAP]
    used = es[KV_USED]
    # 1. token budget: the longest prefix of the running set that fits (partial last chunk), and
    # 2. the KV blocks it adds (checked before anything is changed: a short cache preempts)
    b = 0
    npf = 0
    total_add = 0
    nsel = 0
    blocked = False
    for i in range(nrun):
        r = rb[RUN, i]
        rem = ti[TARGET, r] - ti[PREFILLED, r]
        if rem > 0:
            tok = rem
            if tok > budget:
                blocked = True
                if budget <= 0:
                    break
                tok = budget  # partial chunk for the first prefill that does not fit
            tgt = (ti[PREFILLED, r] + tok + (bs - 1)) // bs
            rb[PF, npf] = r
            rb[CHUNK, npf] = tok
            npf += 1
        else:
            if per_decode > budget:
                blocked = True
                break
            tok = per_decode
            ctx = ti[PROMPT, r] + ti[GENERATED, r]
            tgt = (ctx + k + (bs - 1)) // bs
            rb[DEC, b] = r
            rb[DCTX, b] = ctx
            rb[DBLK, b] = tgt
            b += 1
        total_add += tgt - ti[HELD, r]
        budget -= tok
        nsel += 1
        if blocked:
            break
    if total_add > cap - used:
        return FALLBACK, nfin, 0, 0, 0, 0, 0, 0
    # commit: the selected requests hold their blocks
    ib = 0
    ip = 0
    for i in range(nsel):
        r = rb[RUN, i]
        if ib < b and rb[DEC, ib] == r:
            ti[HELD, r] = rb[DBLK, ib]
            ib += 1
        else:
            ti[HELD, r] = (ti[PREFILLED, r] + rb[CHUNK, ip] + (bs - 1)) // bs
            ip += 1
    used += total_add
    if used > es[KV_PEAK]:
        es[KV_PEAK] = used
    # 4. admissions: FCFS while sequence slots, token budget and KV blocks allow
    nadm = 0
    need_tape = 0
    if not blocked and budget > 0 and wlen > 0 and nrun < maxseq:
        while head < es[WTAIL] and nrun + nadm < maxseq and budget > 0:
            r = wbuf[head]
            left = ti[TARGET, r] - ti[PREFILLED, r]
            c_ = left if left < budget else budget
            want = (ti[PREFILLED, r] + c_ + bs - 1) // bs
            add = want - ti[HELD, r]
            if add > cap - used:
                break
            if add > 0:
                ti[HELD, r] = want
                used += add
                if used > es[KV_PEAK]:
                    es[KV_PEAK] = used
            head += 1
            budget -= c_
            rb[PF, npf] = r
            rb[CHUNK, npf] = c_
            npf += 1
            rb[RUN, nrun + nadm] = r
            nadm += 1
            if np.isnan(tf[FIRST_SCHED, r]):
                tf[FIRST_SCHED, r] = now
            if ti[TEND, r] == 0:
                need_tape = NEED_TAPE
    es[KV_USED] = used
    es[WAIT_BEFORE] = wlen
    es[WHEAD] = head
    es[NRUN] = nrun + nadm
    es[NPFING] += nadm
    es[B] = b
    es[NPF] = npf
    es[NADM] = nadm
    es[NPRE] = 0
    es[KV_IN_STEP] = used
    if b + npf == 0:
        return EMPTY, nfin, nadm, 0, 0, 0, 0, 0
    dec_ctx = 0
    for i in range(b):
        dec_ctx += rb[DCTX, i]
    pf_tokens = 0
    pf_ctx = 0
    for i in range(npf):
        pf_tokens += rb[CHUNK, i]
        pf_ctx += ti[PREFILLED, rb[PF, i]] + rb[CHUNK, i]
    return FORMED | need_tape, nfin, nadm, b, dec_ctx, pf_tokens, pf_ctx, npf


@jit
def run_decode(  # pragma: no cover - compiled
    ti: _I64,
    tf: _F64,
    arena: npt.NDArray[Any],
    es: _I64,
    rb: _I64,
    wbuf: _I64,
    rec: _F64,
    ri: int,
    rmax: int,
    now: float,
    horizon: float,
    hard: float,
    total0: float,
    draft0: float,
    verify0: float,
    overhead0: float,
    ctab: _F64,
    cidx: _I64,
) -> tuple[int, int, float, int, int]:
    """Run decode-only steps from the batch just formed (every running request decoding) while
    each step ends strictly before ``horizon`` (the next arrival or deadline; a last step that
    starts before it may end after it, strictly before ``hard``), the KV cache holds
    every request's look-ahead slots, the head of the waiting queue would not be admitted,
    requests are left and the cost table has the step (``rmax`` steps at most, their records
    from column ``ri`` of ``rec``).

    The first step's cost is given; later ones are read from ``ctab`` (rows total, draft,
    verify, overhead), where ``cidx[:, b]`` = (offset, first context total, entries) for a batch
    of ``b``. Each step is applied whole (outcome, completions, record) before the next is
    formed, as the step-by-step loop does; nothing is changed for a step that is not run.

    Returns ``(steps, finished, end, missing_b, missing_context)``: the steps run (0: the first
    one does not end before ``horizon``; nothing was changed), the requests that finished, the
    end time of the last step, and the batch size and context total whose cost was missing
    (``missing_b == 0`` when none was).
    """
    k = es[K]
    bs = es[BS]
    cap = es[KV_CAP]
    maxseq = es[MAXSEQ]
    budget = es[BUDGET]
    wlen = es[WTAIL] - es[WHEAD]
    t = now
    m = 0
    nfin = 0
    miss_b = 0
    miss_ctx = 0
    last = False
    while m < rmax and not last:
        b = es[NRUN]
        if m == 0:
            d = total0
            dr = draft0
            ve = verify0
            ov = overhead0
            end = t + d
            if not end < horizon:
                if not (t < horizon < end < hard):
                    break
                last = True
        else:
            if b == 0:
                break
            # the next batch: every running request decodes (the budget held a larger batch)
            ctx_tot = 0
            add = 0
            for i in range(b):
                r = rb[RUN, i]
                ctx = ti[PROMPT, r] + ti[GENERATED, r]
                ctx_tot += ctx
                add += (ctx + k + (bs - 1)) // bs - ti[HELD, r]
            free = cap - es[KV_USED]
            if add > free:
                break  # preemption: left to the scheduler
            if wlen > 0 and b < maxseq:
                # would the head of the queue be admitted? (form_batch's rules; nothing arrives
                # or leaves the queue during the run)
                w = wbuf[es[WHEAD]]
                pre = ti[PREFILLED, w]
                left = ti[TARGET, w] - pre
                if es[PREFILL_FIRST]:
                    # a prefill-only step when its first chunk fits the blocks free now
                    c_ = left if left < budget else budget
                    if (pre + c_ + bs - 1) // bs - ti[HELD, w] <= free:
                        break
                bl = budget - b * (k + 1)
                if bl > 0:
                    c_ = left if left < bl else bl
                    if (pre + c_ + bs - 1) // bs - ti[HELD, w] <= free - add:
                        break
            if b >= cidx.shape[1]:
                miss_b = b
                miss_ctx = ctx_tot
                break
            j = ctx_tot - cidx[1, b]
            if j < 0 or j >= cidx[2, b]:
                miss_b = b
                miss_ctx = ctx_tot
                break
            j += cidx[0, b]
            d = ctab[0, j]
            end = t + d
            if not end < horizon:
                if not (t < horizon < end < hard):
                    break
                last = True
            dr = ctab[1, j]
            ve = ctab[2, j]
            ov = ctab[3, j]
            for i in range(b):
                r = rb[RUN, i]
                ctx = ti[PROMPT, r] + ti[GENERATED, r]
                tgt = (ctx + k + (bs - 1)) // bs
                rb[DEC, i] = r
                rb[DCTX, i] = ctx
                rb[DBLK, i] = tgt
                ti[HELD, r] = tgt
            used = es[KV_USED] + add
            es[KV_USED] = used
            if used > es[KV_PEAK]:
                es[KV_PEAK] = used
            es[KV_IN_STEP] = used
            es[B] = b
        # outcome (decode only)
        esum, finishing = _decode_outcome(ti, arena, es, rb, b, bs)
        c = rec[:, ri + m]
        c[0] = t
        c[1] = d
        c[2] = b
        c[3] = 0
        c[4] = b
        c[5] = b * (k + 1)
        c[6] = dr
        c[7] = ve
        c[8] = 0.0
        c[9] = ov
        c[10] = es[KV_IN_STEP]
        c[11] = wlen
        c[12] = k
        c[13] = esum - b
        c[14] = esum
        c[15] = 0
        c[16] = es[REPLICA]
        if finishing:
            nfin += _complete(ti, tf, es, rb, end)
        t = end
        m += 1
    return m, nfin, t, miss_b, miss_ctx


class DecodeCostTable:
    """The cost model's decode-only steps ``(total, draft, verify, overhead)`` at fixed k, per
    batch size over a range of context totals, for :func:`run_decode`.

    Filled lazily: a run stops where the table has no entry (exact, only shorter), and
    :meth:`extend` adds a range around the missing context total (doubling per batch size), so
    each batch size is priced a few times per simulation. The values are
    :func:`~sdsim.costs.step.decode_step_times`, bit-identical to ``cost.step``.
    """

    def __init__(self, cost: StepCostModel, k: int) -> None:
        self.cost = cost
        self.k = k
        self.ctab = np.zeros((4, 1 << 12))
        self.cidx = np.zeros((3, 1), dtype=np.int64)
        self._top = 0  # segments are appended; a grown range is written anew at the end

    def extend(self, b: int, ctx: int) -> None:
        """Price batches of ``b`` around context total ``ctx``."""
        span = b * (self.k + 1) * 16 + 256
        if b >= self.cidx.shape[1]:
            cidx = np.zeros((3, max(b + 1, 2 * self.cidx.shape[1])), dtype=np.int64)
            cidx[:, : self.cidx.shape[1]] = self.cidx
            self.cidx = cidx
        off, lo0, n0 = (int(v) for v in self.cidx[:, b])
        if n0 == 0:
            lo, vals = max(0, ctx - span), self._price(b, max(0, ctx - span), ctx + span)
        else:
            vals = self.ctab[:, off : off + n0]
            hi0 = lo0 + n0
            grow = max(span, n0)
            lo = lo0
            if ctx < lo0:
                lo = max(0, min(ctx - span, lo0 - grow))
                vals = np.concatenate([self._price(b, lo, lo0), vals], axis=1)
            if ctx >= hi0:
                hi = max(ctx + span, hi0 + grow)
                vals = np.concatenate([vals, self._price(b, hi0, hi)], axis=1)
        n = vals.shape[1]
        if self._top + n > self.ctab.shape[1]:
            size = self.ctab.shape[1]
            while size < 2 * (self._top + n):
                size *= 2
            ctab = np.zeros((4, size))
            ctab[:, : self._top] = self.ctab[:, : self._top]
            self.ctab = ctab
        self.ctab[:, self._top : self._top + n] = vals
        self.cidx[:, b] = (self._top, lo, n)
        self._top += n

    def _price(self, b: int, lo: int, hi: int) -> npt.NDArray[np.float64]:
        ctx = np.arange(lo, hi, dtype=np.int64)
        return np.array(decode_step_times(self.cost, b, ctx, self.k), dtype=np.float64)
