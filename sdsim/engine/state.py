"""The engine's state containers: the request table, the waiting queue and the step log.

Each holds numpy arrays of the records in :mod:`sdsim.engine.schema`, which the compiled step
functions read and write in place; the Python methods here are what the rest of the engine
(arrivals, harvests, hooks, the live server) uses.

The request table has two layouts:

* **one slot per request** (records kept): slot ``i`` is request ``i`` for the whole run, and the
  table is the request records at the end;
* **reusable slots** (``capacity`` given: streaming statistics, the live server): a request gets a
  free slot when it arrives; finished requests are *harvested* in batches (their records handed
  to a sink, their slots freed), so memory follows the number of requests in the system, not in
  the run.
"""

from __future__ import annotations

__all__ = [
    "IdQueue",
    "RequestTable",
    "Sink",
    "StepLog",
    "blank_requests",
    "front_room",
    "pop_front",
    "push_front",
    "waiting_count",
    "waiting_front",
]

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

from sdsim._jit import jit
from sdsim.engine.schema import ABORT_DONE, REQUEST, REQUEST_RECORD, STEP, STEP_FIELDS, names
from sdsim.rng import counter_base
from sdsim.workload import Workload

# A sink receives harvested requests as a dict of equal-length arrays (record fields + "rid").
Sink = Callable[[dict[str, npt.NDArray[np.generic]]], None]

# One blank slot: NaN times and alpha, no request, nothing held.
_BLANK = np.zeros(1, dtype=REQUEST)
for _name in ("arrival", "first_scheduled", "first_token", "finish", "alpha"):
    _BLANK[_name] = np.nan
_BLANK["rid"] = -1
for _name in ("pfx_group", "conv", "kv_row"):
    _BLANK[_name] = -1


def blank_requests(n: int) -> npt.NDArray[Any]:
    """``n`` blank request slots."""
    return np.repeat(_BLANK, n)


