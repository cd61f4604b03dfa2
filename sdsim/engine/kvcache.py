"""The paged KV cache: fixed-size blocks of ``block_size`` token slots, counted per request.

A real engine (vLLM's PagedAttention) hands out KV memory in blocks; a request holds
``ceil(tokens / block_size)`` blocks for the tokens whose keys and values are cached. The simulator
only needs the *counts* (which physical block a request holds never changes a step's duration), so
the cache is one integer per request (``REQUEST.kv_blocks``) plus the blocks in use on the replica
(``ENGINE.kv_used``). Every allocation and release goes through four functions, compiled with the
step (:mod:`sdsim.engine.step`): :func:`kv_hold` (grow a request's holding to cover some tokens,
if the blocks are free), :func:`kv_keep` (shrink it to some tokens), :func:`kv_free` (release it)
and :func:`kv_free_blocks`. A block cache shared between requests (prefix caching) extends these
four: what "free" means and what releasing a block does are theirs alone.

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
"""

from __future__ import annotations

__all__ = [
    "UNLIMITED_BLOCKS",
    "KVCache",
    "blocks_for",
    "kv_free",
    "kv_free_blocks",
    "kv_hold",
    "kv_keep",
]

from typing import Any

import numpy as np
import numpy.typing as npt

from sdsim._jit import jit

# Capacity used when the cache is unlimited: large enough never to bind, small enough that int64
# arithmetic on it never overflows.
UNLIMITED_BLOCKS = 1 << 62


# --------------------------------------------------------------------------- block accounting
# ``req`` is the request table (REQUEST records), ``e`` the replica's ENGINE record, ``r`` a slot.


@jit(inline=True)
def blocks_for(tokens: int, block_size: int) -> int:
    """Blocks that cache ``tokens`` tokens (ceiling division)."""
    return (tokens + block_size - 1) // block_size


@jit(inline=True)
def kv_free_blocks(e: Any) -> int:
    """Blocks no request holds."""
    return int(e["kv_capacity"] - e["kv_used"])


@jit(inline=True)
def kv_hold(req: Any, e: Any, r: int, tokens: int) -> bool:
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
        req[r]["kv_blocks"] = want
        e["kv_used"] += add
    return True


@jit(inline=True)
def kv_keep(req: Any, e: Any, r: int, tokens: int) -> None:
    """Shrink request ``r``'s holding to the blocks of ``tokens`` tokens, no more than it holds
    (the look-ahead slots of rejected draft tokens go back)."""
    bs = e["block_size"]
    held = req[r]["kv_blocks"]
    kept = held
    while kept > 0 and (kept - 1) * bs >= tokens:  # blocks_for(tokens), without a division
        kept -= 1
    e["kv_used"] -= held - kept
    req[r]["kv_blocks"] = kept


@jit(inline=True)
def kv_free(req: Any, e: Any, r: int) -> None:
    """Release every block request ``r`` holds (finished, preempted or aborted)."""
    e["kv_used"] -= req[r]["kv_blocks"]
    req[r]["kv_blocks"] = 0


class KVCache:
    """One replica's KV cache as Python sees it: read-only counts and a conservation check.

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
    """

    def __init__(self, state: npt.NDArray[Any], table: Any, limited: bool) -> None:
        self._e = state
        self._t = table
        self.limited = limited

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
        """Blocks held by this replica's requests (look-ahead slots of the step in hand too)."""
        return int(self._e[0]["kv_used"])

    @property
    def peak(self) -> int:
        """Largest ``used`` while a step ran."""
        return int(self._e[0]["kv_peak"])

    def check(self, ids: npt.NDArray[np.int64]) -> None:
        """Assert block conservation: ``ids`` (all requests this replica holds blocks for) hold
        exactly ``used`` blocks, and ``0 <= used <= capacity``.

        Raises
        ------
        AssertionError
            With the numbers, when the books do not balance.
        """
        held = int(self.held[ids].sum())
        if held != self.used:
            raise AssertionError(f"KV blocks: requests hold {held}, cache counts {self.used}")
        if not 0 <= self.used <= self.capacity:
            raise AssertionError(f"KV blocks: used {self.used} outside [0, {self.capacity}]")
