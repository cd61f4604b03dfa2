"""Acceptance tapes: each request's acceptance draws, computed once, read by the step.

A request's j-th decode step uses the counter-based uniform ``counter_uniform(key, rid, j)``
(:mod:`sdsim.rng`), so all its future draws are known the moment it is admitted. A decode step
emits at least one token, so a request that still needs ``r`` tokens makes at most ``r`` more
decode steps, preempted or not: its *tape* is the ``r`` draws from its current decode step on.
The tape holds the accepted draft tokens of each draw at the largest draft length the engine may
use (``k_cap``: the fixed k, or ``spec.k_max`` under the adaptive policy): the truncated
geometric inverted once per draw. A step at draft length ``k <= k_cap`` accepts
``min(entry, k)`` of them, the same as inverting the uniform at ``k`` (acceptance past position
``k`` needs acceptance at ``k`` first).

All tapes of one engine live in one arena (a flat int64 array) with a bump pointer; a request's
entry for decode step ``s`` is ``arena[tape_pos + s]``. When the arena is full, the live tapes
(requests not finished) are compacted to its front, and the arena doubles if they fill half of it.

With ``prefetch`` set (one engine owning every request id, slot == request id, as in a batch
simulation), the first admission of a request also writes the tapes of the next ``prefetch``
request ids, which have not decoded yet: one vectorised call per few hundred admissions instead
of one each (the per-call overhead dominated). The draws are the same pure functions of
``(request, counter)``, so the records do not change.

With reusable slots (streaming statistics) a slot is not a request id, so tapes are written ahead
by *request id* instead (:meth:`AcceptanceTape.ahead`, one engine): the tapes of the next
``chunk`` fresh requests are computed in one call from the workload's lengths and the acceptance
key and laid in the arena, and a request is pointed at its tape when it arrives
(:meth:`AcceptanceTape.assign`), so the step never waits for one.
"""

from __future__ import annotations

__all__ = ["AcceptanceTape"]

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from sdsim.acceptance import AcceptanceSampler
from sdsim.engine.state import RequestTable
from sdsim.rng import counter_base, counter_uniform_from_base


