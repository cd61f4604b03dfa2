"""The router in front of ``server.replicas`` identical engines.

Policies (``server.router``):

``round-robin``
    Request i goes to replica ``i mod N`` (arrival order).
``least-outstanding``
    To the replica with the fewest requests routed to it and not finished (waiting, prefilling or
    decoding), ties to the lowest index: "join the shortest queue" measured as a load balancer can.
``random``
    Uniformly at random, from the ``router`` random stream drawn once for all requests, so the
    assignment depends on the seed alone, never on scheduling order.
``prefix-affinity``
    To the replica a fixed hash of the request's leading blocks names, so requests that share
    them land where those blocks are cached; to the least-outstanding replica instead when the
    named one has more than ``server.affinity_imbalance`` requests outstanding beyond the
    emptiest, and for requests without a shared leading block. The leading blocks are named
    the way the prefix cache keys them (:mod:`sdsim.engine.kvcache`): a turn of a conversation
    by its conversation (later turns resend it, and its blocks past the shared system prompt
    are cached only where its earlier turns ran), otherwise by its shared prefix when that
    fills at least one block. The hash is fixed (no seed): the same request stream gives the
    same assignment.
"""

from __future__ import annotations

__all__ = ["ROUTERS", "Router", "affinity_keys"]

import numpy as np
import numpy.typing as npt

from sdsim.rng import stream

ROUTERS = ("round-robin", "least-outstanding", "random", "prefix-affinity")

_NO_KEY = -1


def affinity_keys(
    prefix_group: npt.NDArray[np.int64] | None,
    prefix_len: npt.NDArray[np.int64] | None,
    conv: npt.NDArray[np.int64] | None,
    block_size: int,
    n: int,
) -> npt.NDArray[np.int64]:
    """The identity of each workload row's leading blocks, as the prefix cache keys them.

    Parameters
    ----------
    prefix_group, prefix_len
        Per row: shared prefix id (-1: none) and its tokens; ``None`` when the workload has none.
    conv
        Per row: conversation id (-1: none); ``None`` without sessions.
    block_size
        Tokens per KV block.
    n
        Rows.

    Returns
    -------
    numpy.ndarray
        Per row a non-negative key (conversation c: ``4 c + 1``; shared prefix g filling at
        least one block: ``4 g``, the cache's node numbers) or -1 (nothing shared to route by).
    """
    keys = np.full(n, _NO_KEY, dtype=np.int64)
    if prefix_group is not None and prefix_len is not None:
        full = (prefix_group >= 0) & (prefix_len >= block_size)
        keys[full] = 4 * prefix_group[full]
    if conv is not None:
        on = conv >= 0
        keys[on] = 4 * conv[on] + 1
    return keys


def _replica_of(key: int, replicas: int) -> int:
    """A fixed 64-bit mix (splitmix64's finaliser) of ``key``, modulo ``replicas``."""
    m = (1 << 64) - 1
    x = (key + 0x9E3779B97F4A7C15) & m
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & m
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & m
    return int((x ^ (x >> 31)) % replicas)


class Router:
    """Picks a replica for each arriving request.

    Parameters
    ----------
    policy
        One of :data:`ROUTERS`.
    replicas
        Number of engines.
    num_requests
        Requests in the run (the random policy draws all choices up front).
    seed, replication
        Seed of the ``router`` stream (random policy only).
    keys
        Per workload row, the identity of its leading blocks (:func:`affinity_keys`; -1: none);
        the prefix-affinity policy only (``None``: every request goes least-outstanding).
    imbalance
        Prefix-affinity: largest excess of the named replica's outstanding requests over the
        emptiest replica's that still routes by affinity.

    Attributes
    ----------
    outstanding
        Requests routed to each replica and not finished yet; engines keep it current.
    """

    def __init__(
        self,
        policy: str,
        replicas: int,
        num_requests: int,
        seed: int = 0,
        replication: int = 0,
        keys: npt.NDArray[np.int64] | None = None,
        imbalance: int = 8,
    ) -> None:
        if policy not in ROUTERS:
            raise ValueError(f"unknown router {policy!r}; known: {', '.join(ROUTERS)}")
        if replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {replicas}")
        self.policy = policy
        self.replicas = int(replicas)
        self.outstanding: npt.NDArray[np.int64] = np.zeros(self.replicas, dtype=np.int64)
        self._draws: npt.NDArray[np.int64] | None = None
        self.keys = keys
        self.imbalance = int(imbalance)
        if policy == "random" and self.replicas > 1:
            rng = stream(seed, "router", replication)
            self._draws = rng.integers(0, self.replicas, size=num_requests, dtype=np.int64)

    def choose(self, rid: int, row: int | None = None) -> int:
        """Replica for request ``rid`` (requests are routed in arrival order); ``row`` is its
        workload row (the prefix-affinity key's index; default ``rid``)."""
        if self.replicas == 1:
            return 0
        if self.policy == "round-robin":
            return rid % self.replicas
        if self.policy == "least-outstanding":
            return int(np.argmin(self.outstanding))
        if self.policy == "prefix-affinity":
            return self._affine(rid if row is None else row)
        assert self._draws is not None
        return int(self._draws[rid])

    def _affine(self, row: int) -> int:
        """Prefix-affinity: the key's replica unless it is too loaded, else the emptiest."""
        least = int(np.argmin(self.outstanding))
        key = _NO_KEY if self.keys is None else int(self.keys[row])
        if key < 0:
            return least
        r = _replica_of(key, self.replicas)
        if self.outstanding[r] - self.outstanding[least] > self.imbalance:
            return least
        return r
