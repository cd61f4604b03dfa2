"""Batch formation: which requests run in the next engine step, and with how many tokens.

The default policy follows vLLM v1: running requests first, in admission order, each decoding
request taking k + 1 tokens of the step's token budget (its draft tokens count) and each request
still prefilling taking what is left of its prompt, chunked to the budget; then waiting requests are
admitted FCFS while ``max_num_seqs`` and the budget allow, their prefill chunked too.
"""

from __future__ import annotations

__all__ = ["Batch", "form_batch"]

from collections import deque
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from sdsim.engine.state import RequestTable

_EMPTY = np.zeros(0, dtype=np.int64)


@dataclass
class Batch:
    """One step's work.

    Attributes
    ----------
    decode_ids
        Requests verifying k + 1 tokens this step.
    prefill_ids, prefill_chunks
        Requests with a prefill chunk this step, and the chunk sizes.
    admitted
        Request ids admitted from the waiting queue this step (already appended to the running set).
    """

    decode_ids: npt.NDArray[np.int64]
    prefill_ids: npt.NDArray[np.int64]
    prefill_chunks: npt.NDArray[np.int64]
    admitted: list[int]

    @property
    def num_seqs(self) -> int:
        return int(self.decode_ids.shape[0] + self.prefill_ids.shape[0])


def form_batch(
    run: npt.NDArray[np.int64],
    n_prefilling: int,
    waiting: deque[int],
    table: RequestTable,
    k: int,
    max_num_seqs: int,
    token_budget: int,
    policy: str = "vllm-v1",
) -> tuple[Batch, npt.NDArray[np.int64]]:
    """Form the next batch.

    Parameters
    ----------
    run
        Running request ids in admission order.
    n_prefilling
        How many of them are still prefilling (0 enables the all-decode fast path).
    waiting
        FCFS queue of waiting ids; admitted ids are popped from its front.
    table
        Request state.
    k
        Draft length this step.
    max_num_seqs, token_budget
        vLLM's ``max_num_seqs`` and ``max_num_batched_tokens``.
    policy
        ``"vllm-v1"`` (running first, then admissions) or ``"prefill-first"`` (admit and prefill
        waiting requests before decoding, as older engines did: a step with prefill work runs no
        decodes).

    Returns
    -------
    batch, run
        The batch and the running set with admitted ids appended.
    """
    per_decode = k + 1
    if policy == "prefill-first" and waiting and run.shape[0] < max_num_seqs:
        return _prefill_first(run, n_prefilling, waiting, table, max_num_seqs, token_budget)
    nrun = run.shape[0]
    budget = token_budget
    if n_prefilling == 0:
        # Fast path: everyone running is decoding.
        fit = min(nrun, budget // per_decode)
        decode_ids = run if fit == nrun else run[:fit]
        budget -= fit * per_decode
        prefill_ids = _EMPTY
        chunks = _EMPTY
        blocked = fit < nrun
    else:
        rem = table.prefill_target[run] - table.prefilled[run]
        need = np.where(rem > 0, rem, per_decode)
        cum = np.cumsum(need)
        full = cum <= budget
        nfull = int(full.sum()) if full.all() else int(np.argmin(full))
        sel = run[:nfull]
        is_pf = rem[:nfull] > 0
        decode_ids = sel[~is_pf]
        pf_ids = sel[is_pf]
        pf_chunks = rem[:nfull][is_pf]
        budget -= int(cum[nfull - 1]) if nfull > 0 else 0
        blocked = nfull < nrun
        if blocked and rem[nfull] > 0 and budget > 0:
            # the first request that does not fit is prefilling: give it a partial chunk
            pf_ids = np.append(pf_ids, run[nfull])
            pf_chunks = np.append(pf_chunks, budget)
            budget = 0
        prefill_ids = pf_ids
        chunks = pf_chunks
    admitted: list[int] = []
    if not blocked and budget > 0 and waiting and nrun < max_num_seqs:
        new_ids: list[int] = []
        new_chunks: list[int] = []
        while waiting and nrun + len(admitted) < max_num_seqs and budget > 0:
            rid = waiting.popleft()
            left = int(table.prefill_target[rid] - table.prefilled[rid])
            c = min(left, budget)
            budget -= c
            admitted.append(rid)
            new_ids.append(rid)
            new_chunks.append(c)
        if admitted:
            prefill_ids = np.concatenate([prefill_ids, np.asarray(new_ids, dtype=np.int64)])
            chunks = np.concatenate([chunks, np.asarray(new_chunks, dtype=np.int64)])
            run = np.concatenate([run, np.asarray(admitted, dtype=np.int64)])
    return Batch(decode_ids, prefill_ids, chunks, admitted), run


def _prefill_first(
    run: npt.NDArray[np.int64],
    n_prefilling: int,
    waiting: deque[int],
    table: RequestTable,
    max_num_seqs: int,
    token_budget: int,
) -> tuple[Batch, npt.NDArray[np.int64]]:
    budget = token_budget
    ids: list[int] = []
    chunks: list[int] = []
    if n_prefilling:
        rem = table.prefill_target[run] - table.prefilled[run]
        for rid, r in zip(run[rem > 0].tolist(), rem[rem > 0].tolist(), strict=True):
            if budget <= 0:
                break
            c = min(int(r), budget)
            ids.append(rid)
            chunks.append(c)
            budget -= c
    admitted: list[int] = []
    while waiting and run.shape[0] + len(admitted) < max_num_seqs and budget > 0:
        rid = waiting.popleft()
        c = min(int(table.prefill_target[rid] - table.prefilled[rid]), budget)
        budget -= c
        admitted.append(rid)
        ids.append(rid)
        chunks.append(c)
    if admitted:
        run = np.concatenate([run, np.asarray(admitted, dtype=np.int64)])
    return (
        Batch(
            _EMPTY, np.asarray(ids, dtype=np.int64), np.asarray(chunks, dtype=np.int64), admitted
        ),
        run,
    )