class AcceptanceTape:
    """One engine's arena of acceptance tapes.

    Parameters
    ----------
    sampler
        Inverts uniforms to accepted draft tokens.
    k_cap
        The largest draft length a step may use.
    capacity
        Initial arena entries.
    """

    def __init__(self, sampler: AcceptanceSampler, k_cap: int, capacity: int = 1 << 16) -> None:
        self.sampler = sampler
        self.k_cap = int(k_cap)
        self.arena: npt.NDArray[np.int64] = np.zeros(max(1024, capacity), dtype=np.int64)
        self.top = 0
        self.prefetch = 0  # request ids to write ahead (0: only the requests asked for)
        self.pre_hi = 0  # every id below this has a tape (prefetch mode)
        # tapes written ahead by request id (reusable slots): see ahead(); the chunk of ids
        # lo .. hi - 1 lies in the arena from `_base`, request lo + i's tape at
        # _base + _start_list[i] .. _base + _start_list[i + 1]
        self._src: tuple[npt.NDArray[np.int64], npt.NDArray[np.float64] | None, int] | None = None
        self._chunk = 0
        self._lo = self._hi = self._base = 0
        self._start_list: list[int] = [0]

    def ahead(
        self,
        output: npt.NDArray[np.int64],
        alpha: npt.NDArray[np.float64] | None,
        key: int,
        chunk: int = 2048,
    ) -> None:
        """Write tapes ahead by request id (reusable slots, one engine).

        Parameters
        ----------
        output, alpha
            Every request's output length and acceptance rate (the workload's), by request id.
        key
            The acceptance stream's key (a request's draws are keyed by its id).
        chunk
            Request ids per bulk call.
        """
        self._src = (output, alpha, key)
        self._chunk = max(1, int(chunk))

    def ensure(
        self,
        t: RequestTable,
        ids: npt.NDArray[np.int64],
        live: Callable[[], npt.NDArray[np.int64]],
    ) -> None:
        """Give every request in ``ids`` that has none a tape covering all its remaining steps.

        Parameters
        ----------
        t
            The request table.
        ids
            Requests about to decode (or just admitted).
        live
            Gives every request of this engine that may still hold a tape (kept on compaction).
        """
        new = ids[t.tape_end[ids] == 0]
        if new.shape[0] == 0:
            return
        if self.prefetch:
            # ids at or above pre_hi have never been admitted (ids are admitted by this engine
            # only, and each admission below pre_hi already holds a tape): fresh, no decode step
            # and no generated token yet
            lo = self.pre_hi
            hi = min(t.n, max(lo, int(new.max()) + 1) + self.prefetch)
            new = np.arange(lo, hi, dtype=np.int64)
            self.pre_hi = hi
        # a decode step emits >= 1 token: at most output - generated more decode steps
        lens = np.maximum(t.output[new] - t.generated[new], 1)
        total = int(lens.sum())
        if self.top + total > self.arena.shape[0]:
            # prefetched tapes of requests not yet arrived are live too: every unfinished id
            # below the prefetch bound may hold one (the compaction keeps those with a tape)
            keep = np.arange(self.pre_hi, dtype=np.int64) if self.prefetch else live()
            self._compact(t, keep, total)
        start = self.top
        ctr = t.steps[new]
        vals, starts = self._values(
            t.acc_base[new], lens, ctr, None if t.alpha is None else t.alpha[new]
        )
        self.arena[start : start + total] = vals
        self.top = start + total
        t.tape_pos[new] = start + starts[:-1] - ctr
        t.tape_end[new] = start + starts[1:]

    def _values(
        self,
        bases: npt.NDArray[np.uint64],
        lens: npt.NDArray[np.int64],
        first: npt.NDArray[np.int64] | int,
        alpha: npt.NDArray[np.float64] | None,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """Tape entries of requests with counter bases ``bases``: ``lens[i]`` draws each, from
        decode step ``first[i]`` on, laid end to end; returns them (accepted draft tokens at
        ``k_cap``) and each request's start offset (plus the total at the end).
        """
        starts = np.zeros(lens.shape[0] + 1, dtype=np.int64)
        np.cumsum(lens, out=starts[1:])
        total = int(starts[-1])
        # entry index -> (request, counter): a ramp restarting at each request's first counter
        owner = np.repeat(np.arange(lens.shape[0]), lens)
        j = np.arange(total, dtype=np.int64) - starts[owner]
        if not isinstance(first, int):
            j += first[owner]
        u = counter_uniform_from_base(bases[owner], j)
        return self.sampler.sample(u, self.k_cap, None if alpha is None else alpha[owner]), starts

    def assign(
        self, t: RequestTable, slot: int, rid: int, live: Callable[[], npt.NDArray[np.int64]]
    ) -> None:
        """Point fresh request ``rid``, placed in ``slot``, at its tape written ahead (requests
        arrive in id order; :meth:`ahead` must have been called). ``live`` as for
        :meth:`ensure`."""
        if rid >= self._hi:
            self._write_chunk(rid, t, live)
        i = rid - self._lo
        starts = self._start_list
        t.tape_pos[slot] = self._base + starts[i]
        t.tape_end[slot] = self._base + starts[i + 1]

    def _write_chunk(
        self, lo: int, t: RequestTable, live: Callable[[], npt.NDArray[np.int64]]
    ) -> None:
        """Lay the tapes of fresh requests ``lo .. lo + chunk - 1`` in the arena (every request
        of the previous chunk has arrived and been assigned its tape)."""
        assert self._src is not None
        output, alpha, key = self._src
        hi = min(output.shape[0], lo + self._chunk)
        vals, starts = self._values(
            counter_base(key, np.arange(lo, hi)),
            np.maximum(output[lo:hi], 1),
            0,
            None if alpha is None else alpha[lo:hi],
        )
        n = vals.shape[0]
        if self.top + n > self.arena.shape[0]:
            self._compact(t, live(), n)
        self.arena[self.top : self.top + n] = vals
        self._base = self.top
        self._start_list = starts.tolist()
        self._lo, self._hi = lo, hi
        self.top += n

    def _compact(self, t: RequestTable, live: npt.NDArray[np.int64], extra: int) -> None:
        """Move the unread part of every live tape to the front of the arena (growing it to hold
        ``extra`` more entries). Tapes written ahead by request id are all assigned when this
        runs (it runs before the next chunk is laid, or for a request of the general path)."""
        live = live[(t.tape_end[live] > 0) & np.isnan(t.finish[live])]
        begin = t.tape_pos[live] + t.steps[live]
        lens = np.maximum(t.tape_end[live] - begin, 0)
        total = int(lens.sum())
        size = self.arena.shape[0]
        while size < 2 * (total + extra):
            size *= 2
        ends = np.cumsum(lens)
        owner = np.repeat(np.arange(live.shape[0]), lens)
        src = np.arange(total, dtype=np.int64) - (ends - lens)[owner] + begin[owner]
        arena = np.zeros(size, dtype=self.arena.dtype) if size != self.arena.shape[0] else None
        moved = self.arena[src]
        if arena is None:
            arena = self.arena
        arena[:total] = moved
        self.arena = arena
        self.top = total
        t.tape_pos[live] = (ends - lens) - t.steps[live]
        t.tape_end[live] = ends
