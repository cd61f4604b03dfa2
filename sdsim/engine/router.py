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
"""

from __future__ import annotations

__all__ = ["ROUTERS", "Router"]

import numpy as np
import numpy.typing as npt

from sdsim.rng import stream

ROUTERS = ("round-robin", "least-outstanding", "random")


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
    ) -> None:
        if policy not in ROUTERS:
            raise ValueError(f"unknown router {policy!r}; known: {', '.join(ROUTERS)}")
        if replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {replicas}")
        self.policy = policy
        self.replicas = int(replicas)
        self.outstanding: npt.NDArray[np.int64] = np.zeros(self.replicas, dtype=np.int64)
        self._draws: npt.NDArray[np.int64] | None = None
        if policy == "random" and self.replicas > 1:
            rng = stream(seed, "router", replication)
            self._draws = rng.integers(0, self.replicas, size=num_requests, dtype=np.int64)

    def choose(self, rid: int) -> int:
        """Replica for request ``rid`` (requests are routed in arrival order)."""
        if self.replicas == 1:
            return 0
        if self.policy == "round-robin":
            return rid % self.replicas
        if self.policy == "least-outstanding":
            return int(np.argmin(self.outstanding))
        assert self._draws is not None
        return int(self._draws[rid])
