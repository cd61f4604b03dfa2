"""The paged KV cache and its prefix cache: fixed-size blocks of ``block_size`` token slots.

A real engine (vLLM's PagedAttention) hands out KV memory in blocks; a request holds
``ceil(tokens / block_size)`` blocks for the tokens whose keys and values are cached. Every
allocation and release goes through four functions, compiled with the step
(:mod:`sdsim.engine.step`): :func:`kv_hold` (grow a request's holding to cover some tokens, if the
blocks are free), :func:`kv_keep` (shrink it to some tokens), :func:`kv_free` (release it) and
:func:`kv_free_blocks`; admissions read the prefix cache through :func:`prefix_hits` and
:func:`take_hits`, and scheduled work commits its tokens through :func:`kv_commit`.

Capacity comes from ``server.num_gpu_blocks`` (what an engine reports at start-up; preferred), or
from :func:`sdsim.memory.derive_num_gpu_blocks` (GPU memory x utilisation - weights - activation
reserve, divided by the bytes of one block of KV for every model that keeps a cache), or is
unlimited.

Slot accounting follows vLLM:

* a request still prefilling holds blocks for the prompt tokens computed so far, and a step with a
  prefill chunk first reserves blocks for ``prefilled + chunk`` tokens;
* a decoding request holds blocks for ``prompt + generated - 1`` tokens (the newest token's keys
  and values are computed by the next step); a speculative step reserves slots for all ``k + 1``
  verify tokens (``prompt + generated + k``) before the outcome is known, and after the step
  releases the blocks the rejected draft tokens did not need.

Without prefix caching (``server.prefix_caching: false``) the cache is counts only: one integer
per request (``REQUEST.kv_blocks``) and the blocks in use on the replica (``ENGINE.kv_used``);
which physical block a request holds never changes a step's duration.

Prefix caching (vLLM's automatic prefix caching, on by default in V1)
---------------------------------------------------------------------
With ``server.prefix_caching`` the replica keeps physical blocks (:data:`~sdsim.engine.schema.
BLOCK` records: a reference count, a cache key, free-list links), a block table row per running
request (``kv`` = ``(blocks, slots, rows)``: the block records, the hash map's slots, the rows),
and a hash map from a block's key to the block caching it. The rules are vLLM V1's
(``vllm/v1/core/kv_cache_manager.py``, ``block_pool.py``, ``single_type_kv_cache_manager.py``):

* **Keys without token text.** A block's content is identified by the token sequence it ends and
  its index in it: a request's tokens are its shared prefix (``pfx_group``, the first ``pfx_len``
  tokens: a system prompt), then its conversation (``conv``: every turn of a multi-turn session
  resends the same conversation, so turn t + 1's prompt continues turn t's prompt and answer),
  or, without one, the request alone. Block ``j`` ends inside the shared prefix when
  ``(j + 1) * block_size <= pfx_len`` and is keyed ``(group, j)``; otherwise ``(conversation, j)``.
  Two requests share block j exactly when their first ``(j + 1) * block_size`` tokens agree: a hit
  never returns another prefix's block (keys are compared in full; the hash only places them).
* **Only full blocks of committed tokens are cached**, up to the tokens a request had when it
  was last scheduled (``cacheable``: a prefill chunk's end, or ``prompt + generated`` for a
  decode, never the speculative look-ahead slots), as vLLM caches at ``allocate_slots`` capped at
  ``request.num_tokens``.
* **Hits** (:func:`prefix_hits`): at admission (or re-admission after a preemption) the longest
  run of cached blocks from the first, at most ``(tokens - 1) // block_size`` blocks (the last
  token is always recomputed for its logits); with an EAGLE drafter the last hit block is
  dropped too (its hidden states are needed). Hit blocks are shared by reference count; a hit
  block that was free leaves the free list (and counts against the free blocks the admission
  needs).
* **Free blocks, least recently used first.** Blocks no request holds wait in a free list; a
  request's blocks are freed in reverse order (a prefix's tail is evicted before its head).
  Allocation takes never-used blocks first, then the free list's head; a cached block taken
  from there is evicted (``evictions``). A referenced block is never on the free list, so never
  evicted.
* **Preemption releases and re-hits.** A preempted request's blocks are freed (and stay cached);
  its re-admission looks them up like any other prefix.

What is left out of the hash map changes no hit: blocks of a conversation are entered when their
holder leaves and another turn follows, or when it is preempted (only a later turn of the same
conversation, or the request itself, can look them up, and neither runs beside it), and are
removed when its last turn leaves; shared-prefix blocks are entered when scheduled (any request
may hit them at once). The free list holds every free block in vLLM's order, cached or not, so
eviction order is vLLM's. With an unlimited cache nothing is ever evicted: free blocks outside
the hash map are reused first and the pool grows as needed.
"""

