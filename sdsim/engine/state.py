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

__all__ = ["STEP_FIELDS", "RequestTable", "StepColumns"]

from collections.abc import Callable

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
        if capacity is None:
            n = len(wl)
            self.arrival = wl.arrival
            self.prompt = wl.prompt
            self.output = wl.output
            self.alpha: npt.NDArray[np.float64] | None = wl.alpha
            self.rid = np.arange(n, dtype=np.int64)
            self.prefill_target = wl.prompt.astype(np.int64).copy()
        else:
            n = max(16, int(capacity))
            self.arrival = np.full(n, np.nan)
            self.prompt = np.zeros(n, dtype=np.int64)
            self.output = np.ones(n, dtype=np.int64)
            self.alpha = None if wl.alpha is None else np.zeros(n)
            self.rid = np.full(n, -1, dtype=np.int64)
            self.prefill_target = np.zeros(n, dtype=np.int64)
        self.n = n
        for name, (dt, init) in _SLOT_FIELDS.items():
            setattr(self, name, np.full(n, init, dtype=dt))
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
        for name, (dt, init) in _SLOT_FIELDS.items():
            grown: npt.NDArray[np.generic] = np.full(2 * n, init, dtype=dt)
            grown[:n] = getattr(self, name)
            setattr(self, name, grown)
        for name in ("arrival", "prompt", "output", "alpha", "rid", "prefill_target", "acc_base"):
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

    Records are appended as tuples to a small Python buffer and moved into the numpy columns in
    blocks (one conversion per :data:`BUFFER` steps instead of one per field per step); blocks of
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
        self.cols: dict[str, npt.NDArray[np.generic]] = {
            name: np.zeros(self._cap, dtype=dt) for name, dt in STEP_FIELDS.items()
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

    def _reserve(self, m: int) -> None:
        if self._size + m <= self._cap:
            return
        if self._flush is not None and self._size:
            self._flush({k: v[: self._size] for k, v in self.cols.items()})
            self._size = 0
            if m <= self._cap:
                return
        cap = self._cap
        while cap < self._size + m:
            cap *= 2
        for name, col in self.cols.items():
            new = np.zeros(cap, dtype=col.dtype)
            new[: self._size] = col[: self._size]
            self.cols[name] = new
        self._cap = cap

    def _drain(self) -> None:
        buf = self._buf
        if not buf:
            return
        m = len(buf)
        self._reserve(m)
        i = self._size
        # one conversion for the whole buffer: rows -> columns
        block = np.array(buf, dtype=np.float64)
        for j, col in enumerate(self.cols.values()):
            col[i : i + m] = block[:, j]
        self._size += m
        buf.clear()

    def finish(self) -> None:
        """Move buffered records into the columns (and hand everything to ``flush`` if set)."""
        self._drain()
        if self._flush is not None and self._size:
            self._flush({k: v[: self._size] for k, v in self.cols.items()})
            self._size = 0

    def as_dict(self) -> dict[str, npt.NDArray[np.generic]]:
        """Trimmed copies of the columns."""
        self._drain()
        return {k: v[: self._size].copy() for k, v in self.cols.items()}
