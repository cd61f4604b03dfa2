"""Random streams: one per random source, all derived from one seed, no global state.

Two kinds of stream:

* :func:`stream` gives a ``numpy.random.Generator`` for a named source (arrivals, lengths,
  per-request alpha), derived from ``SeedSequence(seed, spawn_key=(source id, replication))``.
  Adding a source or changing another parameter never shifts another source's draws (common
  random numbers).
* :func:`counter_uniform` gives the acceptance draw of request *i* at its *j*-th decode step as a
  pure function of ``(seed, i, j)`` (a SplitMix64 hash). This keeps each request's acceptance luck
  fixed whatever the scheduling order, the arrival rate, the draft length or the fast-forward
  setting: the strongest form of common random numbers, and what makes the engine's results
  independent of how many steps are batched together.
"""

from __future__ import annotations

__all__ = [
    "STREAMS",
    "counter_base",
    "counter_uniform",
    "counter_uniform_from_base",
    "stream",
    "stream_key",
]

import numpy as np
import numpy.typing as npt

# Fixed ids: never renumber, only append (renumbering would change every seeded result).
STREAMS: dict[str, int] = {
    "arrivals": 1,
    "prompt_tokens": 2,
    "output_tokens": 3,
    "alpha": 4,
    "acceptance": 5,
    "router": 6,
    "trace": 7,
    "bench": 8,
    "prefix_tokens": 9,  # shared system prompts' lengths
    "prefix_choice": 10,  # which shared prompt a request (session) starts with
    "turns": 11,  # turns per session
    "think": 12,  # think time between a session's answer and its next turn
}

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_C_I = np.uint64(0xD1B54A32D192ED03)
_C_J = np.uint64(0xAEF17502108EF2D9)


def _seed_sequence(seed: int, name: str, replication: int = 0) -> np.random.SeedSequence:
    if name not in STREAMS:
        raise KeyError(f"unknown random source {name!r}; known: {sorted(STREAMS)}")
    return np.random.SeedSequence(int(seed), spawn_key=(STREAMS[name], int(replication)))


def stream(seed: int, name: str, replication: int = 0) -> np.random.Generator:
    """The generator for one random source.

    Parameters
    ----------
    seed
        The run's seed.
    name
        One of :data:`STREAMS`.
    replication
        Replication index (sweeps); 0 for a single run.

    Returns
    -------
    numpy.random.Generator
        A PCG64 generator private to this source.
    """
    return np.random.Generator(np.random.PCG64(_seed_sequence(seed, name, replication)))


def stream_key(seed: int, name: str, replication: int = 0) -> int:
    """A 64-bit key for a counter-based source, derived like :func:`stream`."""
    return int(_seed_sequence(seed, name, replication).generate_state(1, np.uint64)[0])


def _mix(z: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    # SplitMix64 finaliser (Steele, Lea, Flood 2014): a bijection with full avalanche.
    z = z + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def counter_uniform(key: int, i: npt.ArrayLike, j: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Uniform(0, 1) draws that are a pure function of ``(key, i, j)``.

    Parameters
    ----------
    key
        Stream key from :func:`stream_key`.
    i, j
        Non-negative integer arrays (broadcast together): request index and step counter.

    Returns
    -------
    numpy.ndarray
        float64 in the open interval (0, 1).
    """
    return counter_uniform_from_base(counter_base(key, i), j)


def counter_base(key: int, i: npt.ArrayLike) -> npt.NDArray[np.uint64]:
    """The per-``i`` half of :func:`counter_uniform`'s hash, to compute once and reuse.

    ``counter_uniform_from_base(counter_base(key, i), j) == counter_uniform(key, i, j)`` exactly;
    the engine hashes every request id once per run instead of once per step.
    """
    with np.errstate(over="ignore"):
        ii = np.asarray(i, dtype=np.uint64)
        k = np.asarray(key, dtype=np.uint64)
        return _mix(k ^ (_mix(ii * _C_I)))


def counter_uniform_from_base(
    base: npt.NDArray[np.uint64], j: npt.ArrayLike
) -> npt.NDArray[np.float64]:
    """Uniform(0, 1) draws from precomputed :func:`counter_base` values and counters ``j``."""
    with np.errstate(over="ignore"):
        jj = np.asarray(j, dtype=np.uint64)
        h = _mix(base ^ (jj * _C_J))
    # Top 53 bits, centred in their cell so 0 and 1 are never produced.
    return ((h >> np.uint64(11)).astype(np.float64) + 0.5) * (1.0 / 9007199254740992.0)
