"""The engine's data layout, in one place: numpy structured dtypes with named fields.

The step functions (:mod:`sdsim.engine.step`, :mod:`sdsim.engine.scheduler`,
:mod:`sdsim.engine.kvcache`) work on arrays of these records, compiled by numba or run as plain
Python (``SDSIM_NO_JIT=1``); the records and metrics side reads :data:`STEP` and
:data:`STEP_FIELDS` for the step-record columns. Nothing here imports the engine itself, so
readers of records can use the layout without loading SimPy or numba.

:data:`REQUEST`
    One request slot: its record fields (arrival, first scheduled, first token, finish, lengths,
    decode steps, drafted and accepted tokens, preemptions, replica, aborted) and the engine's
    bookkeeping for it (prefill progress, KV blocks held, where its acceptance tape lies).
:data:`STEP`
    One engine step's record (one row of the steps frame).
:data:`ENGINE`
    One replica's scalars: its configuration, KV counts, running set and the step in hand.
:data:`ENTRY`
    One request's work in the step in hand (a decode of k + 1 tokens, or a prefill chunk).
:data:`BLOCK`
    One physical KV block of the prefix cache (reference count, cache key, free-list links).
:data:`PRICE`, :data:`PRICE_SPAN`
    A cached step price (the cost model's breakdown) and where a batch size's prices lie in the
    price cache (:mod:`sdsim.engine.prices`).
"""

from __future__ import annotations

__all__ = [
    "ABORT_DONE",
    "ABORT_REQUESTED",
    "BLOCK",
    "DECODE",
    "ENGINE",
    "ENTRY",
    "PREFILL",
    "PREFILL_FIRST",
    "PRICE",
    "PRICE_SPAN",
    "REQUEST",
    "REQUEST_RECORD",
    "STEP",
    "STEP_FIELDS",
    "VLLM_V1",
    "names",
]

import numpy as np

_I = np.int64
_F = np.float64

# Per-slot request state. Record fields first (see REQUEST_RECORD for their record names), then
# the engine's bookkeeping. Initial values: NaN for the times and alpha, -1 for rid, 0 otherwise.
REQUEST = np.dtype(
    [
        ("rid", _I),  # request id in the slot (-1: free)
        ("arrival", _F),
        ("first_scheduled", _F),  # first admission to a batch
        ("first_token", _F),
        ("finish", _F),  # last token, or the step boundary at which an abort took effect
        ("prompt", _I),
        ("output", _I),
        ("steps", _I),  # decode steps; also the index of the next acceptance draw
        ("drafted", _I),
        ("accepted", _I),
        ("preemptions", _I),
        ("replica", _I),
        ("aborted", _I),  # 0, ABORT_REQUESTED, or ABORT_DONE
        ("alpha", _F),  # per-request acceptance rate (NaN under per-position alpha)
        ("acc_base", np.uint64),  # per-request half of the acceptance hash (rng.counter_base)
        ("prefill_target", _I),  # the prompt; prompt + generated after a preemption
        ("prefilled", _I),
        ("generated", _I),
        ("kv_blocks", _I),  # KV blocks held now
        ("tape_pos", _I),  # acceptance tape: entry for decode step s is tape[tape_pos + s]
        ("tape_end", _I),  # 0: no tape yet
        # prefix caching (sdsim.engine.prefix)
        ("cached_tokens", _I),  # prompt tokens served from the prefix cache at first admission
        ("pfx_group", _I),  # shared prefix (system prompt) id, -1: none
        ("pfx_len", _I),  # its tokens (the first tokens of the prompt)
        ("conv", _I),  # conversation id (a multi-turn session), -1: the request alone
        ("turn", _I),  # turn of that conversation (from 0)
        ("follow", _I),  # 1: another turn of its conversation follows (its blocks stay cached)
        ("kv_row", _I),  # row of the replica's block table, -1: none
        ("cacheable", _I),  # tokens committed when last scheduled (their full blocks cacheable)
    ]
)

# The request record: record field name -> REQUEST field.
REQUEST_RECORD: dict[str, str] = {
    "rid": "rid",
    "arrival": "arrival",
    "first_scheduled": "first_scheduled",
    "first_token": "first_token",
    "finish": "finish",
    "prompt_tokens": "prompt",
    "output_tokens": "output",
    "steps": "steps",
    "drafted": "drafted",
    "accepted": "accepted",
    "preemptions": "preemptions",
    "replica": "replica",
    "aborted": "aborted",
    "cached_tokens": "cached_tokens",
}

ABORT_REQUESTED = 1
ABORT_DONE = 2

