"""The paged KV cache: fixed-size blocks of ``block_size`` token slots, counted per request.

A real engine (vLLM's PagedAttention) hands out KV memory in blocks; a request holds
``ceil(tokens / block_size)`` blocks for the tokens whose keys and values are cached. The simulator
only needs the *counts* (which physical block a request holds never changes a step's duration), so
the cache is one integer per request (``held``, shared by all replicas because a request lives on
one replica at a time) plus the number of blocks in use on this replica. All updates are
vectorised over the ids in a batch.

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

__all__ = ["UNLIMITED_BLOCKS", "KVCache"]

import numpy as np
import numpy.typing as npt

# Capacity used when the cache is unlimited: large enough never to bind, small enough that int64
# arithmetic on it never overflows.
UNLIMITED_BLOCKS = 1 << 62


class KVCache:
    """Block counts of one replica's KV cache.

    Parameters
    ----------
    total_blocks
        Capacity in blocks; ``None`` for unlimited (accounting still runs, nothing is refused).
    block_size
        Tokens per block.
    held
        Blocks held per request id (shared array; this replica's requests are the only ones it
        touches).
    counts
        Where ``used`` and ``peak`` are kept (2 int64 entries); a fresh array when ``None``.

    """

    def __init__(
        self,
        total_blocks: int | None,
        block_size: int,
        held: npt.NDArray[np.int64],
        counts: npt.NDArray[np.int64] | None = None,
    ) -> None:
        if total_blocks is not None and total_blocks < 1:
            raise ValueError(f"total_blocks must be >= 1 or None, got {total_blocks}")
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.total = total_blocks
        self.limited = total_blocks is not None
        self.capacity = total_blocks if total_blocks is not None else UNLIMITED_BLOCKS
        self.block_size = int(block_size)
        self.held = held
        # used and peak live in a 2-entry int64 array (a view of the engine's state array, which
        # compiled kernels update)
        self.counts = np.zeros(2, dtype=np.int64) if counts is None else counts
        self.counts[:] = 0

    @property
    def used(self) -> int:
        """Blocks held by this replica's requests (look-ahead slots of the running step too)."""
        return int(self.counts[0])

    @used.setter
    def used(self, value: int) -> None:
        self.counts[0] = value

    @property
    def peak(self) -> int:
        """Largest ``used`` seen."""
        return int(self.counts[1])

    @peak.setter
    def peak(self, value: int) -> None:
        self.counts[1] = value

    @property
    def free(self) -> int:
        """Blocks not held by any request."""
        return self.capacity - self.used

    def blocks_for(self, tokens: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """Blocks needed to cache ``tokens`` tokens (elementwise ceiling division)."""
        return (tokens + (self.block_size - 1)) // self.block_size

    def grow(
        self, ids: npt.NDArray[np.int64], blocks: npt.NDArray[np.int64], added: int | None = None
    ) -> int:
        """Set the holdings of ``ids`` (distinct, each not decreasing) to ``blocks``.

        The caller has checked the blocks are free (and may pass ``added``, the blocks this adds,
        when it has summed them already). Returns how many blocks were added.
        """
        add = int(np.add.reduce(blocks - self.held[ids])) if added is None else added
        self.held[ids] = blocks
        self.used += add
        if self.used > self.peak:
            self.peak = self.used
        return add

    def shrink(self, ids: npt.NDArray[np.int64], blocks: npt.NDArray[np.int64]) -> int:
        """Set the holdings of ``ids`` (distinct, each not increasing) to ``blocks``.

        Returns how many blocks were released.
        """
        rel = int(self.held[ids].sum() - blocks.sum())
        self.held[ids] = blocks
        self.used -= rel
        return rel

    def release(self, ids: npt.NDArray[np.int64]) -> int:
        """Free every block held by ``ids``; returns how many."""
        rel = int(self.held[ids].sum())
        self.held[ids] = 0
        self.used -= rel
        return rel

    def check(self, ids: npt.NDArray[np.int64]) -> None:
        """Assert block conservation: ``ids`` (all requests this replica holds blocks for) hold
        exactly ``used`` blocks, and ``used + free == capacity`` with ``0 <= used <= capacity``.

        Raises
        ------
        AssertionError
            With the numbers, when the books do not balance.
        """
        held = int(self.held[ids].sum())
        if held != self.used:
            raise AssertionError(f"KV blocks: requests hold {held}, cache counts {self.used}")
        if not (0 <= self.used <= self.capacity) or self.used + self.free != self.capacity:
            raise AssertionError(
                f"KV blocks: used {self.used} + free {self.free} != total {self.capacity}"
            )
