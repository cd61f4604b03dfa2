"""Per-request state as arrays (struct of arrays), and growable step-record columns.

The engine never touches a per-request Python object in its step loop: every request attribute is
an entry of a numpy array indexed by request id, so a step's work is a handful of vectorised
operations over the ids in the batch.
"""

from __future__ import annotations

__all__ = ["STEP_FIELDS", "RequestTable", "StepColumns"]

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


class RequestTable:
    """All requests' state, one array entry per request id (arrival order).

    Attributes hold the DESIGN.md request record fields plus engine bookkeeping:
    ``prefilled``/``prefill_target`` (prompt tokens computed so far / to compute, the target growing
    to prompt + generated after a preemption by recomputation) and ``decode_counter`` (how many
    acceptance draws the request has used; never reset, so draws stay fresh after preemption),
    ``kv_blocks`` (KV-cache blocks held now) and ``replica`` (where the router sent it).
    """

    def __init__(self, wl: Workload) -> None:
        n = len(wl)
        self.n = n
        self.arrival = wl.arrival
        self.prompt = wl.prompt
        self.output = wl.output
        self.alpha: npt.NDArray[np.float64] | None = wl.alpha
        nan = np.full(n, np.nan)
        self.first_scheduled = nan.copy()
        self.first_token = nan.copy()
        self.finish = nan.copy()
        self.prefilled = np.zeros(n, dtype=np.int64)
        self.prefill_target = wl.prompt.astype(np.int64).copy()
        self.generated = np.zeros(n, dtype=np.int64)
        self.steps = np.zeros(n, dtype=np.int64)
        self.drafted = np.zeros(n, dtype=np.int64)
        self.accepted = np.zeros(n, dtype=np.int64)
        self.preemptions = np.zeros(n, dtype=np.int64)
        self.decode_counter = np.zeros(n, dtype=np.int64)
        self.replica = np.zeros(n, dtype=np.int64)
        self.kv_blocks = np.zeros(n, dtype=np.int64)


class StepColumns:
    """Preallocated, doubling columns for step records (no DataFrame work in the loop)."""

    def __init__(self, capacity: int = 4096) -> None:
        self.size = 0
        self._cap = max(16, capacity)
        self.cols: dict[str, npt.NDArray[np.generic]] = {
            name: np.zeros(self._cap, dtype=dt) for name, dt in STEP_FIELDS.items()
        }

    def append(self, values: tuple[float | int, ...]) -> None:
        """Append one record; ``values`` in :data:`STEP_FIELDS` order."""
        if self.size == self._cap:
            self._cap *= 2
            for name, col in self.cols.items():
                new = np.zeros(self._cap, dtype=col.dtype)
                new[: self.size] = col[: self.size]
                self.cols[name] = new
        i = self.size
        for col, v in zip(self.cols.values(), values, strict=True):
            col[i] = v
        self.size += 1

    def as_dict(self) -> dict[str, npt.NDArray[np.generic]]:
        """Trimmed copies of the columns."""
        return {k: v[: self.size].copy() for k, v in self.cols.items()}