from __future__ import annotations

__all__ = [
    "UNLIMITED_BLOCKS",
    "KVCache",
    "blocks_for",
    "kv_commit",
    "kv_free",
    "kv_free_blocks",
    "kv_hold",
    "kv_keep",
    "lookup",
    "pool_room",
    "prefix_hits",
    "rebuild_map",
    "take_hits",
]

from typing import Any

import numpy as np
import numpy.typing as npt

from sdsim._jit import jit
from sdsim.engine.schema import BLOCK

# Capacity used when the cache is unlimited: large enough never to bind, small enough that int64
# arithmetic on it never overflows.
UNLIMITED_BLOCKS = 1 << 62


# --------------------------------------------------------------------------- block accounting
# ``req`` is the request table (REQUEST records), ``e`` the replica's ENGINE record, ``r`` a slot,
# ``kv`` the prefix cache's arrays ``(blocks, slots, rows)`` (tiny and untouched without caching).


@jit(callee=True)
def blocks_for(tokens: int, block_size: int) -> int:
    """Blocks that cache ``tokens`` tokens (ceiling division)."""
    return (tokens + block_size - 1) // block_size


@jit(callee=True)
def kv_free_blocks(e: Any) -> int:
    """Blocks no request holds."""
    return int(e["kv_capacity"] - e["kv_used"])


@jit(inline=True)
def kv_hold(req: Any, e: Any, kv: Any, r: int, tokens: int) -> bool:
    """Make request ``r`` hold the blocks of ``tokens`` tokens, if the blocks it lacks are free.

    Returns whether it holds them (a holding never shrinks here; nothing changes when not).
    """
    bs = e["block_size"]
    held = req[r]["kv_blocks"]
    if tokens <= held * bs:
        return True  # held already (most decode steps: no division)
    want = blocks_for(tokens, bs)
    add = want - held
    if add > kv_free_blocks(e):
        return False
    if add > 0:
        if e["caching"]:
            blocks, slots, rows = kv
            row = req[r]["kv_row"]
            if row < 0:
                row = _take_row(e, rows)
                req[r]["kv_row"] = row
            for j in range(held, want):
                b = _new_block(e, blocks, slots)
                blocks[b]["ref"] = 1
                rows[row, j] = b
        req[r]["kv_blocks"] = want
        e["kv_used"] += add
    return True


@jit(inline=True)
def kv_keep(req: Any, e: Any, kv: Any, r: int, tokens: int) -> None:
    """Shrink request ``r``'s holding to the blocks of ``tokens`` tokens, no more than it holds
    (the look-ahead slots of rejected draft tokens go back)."""
    bs = e["block_size"]
    held = req[r]["kv_blocks"]
    kept = held
    while kept > 0 and (kept - 1) * bs >= tokens:  # blocks_for(tokens), without a division
        kept -= 1
    if kept < held:
        if e["caching"]:
            # look-ahead blocks: private (hits lie in the prompt), never cached; reused first
            blocks, _, rows = kv
            row = req[r]["kv_row"]
            for j in range(held - 1, kept - 1, -1):
                b = rows[row, j]
                blocks[b]["ref"] -= 1
                _link(e, blocks, b, -1, e["lru_head"])
        e["kv_used"] -= held - kept
        req[r]["kv_blocks"] = kept


