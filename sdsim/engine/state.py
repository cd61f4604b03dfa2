"""Per-request state as arrays (struct of arrays), and step-record columns.

The engine never touches a per-request Python object in its step loop: every request attribute is
an entry of a numpy array indexed by a *slot*, so a step's work is a handful of vectorised
operations over the slots in the batch.

Two layouts:

* **one slot per request** (the default, records kept): slot ``i`` is request ``i`` for the whole
  run, and the arrays are the request records at the end;
* **reusable slots** (``capacity`` given, streaming statistics): a request gets a free slot when it
  arrives; finished requests are *harvested* in batches (their records handed to a sink, their
  slots freed), so memory follows the number of requests in the system, not in the run.
"""

from __future__ import annotations

__all__ = ["FLOAT_ROWS", "INT_ROWS", "STEP_FIELDS", "IdQueue", "RequestTable", "StepColumns"]

from collections.abc import Callable, Iterable, Iterator

import numpy as np
import numpy.typing as npt

from sdsim.workload import Workload

# Step record fields (DESIGN.md contract) plus `k` (draft length used) and `preempted`.
STEP_FIELDS: dict[str, type] = {
    "start": np.float64,
    "duration": np.float64,
    "num_seqs": np.int64,
    "prefill_tokens": np.int64,
    "decode_seqs": np.int64,
    "verify_tokens": np.int64,
    "draft_s": np.float64,
    "verify_s": np.float64,
    "prefill_s": np.float64,
    "overhead_s": np.float64,
    "kv_blocks_used": np.int64,
    "waiting": np.int64,
    "k": np.int64,
    "accepted": np.int64,
    "emitted": np.int64,
    "preempted": np.int64,
    "replica": np.int64,
}

# Per-slot arrays and their initial value (the record fields, then engine bookkeeping).
_SLOT_FIELDS: dict[str, tuple[type, float]] = {
    "first_scheduled": (np.float64, np.nan),
    "first_token": (np.float64, np.nan),
    "finish": (np.float64, np.nan),
    "prefilled": (np.int64, 0),
    "generated": (np.int64, 0),
    "steps": (np.int64, 0),
    "drafted": (np.int64, 0),
    "accepted": (np.int64, 0),
    "preemptions": (np.int64, 0),
    "decode_counter": (np.int64, 0),
    "replica": (np.int64, 0),
    "kv_blocks": (np.int64, 0),
    "tape_pos": (np.int64, 0),
    "tape_end": (np.int64, 0),
    "prefill_done": (np.int64, 0),
}

# Rows of the table's two 2-D arrays (``RequestTable.ints``, ``RequestTable.floats``): every
# per-slot integer field is one row of ``ints`` (each attribute is a view of its row), so compiled
# kernels (:mod:`sdsim.engine.compiled`) take the whole table as two arguments.
INT_ROWS: tuple[str, ...] = (
    "prompt",
    "output",
    "prefill_target",
    *(n for n, (dt, _) in _SLOT_FIELDS.items() if dt is np.int64),
)
FLOAT_ROWS: tuple[str, ...] = tuple(n for n, (dt, _) in _SLOT_FIELDS.items() if dt is np.float64)

# A sink receives harvested requests as a dict of equal-length arrays (record fields + "rid").
Sink = Callable[[dict[str, npt.NDArray[np.generic]]], None]