# One engine step: the steps frame's columns, in order.
STEP = np.dtype(
    [
        ("start", _F),
        ("duration", _F),
        ("num_seqs", _I),
        ("prefill_tokens", _I),
        ("decode_seqs", _I),
        ("verify_tokens", _I),  # decode_seqs x (k + 1)
        ("draft_s", _F),
        ("verify_s", _F),
        ("prefill_s", _F),
        ("overhead_s", _F),
        ("kv_blocks_used", _I),  # blocks in use while the step ran (look-ahead slots included)
        ("waiting", _I),  # requests waiting when the step was formed
        ("k", _I),
        ("accepted", _I),  # draft tokens accepted, within what each request still needed
        ("emitted", _I),
        ("preempted", _I),
        ("replica", _I),
        ("cached_tokens", _I),  # prefill tokens admissions took from the prefix cache
    ]
)
STEP_FIELDS: dict[str, type] = {name: dt.type for name, (dt, *_) in (STEP.fields or {}).items()}

# Scheduling policies (ENGINE.policy).
VLLM_V1 = 0
PREFILL_FIRST = 1

# One replica's scalars.
ENGINE = np.dtype(
    [
        # configuration
        ("replica", _I),
        ("block_size", _I),
        ("kv_capacity", _I),
        ("max_num_seqs", _I),
        ("token_budget", _I),
        ("policy", _I),
        ("max_waiting", _I),  # limits.max_waiting (a run-ahead step may not straddle a stop)
        # KV cache
        ("kv_used", _I),
        ("kv_peak", _I),  # largest kv_used while a step ran
        # requests
        ("running", _I),  # entries of the running set in use
        ("prefilling", _I),  # running requests still prefilling
        ("aborts", _I),  # abort requests not yet applied
        ("preemptions", _I),
        ("records", _I),  # step records written
        ("ahead_steps", _I),  # steps applied ahead of the SimPy clock
        ("ahead_calls", _I),  # calls that applied steps ahead
        # the step in hand (phase, batch, price)
        ("phase", _I),  # FREE, FORMED, PRICED (sdsim.engine.step)
        ("clock", _F),  # time of the last step boundary the engine has applied
        ("k", _I),
        ("entries", _I),  # ENTRY rows in use
        ("decodes", _I),
        ("prefills", _I),
        ("admitted", _I),  # the last `admitted` entries were admitted this step
        ("preempted", _I),  # the first `preempted` waiting requests were preempted this step
        ("decode_context", _I),
        ("prefill_tokens", _I),
        ("prefill_context", _I),
        ("kv_in_step", _I),
        ("waiting_before", _I),
        ("total", _F),
        ("prefill_s", _F),
        ("draft_s", _F),
        ("verify_s", _F),
        ("overhead_s", _F),
        # the outcome of the last step, for the adaptive draft length
        ("observed_accepted", _I),
        ("observed_rejected", _I),
        ("next_decodes", _I),  # running requests that would decode next, and their context
        ("next_context", _I),
        # prefix cache (sdsim.engine.prefix)
        ("caching", _I),  # 1: server.prefix_caching
        ("eagle", _I),  # 1: an EAGLE drafter (the last hit block is recomputed, as in vLLM)
        ("fresh", _I),  # blocks ever handed out (ids below it have been used)
        ("pool_need", _I),  # NO_ROOM: block records the next formation needs
        ("lru_head", _I),  # free blocks that were used, least recently freed first (-1: none)
        ("lru_tail", _I),
        ("mapped", _I),  # blocks in the hash map (cached prefix blocks)
        ("row_free", _I),  # first free row of the block table (-1: none)
        ("evictions", _I),  # cached blocks reused for other tokens
        ("hit_tokens", _I),  # prefill tokens the step's admissions took from the cache
        ("follow_done", _I),  # requests with a next turn that finished since Python last looked
    ]
)

# Kinds of ENTRY.
DECODE = 0
PREFILL = 1

# One request's work in the step in hand.
ENTRY = np.dtype(
    [
        ("rid", _I),  # the request's slot
        ("kind", _I),  # DECODE or PREFILL
        ("tokens", _I),  # k + 1, or the prefill chunk
        ("context", _I),  # tokens cached before the step (prompt + generated, or prefilled)
        ("blocks", _I),  # KV blocks it holds while the step runs
    ]
)

# A cached step price (the cost model's StepTime fields) and a batch size's span of prices.
# One physical KV block of the prefix cache.
BLOCK = np.dtype(
    [
        ("ref", _I),  # requests holding it
        ("node", _I),  # key: the token sequence it ends (sdsim.engine.prefix), -1: not cached
        ("idx", _I),  # key: its index in that sequence
        ("prev", _I),  # free list neighbours (-1: none)
        ("next", _I),
    ]
)

PRICE = np.dtype([("total", _F), ("prefill", _F), ("draft", _F), ("verify", _F), ("overhead", _F)])
PRICE_SPAN = np.dtype([("offset", _I), ("first", _I), ("count", _I)])


# Every field of these records is 8 bytes wide: record arrays are copied and split into columns
# as rows of 8-byte words (sdsim.engine.state).
_ALL = (REQUEST, STEP, ENGINE, ENTRY, PRICE, BLOCK)
if not all(d.itemsize == 8 * len(d.names or ()) for d in _ALL):
    raise TypeError("every engine record field must be 8 bytes wide")


def names(dtype: np.dtype[np.void]) -> tuple[str, ...]:
    """The field names of one of these dtypes, in order."""
    return tuple(dtype.names or ())