@jit(callee=True)
def kv_free(req: Any, e: Any, kv: Any, r: int, keep: bool) -> None:
    """Release every block request ``r`` holds (finished, preempted or aborted).

    With prefix caching, ``keep``: its own committed full blocks stay cached for a later lookup
    (it was preempted, or another turn of its conversation follows); otherwise its own blocks
    leave the hash map (nothing can look them up again). Shared-prefix blocks stay cached.
    """
    q = req[r]
    held = q["kv_blocks"]
    if e["caching"] and held > 0:
        blocks, slots, rows = kv
        bs = e["block_size"]
        row = q["kv_row"]
        full = q["cacheable"] // bs
        own = _own_node(q)
        unlimited = e["kv_capacity"] >= UNLIMITED_BLOCKS
        freed = 0
        for j in range(held - 1, -1, -1):  # reverse: a prefix's tail is evicted first
            b = rows[row, j]
            blocks[b]["ref"] -= 1
            if blocks[b]["ref"] > 0:
                continue
            freed += 1
            node = blocks[b]["node"]
            if node < 0:
                if keep and j < full:
                    n = _block_node(q, j, bs)
                    if lookup(blocks, slots, n, j) < 0:  # else a copy is cached already
                        _map(e, blocks, slots, b, n, j)
            elif not keep and node == own:
                _unmap(e, blocks, slots, b)
            if unlimited and blocks[b]["node"] < 0:
                _link(e, blocks, b, -1, e["lru_head"])
            else:
                _link(e, blocks, b, e["lru_tail"], -1)
        rows[row, 0] = e["row_free"]
        e["row_free"] = row
        q["kv_row"] = -1
        e["kv_used"] -= freed
    else:
        e["kv_used"] -= held
    q["kv_blocks"] = 0