class RequestTable:
    """All requests' state, one array entry per slot.

    Attributes hold the DESIGN.md request record fields plus engine bookkeeping:
    ``prefilled``/``prefill_target`` (prompt tokens computed so far / to compute, the target growing
    to prompt + generated after a preemption by recomputation) and ``decode_counter`` (how many
    acceptance draws the request has used; never reset, so draws stay fresh after preemption),
    ``kv_blocks`` (KV-cache blocks held now), ``replica`` (where the router sent it), ``rid`` (the
    request id in the slot), ``tape_pos``/``tape_end`` (where the request's acceptance tape lies in
    its engine's arena, see :mod:`sdsim.engine.tape`; ``tape_end == 0``: none yet).

    Parameters
    ----------
    wl
        The workload.
    capacity
        ``None``: one slot per request (slot == request id). An integer: that many reusable slots
        to start with (they double when all are taken); requests are placed by :meth:`fill`.
    """

    def __init__(self, wl: Workload, capacity: int | None = None) -> None:
        self.reusable = capacity is not None
        n = len(wl) if capacity is None else max(16, int(capacity))
        self.n = n
        self._alloc(n)
        if capacity is None:
            self.arrival = wl.arrival
            self.prompt[:] = wl.prompt
            self.output[:] = wl.output
            self.alpha: npt.NDArray[np.float64] | None = wl.alpha
            self.rid = np.arange(n, dtype=np.int64)
            self.prefill_target[:] = wl.prompt
        else:
            self.arrival = np.full(n, np.nan)
            self.output[:] = 1
            self.alpha = None if wl.alpha is None else np.zeros(n)
            self.rid = np.full(n, -1, dtype=np.int64)
        self.prompt: npt.NDArray[np.int64]
        self.output: npt.NDArray[np.int64]
        self.prefill_target: npt.NDArray[np.int64]
        self.first_scheduled: npt.NDArray[np.float64]
        self.first_token: npt.NDArray[np.float64]
        self.finish: npt.NDArray[np.float64]
        self.prefilled: npt.NDArray[np.int64]
        self.generated: npt.NDArray[np.int64]
        self.steps: npt.NDArray[np.int64]
        self.drafted: npt.NDArray[np.int64]
        self.accepted: npt.NDArray[np.int64]
        self.preemptions: npt.NDArray[np.int64]
        self.decode_counter: npt.NDArray[np.int64]
        self.replica: npt.NDArray[np.int64]
        self.kv_blocks: npt.NDArray[np.int64]
        self.tape_pos: npt.NDArray[np.int64]
        self.tape_end: npt.NDArray[np.int64]
        self.prefill_done: npt.NDArray[np.int64]  # prefills completed (each emitted one token)
        # the per-request half of the acceptance hash (set by the simulation, see rng.counter_base)
        self.acc_base: npt.NDArray[np.uint64] = np.zeros(n, dtype=np.uint64)
        # reusable slots: free slots (a stack) and the occupied mask
        self._free: list[int] = list(range(n - 1, -1, -1)) if self.reusable else []
        self.occupied = np.zeros(n, dtype=np.bool_) if self.reusable else None
        self.on_resize: list[Callable[[], None]] = []
        # fixed draft length: ``drafted`` is ``steps * fixed_k`` (filled at the end, not per step)
        self.fixed_k: int | None = None
        # derived counts (batch simulation): the engine does not update ``steps`` and
        # ``accepted`` per step; they follow from ``decode_counter`` (one per decode step) and
        # ``generated - decode_counter - prefill_done`` (a decode step emits accepted + 1 tokens,
        # a completed prefill one), filled by :meth:`derive_counts` and in :meth:`records`
        self.derived_counts = False

    def _alloc(self, n: int) -> None:
        """Allocate ``ints``/``floats`` for ``n`` slots (initial values) and bind the row views."""
        self.ints = np.zeros((len(INT_ROWS), n), dtype=np.int64)
        self.floats = np.full((len(FLOAT_ROWS), n), np.nan)
        for i, name in enumerate(INT_ROWS):
            init = _SLOT_FIELDS[name][1] if name in _SLOT_FIELDS else 0
            if init:
                self.ints[i] = init
            setattr(self, name, self.ints[i])
        for i, name in enumerate(FLOAT_ROWS):
            setattr(self, name, self.floats[i])

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
        self.rid[s] = rid
        self.arrival[s] = arrival
        self.prompt[s] = prompt
        self.output[s] = output
        self.prefill_target[s] = prompt
        if self.alpha is not None and alpha is not None:
            self.alpha[s] = alpha
        self.acc_base[s] = acc_base
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
        for name, (_, init) in _SLOT_FIELDS.items():
            getattr(self, name)[slots] = init
        self.rid[slots] = -1
        self._free.extend(slots[::-1].tolist())
        return int(slots.shape[0])

    def derive_counts(self) -> None:
        """Fill ``steps`` and ``accepted`` from the counters (see ``derived_counts``)."""
        if self.derived_counts:
            self.steps[:] = self.decode_counter
            np.subtract(self.generated - self.decode_counter, self.prefill_done, out=self.accepted)

    def records(self, slots: npt.NDArray[np.int64]) -> dict[str, npt.NDArray[np.generic]]:
        """The request record fields (and ``rid``, ``replica``, ``alpha``) of ``slots``."""
        fk = self.fixed_k
        if self.derived_counts:
            steps = self.decode_counter[slots]
            accepted = self.generated[slots] - steps - self.prefill_done[slots]
        else:
            steps = self.steps[slots]
            accepted = self.accepted[slots]
        out: dict[str, npt.NDArray[np.generic]] = {
            "rid": self.rid[slots],
            "arrival": self.arrival[slots],
            "first_scheduled": self.first_scheduled[slots],
            "first_token": self.first_token[slots],
            "finish": self.finish[slots],
            "prompt_tokens": self.prompt[slots],
            "output_tokens": self.output[slots],
            "steps": steps,
            "drafted": self.drafted[slots] if fk is None else steps * fk,
            "accepted": accepted,
            "preemptions": self.preemptions[slots],
            "replica": self.replica[slots],
        }
        if self.alpha is not None:
            out["alpha"] = self.alpha[slots]
        return out

    def _grow(self) -> None:
        """Double the slots in place (listeners in ``on_resize`` re-bind their references)."""
        n = self.n
        ints, floats = self.ints, self.floats
        self._alloc(2 * n)
        self.ints[:, :n] = ints
        for name in ("prompt", "output", "prefill_target"):
            getattr(self, name)[n:] = 0
        self.floats[:, :n] = floats
        for name in ("arrival", "alpha", "rid", "acc_base"):
            cur = getattr(self, name)
            if cur is None:
                continue
            new = np.zeros(2 * n, dtype=cur.dtype)
            new[:n] = cur
            setattr(self, name, new)
        assert self.occupied is not None
        occ = np.zeros(2 * n, dtype=np.bool_)
        occ[:n] = self.occupied
        self.occupied = occ
        self._free = list(range(2 * n - 1, n - 1, -1)) + self._free
        self.n = 2 * n
        for cb in self.on_resize:
            cb()


