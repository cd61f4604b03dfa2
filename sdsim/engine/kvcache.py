"""The paged KV cache: fixed-size blocks of ``block_size`` token slots, counted per request.

A real engine (vLLM's PagedAttention) hands out KV memory in blocks; a request holds
``ceil(tokens / block_size)`` blocks for the tokens whose keys and values are cached. The simulator
only needs the *counts* (which physical block a request holds never changes a step's duration), so
the cache is one integer per request (``held``, shared by all replicas because a request lives on
one replica at a time) plus the number of blocks in use on this replica. All updates are
vectorised over the ids in a batch.

Capacity comes from ``server.num_gpu_blocks`` (what an engine reports at start-up; preferred), or
from :func:`derive_num_gpu_blocks` (GPU memory x utilisation - weights - activation reserve,
divided by the bytes of one block of KV for every model that keeps a cache), or is unlimited.

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
    "derive_num_gpu_blocks",
    "kv_bytes_per_token",
]

import math

import numpy as np
import numpy.typing as npt

from sdsim.errors import ScenarioError

# Capacity used when the cache is unlimited: large enough never to bind, small enough that int64
# arithmetic on it never overflows.
UNLIMITED_BLOCKS = 1 << 62


def kv_bytes_per_token(
    layers: int, kv_heads: int, head_dim: int, dtype_bytes: float = 2.0
) -> float:
    """Bytes of KV cache one token needs in one model (keys and values, every layer).

    Parameters
    ----------
    layers
        Transformer layers that keep a KV cache.
    kv_heads
        Key/value heads per layer (after grouped-query sharing), per tensor-parallel shard when
        sizing a shard.
    head_dim
        Dimension of one head.
    dtype_bytes
        Bytes per cached element (2 for fp16/bf16, 1 for fp8).

    Returns
    -------
    float
        ``2 * layers * kv_heads * head_dim * dtype_bytes``.
    """
    if layers < 0 or kv_heads < 0 or head_dim < 0 or dtype_bytes <= 0:
        raise ValueError(
            "layers, kv_heads, head_dim must be >= 0 and dtype_bytes > 0, got "
            f"{layers}, {kv_heads}, {head_dim}, {dtype_bytes}"
        )
    return 2.0 * layers * kv_heads * head_dim * dtype_bytes


def derive_num_gpu_blocks(
    hbm_bytes: float,
    gpu_memory_utilization: float,
    weight_bytes: float,
    activation_reserve_bytes: float,
    kv_bytes_per_token: float,
    block_size: int,
) -> int:
    """How many KV blocks fit on a GPU (what vLLM computes at start-up).

    ``floor((hbm_bytes * gpu_memory_utilization - weight_bytes - activation_reserve_bytes)
    / (kv_bytes_per_token * block_size))``.

    Parameters
    ----------
    hbm_bytes
        GPU memory (bytes), per device of one replica (per shard under tensor parallelism, with
        the other arguments per shard too).
    gpu_memory_utilization
        Fraction of memory the engine may use, in (0, 1].
    weight_bytes
        Weights resident on the device: verifier plus drafter.
    activation_reserve_bytes
        Memory kept for activations, CUDA graphs and the sampler (what a profiling run measures).
    kv_bytes_per_token
        KV bytes one token needs, summed over every model that keeps a cache (verifier and
        drafter; see :func:`kv_bytes_per_token`).
    block_size
        Tokens per block.

    Returns
    -------
    int
        Number of blocks (>= 1).

    Raises
    ------
    ScenarioError
        When an input is out of range or nothing is left for the KV cache (field
        ``server.num_gpu_blocks``, since giving it explicitly is the way out).
    """
    if not (0 < gpu_memory_utilization <= 1):
        raise ScenarioError(
            "server.gpu_memory_utilization", f"must be in (0, 1], got {gpu_memory_utilization}"
        )
    if block_size < 1:
        raise ScenarioError("server.block_size", f"must be >= 1, got {block_size}")
    for name, v in (
        ("hbm_bytes", hbm_bytes),
        ("weight_bytes", weight_bytes),
        ("activation_reserve_bytes", activation_reserve_bytes),
    ):
        if not math.isfinite(v) or v < 0:
            raise ScenarioError("server.num_gpu_blocks", f"{name} must be finite and >= 0, got {v}")
    if not math.isfinite(kv_bytes_per_token) or kv_bytes_per_token <= 0:
        raise ScenarioError(
            "server.num_gpu_blocks", f"kv_bytes_per_token must be > 0, got {kv_bytes_per_token}"
        )
    left = hbm_bytes * gpu_memory_utilization - weight_bytes - activation_reserve_bytes
    blocks = math.floor(left / (kv_bytes_per_token * block_size)) if left > 0 else 0
    if blocks < 1:
        raise ScenarioError(
            "server.num_gpu_blocks",
            f"no memory left for the KV cache: {hbm_bytes / 2**30:.1f} GiB x "
            f"{gpu_memory_utilization:g} - weights {weight_bytes / 2**30:.1f} GiB - reserve "
            f"{activation_reserve_bytes / 2**30:.1f} GiB leaves less than one block; use a larger "
            "GPU, more tensor parallelism, or set server.num_gpu_blocks",
        )
    return int(blocks)


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