@jit(inline=True)
def kv_commit(req: Any, e: Any, kv: Any, r: int, tokens: int) -> None:
    """Request ``r`` is scheduled with ``tokens`` committed tokens (a prefill chunk's end, or
    prompt + generated for a decode): its full shared-prefix blocks among them enter the cache
    now (other requests may hit them at once, as in vLLM)."""
    q = req[r]
    done = q["cacheable"]
    if tokens <= done:
        return
    q["cacheable"] = tokens
    bs = e["block_size"]
    if e["caching"] and q["pfx_len"] >= bs:
        blocks, slots, rows = kv
        row = q["kv_row"]
        n = q["pfx_group"] * 4
        for j in range(done // bs, min(tokens, q["pfx_len"]) // bs):
            b = rows[row, j]
            if blocks[b]["node"] < 0 and lookup(blocks, slots, n, j) < 0:
                _map(e, blocks, slots, b, n, j)


@jit(callee=True)
def prefix_hits(req: Any, e: Any, kv: Any, r: int) -> tuple[int, int]:
    """Cached blocks request ``r`` (waiting, holding nothing) would take at admission: the
    longest run from its first block, at most ``(prefill_target - 1) // block_size`` (and one
    fewer with an EAGLE drafter). Returns ``(hits, free)``: how many, and how many of them no
    request holds (taking those uses up free blocks)."""
    if not e["caching"]:
        return 0, 0
    blocks, slots, _ = kv
    q = req[r]
    bs = e["block_size"]
    most = (q["prefill_target"] - 1) // bs
    hits = 0
    free = 0
    last = 0
    while hits < most:
        b = lookup(blocks, slots, _block_node(q, hits, bs), hits)
        if b < 0:
            break
        last = 1 if blocks[b]["ref"] == 0 else 0
        free += last
        hits += 1
    if e["eagle"] and hits > 0:
        hits -= 1
        free -= last
    return hits, free


@jit(callee=True)
def take_hits(req: Any, e: Any, kv: Any, r: int, hits: int) -> None:
    """Request ``r`` (holding nothing) takes its first ``hits`` blocks from the cache: shared by
    reference, out of the free list when free; its prefill starts after them."""
    blocks, slots, rows = kv
    q = req[r]
    bs = e["block_size"]
    row = _take_row(e, rows)
    q["kv_row"] = row
    for j in range(hits):
        b = lookup(blocks, slots, _block_node(q, j, bs), j)
        if blocks[b]["ref"] == 0:
            _unlink(e, blocks, b)
            e["kv_used"] += 1
        blocks[b]["ref"] += 1
        rows[row, j] = b
    q["kv_blocks"] = hits
    q["prefilled"] = hits * bs
    q["cacheable"] = hits * bs


# --------------------------------------------------------------------------- keys and the map
# A key is (node, index). Nodes: shared prefix g -> 4 g; conversation c -> 4 c + 1; a request
# alone -> 4 rid + 3. Ids stay below 2**40, so the arithmetic below never leaves int64.


@jit(callee=True)
def _own_node(q: Any) -> int:
    """The node of request ``q``'s own tokens (its conversation's, or its alone)."""
    c = q["conv"]
    return int(c * 4 + 1) if c >= 0 else int(q["rid"] * 4 + 3)


@jit(callee=True)
def _block_node(q: Any, j: int, bs: int) -> int:
    """The node block ``j`` of request ``q`` ends in."""
    if (j + 1) * bs <= q["pfx_len"]:
        return int(q["pfx_group"] * 4)
    return _own_node(q)


@jit(callee=True)
def _home(node: int, idx: int, mask: int) -> int:
    """The hash map slot a key's probe starts at."""
    x = node * 2654435761 + idx * 40503
    x = x ^ (x >> 17) ^ (x >> 31)
    return int(x & mask)


@jit(callee=True)
def lookup(blocks: Any, slots: npt.NDArray[np.int64], node: int, idx: int) -> int:
    """The block cached under key ``(node, idx)``, or -1 (linear probing; keys compared in
    full)."""
    mask = slots.shape[0] - 1
    i = _home(node, idx, mask)
    while True:
        b = slots[i]
        if b < 0:
            return -1
        if blocks[b]["node"] == node and blocks[b]["idx"] == idx:
            return int(b)
        i = (i + 1) & mask


@jit(callee=True)
def _map(e: Any, blocks: Any, slots: npt.NDArray[np.int64], b: int, node: int, idx: int) -> None:
    """Cache block ``b`` under a key no block has."""
    mask = slots.shape[0] - 1
    i = _home(node, idx, mask)
    while slots[i] >= 0:
        i = (i + 1) & mask
    slots[i] = b
    blocks[b]["node"] = node
    blocks[b]["idx"] = idx
    e["mapped"] += 1


@jit(callee=True)
def _unmap(e: Any, blocks: Any, slots: npt.NDArray[np.int64], b: int) -> None:
    """Remove block ``b`` from the hash map (backward-shift deletion: no tombstones)."""
    mask = slots.shape[0] - 1
    i = _home(blocks[b]["node"], blocks[b]["idx"], mask)
    while slots[i] != b:
        i = (i + 1) & mask
    j = i
    while True:
        j = (j + 1) & mask
        c = slots[j]
        if c < 0:
            break
        h = _home(blocks[c]["node"], blocks[c]["idx"], mask)
        # c moves into the hole unless its probe starts cyclically in (i, j]
        if (i <= j and (h <= i or h > j)) or (i > j and h <= i and h > j):
            slots[i] = c
            i = j
    slots[i] = -1
    blocks[b]["node"] = -1
    e["mapped"] -= 1


# --------------------------------------------------------------------------- the free list


@jit(inline=True)
def _join(e: Any, blocks: Any, p: int, n: int) -> None:
    """Make block ``n`` follow block ``p`` in the free list (``p`` = -1: ``n`` is the head;
    ``n`` = -1: ``p`` is the tail)."""
    if p >= 0:
        blocks[p]["next"] = n
    else:
        e["lru_head"] = n
    if n >= 0:
        blocks[n]["prev"] = p
    else:
        e["lru_tail"] = p


@jit(inline=True)
def _link(e: Any, blocks: Any, b: int, p: int, n: int) -> None:
    """Put free block ``b`` between ``p`` and ``n``: ``(-1, head)`` makes it the head (reused
    first), ``(tail, -1)`` the tail."""
    _join(e, blocks, p, b)
    _join(e, blocks, b, n)


@jit(callee=True)
def _unlink(e: Any, blocks: Any, b: int) -> None:
    """Take block ``b`` out of the free list."""
    _join(e, blocks, blocks[b]["prev"], blocks[b]["next"])
    blocks[b]["prev"] = -1
    blocks[b]["next"] = -1


@jit(callee=True)
def _new_block(e: Any, blocks: Any, slots: npt.NDArray[np.int64]) -> int:
    """A free block for new tokens (the caller checked one is free): a never-used one, else the
    least recently freed (evicting what it cached). Unlimited: a free block outside the map,
    else a never-used one (nothing cached is ever evicted)."""
    h = e["lru_head"]
    if e["kv_capacity"] >= UNLIMITED_BLOCKS:
        if h >= 0 and blocks[h]["node"] < 0:
            _unlink(e, blocks, h)
            return int(h)
    elif e["fresh"] >= e["kv_capacity"]:
        _unlink(e, blocks, h)
        if blocks[h]["node"] >= 0:
            _unmap(e, blocks, slots, h)
            e["evictions"] += 1
        return int(h)
    b = e["fresh"]
    e["fresh"] = b + 1
    return int(b)


@jit(callee=True)
def _take_row(e: Any, rows: npt.NDArray[np.int64]) -> int:
    """A free row of the block table (the free rows are chained through their first entry)."""
    row = e["row_free"]
    e["row_free"] = rows[row, 0]
    return int(row)


@jit(callee=True)
def pool_room(e: Any, rows: npt.NDArray[np.int64], blocks: Any, entries: int, k: int) -> bool:
    """Whether the block records can take every never-used block a formation of up to
    ``entries`` requests at draft length ``k`` may hand out; when not, sets ``pool_need``."""
    bs = e["block_size"]
    per = blocks_for(k + 1, bs) + 1  # a decode's look-ahead (a prefill chunk: within the budget)
    bound = min(blocks_for(e["token_budget"], bs) + entries * per, entries * rows.shape[1])
    need = min(e["fresh"] + bound, e["kv_capacity"])
    if need <= blocks.shape[0]:
        return True
    e["pool_need"] = need
    return False


@jit
def rebuild_map(blocks: Any, slots: npt.NDArray[np.int64], used: int) -> int:
    """Enter every cached block among the first ``used`` into an empty map ``slots`` (after the
    pool grew). Returns how many."""
    mask = slots.shape[0] - 1
    n = 0
    for b in range(used):
        node = blocks[b]["node"]
        if node >= 0:
            i = _home(node, blocks[b]["idx"], mask)
            while slots[i] >= 0:
                i = (i + 1) & mask
            slots[i] = b
            n += 1
    return n


def _blank_blocks(n: int) -> npt.NDArray[Any]:
    out = np.zeros(n, dtype=BLOCK)
    out["node"] = -1
    out["prev"] = -1
    out["next"] = -1
    return out


def _chain_rows(rows: npt.NDArray[np.int64], first: int, then: int) -> None:
    """Chain rows ``first ..`` as free rows ending in ``then``."""
    n = rows.shape[0]
    rows[first:n, 0] = np.arange(first + 1, n + 1, dtype=np.int64)
    if n > first:
        rows[n - 1, 0] = then


class KVCache:
    """One replica's KV cache as Python sees it: counts, the prefix cache's arrays (grown here
    when the step asks for room) and a conservation check.

    The counts live in the replica's ENGINE record and the request table (the block functions
    above change them).

    Parameters
    ----------
    state
        The replica's ENGINE array (one record).
    table
        The request table (its ``kv_blocks`` are the holdings).
    limited
        Whether the capacity is a real limit (``False``: unlimited, counted only).
    caching
        Whether the prefix cache runs (``server.prefix_caching``).
    width
        Blocks one request may hold (the block table's row width; :meth:`widen` grows it).
    rows
        Rows of the block table (one per running request; :meth:`grow_rows` grows it).

    Attributes
    ----------
    blocks, slots, rows
        The prefix cache's block records, hash map and block table (``arrays``: the three, as
        the step takes them). Without caching, one-entry placeholders.
    """

    def __init__(
        self,
        state: npt.NDArray[Any],
        table: Any,
        limited: bool,
        caching: bool = False,
        width: int = 1,
        rows: int = 1,
    ) -> None:
        self._e = state
        self._t = table
        self.limited = limited
        self.caching = bool(caching)
        e = state[0]
        e["caching"] = int(self.caching)
        e["lru_head"] = e["lru_tail"] = e["row_free"] = -1
        pool = min(int(e["kv_capacity"]), 4096) if self.caching else 1
        self.blocks = _blank_blocks(pool)
        self.slots = np.full(_map_size(pool) if self.caching else 1, -1, dtype=np.int64)
        self.rows = np.zeros((max(1, rows) if self.caching else 1, max(1, width)), dtype=np.int64)
        if self.caching:
            _chain_rows(self.rows, 0, -1)
            e["row_free"] = 0

    @property
    def arrays(self) -> tuple[npt.NDArray[Any], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """``(blocks, slots, rows)``: the ``kv`` argument of the block functions."""
        return (self.blocks, self.slots, self.rows)

    # ------------------------------------------------------------------ growth
    def grow_pool(self, need: int) -> None:
        """Room for ``need`` block records (doubling; at most the capacity), the map rebuilt at
        twice their number."""
        n = self.blocks.shape[0]
        size = min(max(2 * n, need), self.capacity)
        if size <= n:
            return
        blocks = _blank_blocks(size)
        blocks[:n] = self.blocks
        slots = np.full(_map_size(size), -1, dtype=np.int64)
        fresh = int(self._e[0]["fresh"])
        mapped = rebuild_map(blocks, slots, fresh)
        assert mapped == int(self._e[0]["mapped"])
        self.blocks, self.slots = blocks, slots

    def grow_rows(self, n: int) -> None:
        """At least ``n`` rows in the block table (one per running request)."""
        if not self.caching or n <= self.rows.shape[0]:
            return
        old = self.rows
        rows = np.zeros((n, old.shape[1]), dtype=np.int64)
        rows[: old.shape[0]] = old
        e = self._e[0]
        _chain_rows(rows, old.shape[0], int(e["row_free"]))
        e["row_free"] = old.shape[0]
        self.rows = rows

    def widen(self, tokens: int) -> None:
        """Rows wide enough for a request holding ``tokens`` tokens."""
        w = (int(tokens) + self.block_size - 1) // self.block_size
        if not self.caching or w <= self.rows.shape[1]:
            return
        rows = np.zeros((self.rows.shape[0], max(w, 2 * self.rows.shape[1])), dtype=np.int64)
        rows[:, : self.rows.shape[1]] = self.rows
        self.rows = rows

    # ------------------------------------------------------------------ counts
    @property
    def capacity(self) -> int:
        """Blocks in the cache (:data:`UNLIMITED_BLOCKS` when unlimited)."""
        return int(self._e[0]["kv_capacity"])

    @property
    def total(self) -> int | None:
        """Blocks in the cache, ``None`` when unlimited."""
        return self.capacity if self.limited else None

    @property
    def block_size(self) -> int:
        """Tokens per block."""
        return int(self._e[0]["block_size"])

    @property
    def held(self) -> npt.NDArray[np.int64]:
        """Blocks held per slot (all replicas share the table; this one's requests are its own)."""
        held: npt.NDArray[np.int64] = self._t.kv_blocks
        return held

    @property
    def used(self) -> int:
        """Blocks held by this replica's requests (look-ahead slots of the step in hand too);
        a block shared by several counts once."""
        return int(self._e[0]["kv_used"])

    @property
    def peak(self) -> int:
        """Largest ``used`` while a step ran."""
        return int(self._e[0]["kv_peak"])

    @property
    def evictions(self) -> int:
        """Cached blocks reused for other tokens (prefix caching)."""
        return int(self._e[0]["evictions"])

    @property
    def cached_blocks(self) -> int:
        """Blocks in the prefix cache's hash map now."""
        return int(self._e[0]["mapped"])

    def check(self, ids: npt.NDArray[np.int64]) -> None:
        """Assert block conservation: ``ids`` (all requests this replica holds blocks for) hold
        exactly ``used`` blocks, and ``0 <= used <= capacity``. With prefix caching also: each
        block's reference count is the number of those requests holding it, ``used`` counts the
        referenced blocks, the free list holds every other block handed out (none referenced),
        and the hash map finds every cached block under its key.

        Raises
        ------
        AssertionError
            With the numbers, when the books do not balance.
        """
        held = int(self.held[ids].sum())
        e = self._e[0]
        fresh = int(e["fresh"])
        counted = int(self.blocks["ref"][:fresh].sum()) if self.caching else self.used
        if held != counted:
            raise AssertionError(f"KV blocks: requests hold {held}, cache counts {counted}")
        if not 0 <= self.used <= self.capacity:
            raise AssertionError(f"KV blocks: used {self.used} outside [0, {self.capacity}]")
        if self.caching:
            self._check_prefix(ids)

    def _check_prefix(self, ids: npt.NDArray[np.int64]) -> None:
        e = self._e[0]
        fresh = int(e["fresh"])
        blocks = self.blocks[:fresh]
        rows = self._t.kv_row[ids]
        parts = [self.rows[row, :n] for row, n in zip(rows, self.held[ids], strict=True) if n]
        owned = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        refs = np.bincount(owned, minlength=fresh)[:fresh] if fresh else np.zeros(0, np.int64)
        if not np.array_equal(refs, blocks["ref"]):
            raise AssertionError("KV blocks: reference counts differ from the requests' holdings")
        if int((blocks["ref"] > 0).sum()) != self.used:
            raise AssertionError(f"KV blocks: {self.used} counted used, not the referenced ones")
        free: list[int] = []
        b = int(e["lru_head"])
        while b >= 0 and len(free) <= fresh:
            free.append(b)
            b = int(self.blocks[b]["next"])
        if sorted(free) != np.flatnonzero(blocks["ref"] == 0).tolist():
            raise AssertionError("KV blocks: the free list is not the unreferenced blocks")
        cached = np.flatnonzero(blocks["node"] >= 0)
        if cached.shape[0] != int(e["mapped"]):
            raise AssertionError("KV blocks: the hash map's count is off")
        for c in cached.tolist():
            if lookup(self.blocks, self.slots, int(blocks[c]["node"]), int(blocks[c]["idx"])) != c:
                raise AssertionError(f"KV blocks: cached block {c} not found under its key")


def _map_size(blocks: int) -> int:
    """Hash map slots for ``blocks`` blocks: a power of two, at least twice as many."""
    n = 16
    while n < 2 * blocks:
        n *= 2
    return n