class StepColumns:
    """Preallocated columns for step records (no DataFrame work in the loop).

    Every field is a row of one float64 array ``rec`` (``cols[name]`` is a view of its row;
    integer fields are exact as floats and come back as int64 from :meth:`as_dict`), so a compiled
    kernel writes a record as one column of ``rec``. Python callers append tuples to a small
    buffer, moved into ``rec`` in blocks (one conversion per :data:`BUFFER` steps); blocks of
    fast-forwarded steps arrive as arrays (:meth:`extend`). With ``flush`` given (streaming
    statistics), full columns are handed to it and emptied instead of growing.

    Parameters
    ----------
    capacity
        Initial rows (doubles when full, unless ``flush`` is given).
    flush
        Called with a dict of the filled columns whenever ``capacity`` rows are held.
    """

    BUFFER = 512

    def __init__(
        self,
        capacity: int = 4096,
        flush: Callable[[dict[str, npt.NDArray[np.generic]]], None] | None = None,
    ) -> None:
        self._size = 0
        self._cap = max(self.BUFFER, capacity)
        self._flush = flush
        self._buf: list[tuple[float | int, ...]] = []
        self._bind(np.zeros((len(STEP_FIELDS), self._cap)))

    def _bind(self, rec: npt.NDArray[np.float64]) -> None:
        self.rec = rec
        self.cols: dict[str, npt.NDArray[np.generic]] = {
            name: rec[i] for i, name in enumerate(STEP_FIELDS)
        }

    @property
    def size(self) -> int:
        """Records held (buffered ones included)."""
        return self._size + len(self._buf)

    @size.setter
    def size(self, value: int) -> None:
        # only resetting to empty is meaningful (the live server bounds its memory this way)
        self._drain()
        self._size = max(0, min(int(value), self._size))

    def append(self, values: tuple[float | int, ...]) -> None:
        """Append one record; ``values`` in :data:`STEP_FIELDS` order."""
        buf = self._buf
        buf.append(values)
        if len(buf) >= self.BUFFER:
            self._drain()

    def last(self) -> dict[str, float]:
        """The most recent record as ``{field: value}`` (buffered or not), for check hooks."""
        if self._buf:
            return dict(zip(self.cols, (float(v) for v in self._buf[-1]), strict=True))
        if self._size == 0:
            raise IndexError("no step recorded yet")
        return {name: float(col[self._size - 1]) for name, col in self.cols.items()}

    def extend(self, cols: dict[str, npt.NDArray[np.generic] | float | int]) -> None:
        """Append a block of records given as columns (arrays of equal length, or scalars)."""
        self._drain()
        m = next(v.shape[0] for v in cols.values() if isinstance(v, np.ndarray))
        self._reserve(m)
        i = self._size
        for name, col in self.cols.items():
            col[i : i + m] = cols[name]
        self._size += m

    def reserve(self, m: int) -> int:
        """Make room for ``m`` more records written straight into ``rec`` (buffered records are
        moved in first); returns the column index of the first free record."""
        if self._buf:
            self._drain()
        if self._size + m > self._cap:
            self._reserve(m)
        return self._size

    def _typed(self, size: int) -> dict[str, npt.NDArray[np.generic]]:
        return {
            name: (col[:size] if dt is np.float64 else col[:size].astype(dt))
            for (name, dt), col in zip(STEP_FIELDS.items(), self.rec, strict=True)
        }

    def _reserve(self, m: int) -> None:
        if self._size + m <= self._cap:
            return
        if self._flush is not None and self._size:
            self._flush(self._typed(self._size))
            self._size = 0
            if m <= self._cap:
                return
        cap = self._cap
        while cap < self._size + m:
            cap *= 2
        new = np.zeros((len(STEP_FIELDS), cap))
        new[:, : self._size] = self.rec[:, : self._size]
        self._bind(new)
        self._cap = cap

    def _drain(self) -> None:
        buf = self._buf
        if not buf:
            return
        m = len(buf)
        self._reserve(m)
        i = self._size
        # one conversion for the whole buffer: rows -> columns
        self.rec[:, i : i + m] = np.array(buf, dtype=np.float64).T
        self._size += m
        buf.clear()

    def finish(self) -> None:
        """Move buffered records into the columns (and hand everything to ``flush`` if set)."""
        self._drain()
        if self._flush is not None and self._size:
            self._flush(self._typed(self._size))
            self._size = 0

    def as_dict(self) -> dict[str, npt.NDArray[np.generic]]:
        """Trimmed copies of the columns."""
        self._drain()
        typed = self._typed(self._size)
        return {k: v.copy() if v.base is not None else v for k, v in typed.items()}