def _words(rows: npt.NDArray[Any]) -> npt.NDArray[np.int64]:
    """Records whose fields are all 8 bytes wide (the schema's are) as rows of int64 words, so
    copies are plain memory copies (numpy copies record arrays field by field)."""
    return rows.view(np.int64).reshape(rows.shape[0], rows.dtype.itemsize // 8)


class RequestTable:
    """All requests' state, one :data:`~sdsim.engine.schema.REQUEST` record per slot.

    Every field is also an attribute (``table.generated``, ``table.finish``, ...): a view of that
    field over all slots. ``alpha`` is ``None`` when acceptance is per position, not per request.

    Parameters
    ----------
    wl
        The workload.
    capacity
        ``None``: one slot per request (slot == request id). An integer: that many reusable slots
        to start with (they double when all are taken); requests are placed by :meth:`fill`.
    accept_key
        Key of the acceptance stream: with one slot per request, each slot's ``acc_base`` is
        filled from it (:func:`sdsim.rng.counter_base` of the request id).

    A workload of multi-turn sessions (``wl.next_turn`` set) has arrival times only for first
    turns: its slots are left blank and each turn is placed when it arrives (:meth:`place`), in
    arrival order (slot == request id == arrival order).
    """

    def __init__(
        self, wl: Workload, capacity: int | None = None, accept_key: int | None = None
    ) -> None:
        self.reusable = capacity is not None
        self.has_alpha = wl.alpha is not None
        n = len(wl) if capacity is None else max(16, int(capacity))
        self._bind(blank_requests(n))
        self.size = n  # slots in use (one slot per request)
        if capacity is None and wl.next_turn is None:
            d = self.data
            d["rid"] = np.arange(n, dtype=np.int64)
            d["arrival"] = wl.arrival
            d["prompt"] = wl.prompt
            d["output"] = wl.output
            d["prefill_target"] = wl.prompt
            if wl.alpha is not None:
                d["alpha"] = wl.alpha
            if accept_key is not None:
                d["acc_base"] = counter_base(accept_key, np.arange(n, dtype=np.int64))
            if wl.prefix_group is not None and wl.prefix_len is not None:
                d["pfx_group"] = wl.prefix_group
                d["pfx_len"] = wl.prefix_len
        # reusable slots: free slots (a stack) and the occupied mask
        self._free: list[int] = list(range(n - 1, -1, -1)) if self.reusable else []
        self.occupied = np.zeros(n, dtype=np.bool_) if self.reusable else None

    @classmethod
    def empty(cls, capacity: int, has_alpha: bool) -> RequestTable:
        """A table of ``capacity`` reusable slots and no request yet (requests arrive one by
        one, placed by :meth:`fill`; ``has_alpha``: each carries its acceptance rate)."""
        wl = Workload(
            arrival=np.zeros(0),
            prompt=np.zeros(0, dtype=np.int64),
            output=np.zeros(0, dtype=np.int64),
            alpha=np.zeros(0) if has_alpha else None,
        )
        return cls(wl, capacity=capacity)

    # ------------------------------------------------------------------ layout
    def _bind(self, data: npt.NDArray[Any]) -> None:
        """Use ``data`` as the slots and bind every field's view as an attribute."""
        self.data = data
        for name in names(REQUEST):
            setattr(self, name, data[name])
        if not self.has_alpha:
            self.alpha = None

    # the field views (bound by _bind)
    rid: npt.NDArray[np.int64]
    arrival: npt.NDArray[np.float64]
    first_scheduled: npt.NDArray[np.float64]
    first_token: npt.NDArray[np.float64]
    finish: npt.NDArray[np.float64]
    prompt: npt.NDArray[np.int64]
    output: npt.NDArray[np.int64]
    steps: npt.NDArray[np.int64]
    drafted: npt.NDArray[np.int64]
    accepted: npt.NDArray[np.int64]
    preemptions: npt.NDArray[np.int64]
    replica: npt.NDArray[np.int64]
    aborted: npt.NDArray[np.int64]
    alpha: npt.NDArray[np.float64] | None
    acc_base: npt.NDArray[np.uint64]
    prefill_target: npt.NDArray[np.int64]
    prefilled: npt.NDArray[np.int64]
    generated: npt.NDArray[np.int64]
    kv_blocks: npt.NDArray[np.int64]
    tape_pos: npt.NDArray[np.int64]
    tape_end: npt.NDArray[np.int64]
    cached_tokens: npt.NDArray[np.int64]
    pfx_group: npt.NDArray[np.int64]
    pfx_len: npt.NDArray[np.int64]
    conv: npt.NDArray[np.int64]
    turn: npt.NDArray[np.int64]
    follow: npt.NDArray[np.int64]
    kv_row: npt.NDArray[np.int64]
    cacheable: npt.NDArray[np.int64]

    @property
    def n(self) -> int:
        """Slots in the table."""
        return int(self.data.shape[0])

    def _grow(self) -> None:
        """Double the slots (the new ones blank)."""
        n = self.n
        data = blank_requests(2 * n)
        _words(data)[:n] = _words(self.data)
        self._bind(data)
        if self.occupied is not None:
            occ = np.zeros(2 * n, dtype=np.bool_)
            occ[:n] = self.occupied
            self.occupied = occ
            self._free = list(range(2 * n - 1, n - 1, -1)) + self._free

    def _place(
        self,
        s: int,
        rid: int,
        arrival: float,
        prompt: int,
        output: int,
        alpha: float | None,
        acc_base: int | np.uint64,
        prefix: tuple[int, int, int, int, int] = (-1, 0, -1, 0, 0),
    ) -> None:
        self.rid[s] = rid
        self.arrival[s] = arrival
        self.prompt[s] = prompt
        self.output[s] = output
        self.prefill_target[s] = prompt
        if self.alpha is not None and alpha is not None:
            self.alpha[s] = alpha
        self.acc_base[s] = acc_base
        self.pfx_group[s], self.pfx_len[s], self.conv[s], self.turn[s], self.follow[s] = prefix

    def place(
        self,
        s: int,
        arrival: float,
        prompt: int,
        output: int,
        alpha: float | None,
        accept_key: int,
        prefix: tuple[int, int, int, int, int],
    ) -> None:
        """Place request ``s`` (slot == request id) on arrival: a turn of a multi-turn session.

        ``prefix`` is ``(shared prefix id, its tokens, conversation id, turn, 1 if another
        turn follows)``.
        """
        base = counter_base(accept_key, np.int64(s))
        self._place(s, s, arrival, prompt, output, alpha, np.uint64(base), prefix)

    # ------------------------------------------------------------------ reusable slots
    def fill(
        self,
        rid: int,
        arrival: float,
        prompt: int,
        output: int,
        alpha: float | None,
        acc_base: np.uint64,
        sink: Sink | None = None,
        prefix: tuple[int, int, int, int, int] = (-1, 0, -1, 0, 0),
    ) -> int:
        """Place request ``rid`` in a free slot (harvesting finished ones, or growing, if none).

        Returns the slot.
        """
        if not self._free:
            self.harvest(sink)
            if len(self._free) < self.n // 4:
                self._grow()
        s = self._free.pop()
        assert self.occupied is not None
        self.occupied[s] = True
        self._place(s, rid, arrival, prompt, output, alpha, acc_base, prefix)
        return s

    def harvest(self, sink: Sink | None, everything: bool = False) -> int:
        """Hand finished requests (every occupied slot when ``everything``) to ``sink`` and free
        their slots. Returns how many were harvested."""
        assert self.occupied is not None
        mask = self.occupied & ~np.isnan(self.finish) if not everything else self.occupied
        slots = np.flatnonzero(mask)
        if slots.shape[0] == 0:
            return 0
        if sink is not None:
            sink(self.records(slots))
        self.occupied[slots] = False
        self.data[slots] = _BLANK[0]
        self._free.extend(slots[::-1].tolist())
        return int(slots.shape[0])

    def records(self, slots: npt.NDArray[np.int64]) -> dict[str, npt.NDArray[np.generic]]:
        """The request record fields of ``slots`` (and ``alpha`` when per request)."""
        rows = self.data[slots]
        out: dict[str, npt.NDArray[np.generic]] = {
            name: rows[field] for name, field in REQUEST_RECORD.items()
        }
        out["aborted"] = rows["aborted"] == ABORT_DONE
        if self.alpha is not None:
            out["alpha"] = rows["alpha"]
        return out


# --------------------------------------------------------------------------- the waiting queue
# A queue buffer's first two entries are its head and tail: the ids are ``buf[buf[0]:buf[1]]``,
# so the compiled step functions get the whole queue as one int64 array.
_HEAD, _TAIL, _FIRST = 0, 1, 2


@jit(callee=True)
def waiting_count(q: npt.NDArray[np.int64]) -> int:
    """Requests in the queue."""
    return int(q[_TAIL] - q[_HEAD])


@jit(callee=True)
def front_room(q: npt.NDArray[np.int64]) -> int:
    """Ids that :func:`push_front` can still put at the front."""
    return int(q[_HEAD] - _FIRST)


@jit(callee=True)
def waiting_front(q: npt.NDArray[np.int64]) -> int:
    """The id at the front (the queue is not empty)."""
    return int(q[q[_HEAD]])


@jit(callee=True)
def pop_front(q: npt.NDArray[np.int64]) -> int:
    """Remove and return the front id (the queue is not empty)."""
    r = q[q[_HEAD]]
    q[_HEAD] += 1
    return int(r)


@jit(callee=True)
def push_front(q: npt.NDArray[np.int64], r: int) -> None:
    """Put ``r`` at the front (the caller made room: ``IdQueue.reserve_front``)."""
    q[_HEAD] -= 1
    q[q[_HEAD]] = r


class IdQueue:
    """A FIFO of request ids in one numpy buffer (header: head and tail): arrivals are appended
    here, the step functions pop and push at the front (:func:`pop_front`, :func:`push_front`);
    ``len``, iteration and ``numpy.asarray`` read it.

    Parameters
    ----------
    capacity
        Initial buffer size (grows as needed).
    """

    def __init__(self, capacity: int = 64) -> None:
        size = max(8, capacity) + _FIRST
        self.buf = np.zeros(size, dtype=np.int64)
        self.buf[_HEAD] = self.buf[_TAIL] = _FIRST + (size - _FIRST) // 4  # room at the front

    def __len__(self) -> int:
        b = self.buf
        return int(b[_TAIL] - b[_HEAD])

    def __bool__(self) -> bool:
        b = self.buf
        return bool(b[_TAIL] > b[_HEAD])

    def __iter__(self) -> Iterator[int]:
        b = self.buf
        return iter(b[b[_HEAD] : b[_TAIL]].tolist())

    def __array__(self, dtype: object = None, copy: object = None) -> npt.NDArray[np.int64]:
        b = self.buf
        out = b[b[_HEAD] : b[_TAIL]].copy()
        return out if dtype is None else out.astype(dtype)  # type: ignore[call-overload]

    def _recentre(self, n_front: int, n_back: int) -> None:
        """Move the ids so ``n_front`` fit before them and ``n_back`` after (growing)."""
        b = self.buf
        h, t = int(b[_HEAD]), int(b[_TAIL])
        n = t - h
        size = b.shape[0]
        while size < 2 * (n + n_front + n_back) + 8 + _FIRST:
            size *= 2
        new = np.zeros(size, dtype=np.int64)
        h2 = _FIRST + n_front + (size - _FIRST - n - n_front - n_back) // 4
        new[h2 : h2 + n] = b[h:t]
        new[_HEAD] = h2
        new[_TAIL] = h2 + n
        self.buf = new

    def reserve_front(self, n: int) -> None:
        """Make room for ``n`` ids at the front (preemptions put requests back there)."""
        if int(self.buf[_HEAD]) - _FIRST < n:
            self._recentre(n, 0)

    def append(self, rid: int) -> None:
        """Add ``rid`` at the back."""
        b = self.buf
        t = int(b[_TAIL])
        if t >= b.shape[0]:
            self._recentre(0, 1)
            b = self.buf
            t = int(b[_TAIL])
        b[t] = rid
        b[_TAIL] = t + 1


# --------------------------------------------------------------------------- step records


class StepLog:
    """One replica's step records: a :data:`~sdsim.engine.schema.STEP` array the step functions
    append to (their count is the ENGINE record's ``records``).

    With ``flush`` given (streaming statistics), full logs are handed to it as columns and
    emptied instead of growing.

    Parameters
    ----------
    state
        The replica's ENGINE array (one record).
    capacity
        Initial records (doubles when full, unless ``flush`` is given).
    flush
        Called with a dict of columns whenever the log is full, and by :meth:`finish`.
    """

    def __init__(
        self,
        state: npt.NDArray[Any],
        capacity: int = 4096,
        flush: Callable[[dict[str, npt.NDArray[np.generic]]], None] | None = None,
    ) -> None:
        self._e = state
        self._flush = flush
        self.rec = np.zeros(max(64, int(capacity)), dtype=STEP)

    @property
    def size(self) -> int:
        """Records held."""
        return int(self._e[0]["records"])

    @property
    def full(self) -> bool:
        """Whether no record fits."""
        return self.size >= self.rec.shape[0]

    def make_room(self) -> None:
        """Flush the records (streaming) or double the log."""
        n = self.size
        if self._flush is not None:
            if n:
                self._flush(self.columns())
                self._e[0]["records"] = 0
            return
        rec = np.zeros(2 * self.rec.shape[0], dtype=STEP)
        _words(rec)[:n] = _words(self.rec)[:n]
        self.rec = rec

    def clear(self) -> None:
        """Drop every record (the live server keeps none)."""
        self._e[0]["records"] = 0

    def last(self) -> dict[str, float]:
        """The most recent record as ``{field: value}``, for check hooks."""
        n = self.size
        if n == 0:
            raise IndexError("no step recorded yet")
        row = self.rec[n - 1]
        return {name: float(row[name]) for name in STEP_FIELDS}

    def columns(self) -> dict[str, npt.NDArray[np.generic]]:
        """Copies of the records' columns (in :data:`~sdsim.engine.schema.STEP` order)."""
        n = self.size
        # the records' words transposed into columns a block of rows at a time (a pass per
        # field over an array of records, or one transpose of the whole, is several times slower)
        words = _words(self.rec)
        cols = np.empty((len(STEP_FIELDS), n), dtype=np.int64)
        for i in range(0, n, 4096):
            cols[:, i : i + 4096] = words[i : min(n, i + 4096)].T
        return {name: cols[j].view(dt) for j, (name, dt) in enumerate(STEP_FIELDS.items())}

    def finish(self) -> None:
        """Hand the remaining records to ``flush`` (streaming)."""
        if self._flush is not None and self.size:
            self._flush(self.columns())
            self._e[0]["records"] = 0