class IdQueue:
    """A FIFO of request ids in a numpy buffer (what ``collections.deque`` offers the scheduler:
    ``append``, ``popleft``, ``extendleft``, ``[0]``, ``len``, iteration), readable by compiled
    kernels: the ids are ``buf[head:tail]`` with ``head, tail = ends[0], ends[1]``.

    Parameters
    ----------
    ends
        A 2-entry int64 array (a view of the engine's state array) holding head and tail.
    capacity
        Initial buffer size (grows as needed).
    """

    def __init__(self, ends: npt.NDArray[np.int64] | None = None, capacity: int = 64) -> None:
        self.ends = np.zeros(2, dtype=np.int64) if ends is None else ends
        self.buf = np.zeros(max(8, capacity), dtype=np.int64)
        self.ends[0] = self.ends[1] = self.buf.shape[0] // 4  # room for extendleft

    def __len__(self) -> int:
        e = self.ends
        return int(e[1] - e[0])

    def __bool__(self) -> bool:
        e = self.ends
        return bool(e[1] > e[0])

    def __iter__(self) -> Iterator[int]:
        e = self.ends
        return iter(self.buf[e[0] : e[1]].tolist())

    def __getitem__(self, i: int) -> int:
        e = self.ends
        n = int(e[1] - e[0])
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("IdQueue index out of range")
        return int(self.buf[e[0] + i])

    def __array__(self, dtype: object = None, copy: object = None) -> npt.NDArray[np.int64]:
        e = self.ends
        out = self.buf[e[0] : e[1]].copy()
        return out if dtype is None else out.astype(dtype)  # type: ignore[call-overload]

    def _recentre(self, n_front: int, n_back: int) -> None:
        """Move the ids so ``n_front`` fit before them and ``n_back`` after (growing)."""
        h, t = int(self.ends[0]), int(self.ends[1])
        n = t - h
        size = self.buf.shape[0]
        while size < 2 * (n + n_front + n_back) + 8:
            size *= 2
        new = np.zeros(size, dtype=np.int64)
        h2 = n_front + (size - n - n_front - n_back) // 4
        new[h2 : h2 + n] = self.buf[h:t]
        self.buf = new
        self.ends[0] = h2
        self.ends[1] = h2 + n

    def append(self, rid: int) -> None:
        """Add ``rid`` at the back."""
        t = int(self.ends[1])
        if t >= self.buf.shape[0]:
            self._recentre(0, 1)
            t = int(self.ends[1])
        self.buf[t] = rid
        self.ends[1] = t + 1

    def popleft(self) -> int:
        """Remove and return the front id."""
        h = int(self.ends[0])
        if h >= self.ends[1]:
            raise IndexError("pop from an empty IdQueue")
        self.ends[0] = h + 1
        return int(self.buf[h])

    def extendleft(self, ids: Iterable[int]) -> None:
        """Prepend each id in turn (as ``deque.extendleft``: the last one ends up first)."""
        vals = list(ids)
        if not vals:
            return
        if int(self.ends[0]) < len(vals):
            self._recentre(len(vals), 0)
        h = int(self.ends[0]) - len(vals)
        self.buf[h : h + len(vals)] = vals[::-1]
        self.ends[0] = h

    def clear(self) -> None:
        """Remove every id."""
        self.ends[1] = self.ends[0]
