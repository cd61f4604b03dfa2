"""Pinned outputs: the engine's request and step frames for fixed seeds, as hashes.

Performance work and refactoring of the engine (sdsim/engine/) must not change a single record:
these hashes are the records of the straightforward step-by-step engine, and every faster path
must reproduce them. A legitimate model change (new semantics, not speed) updates them on
purpose, saying so in its commit.

The requests frame's ``aborted`` column (no request is aborted in these runs) and the
``cached_tokens`` columns of both frames (prefix caching: nothing is cached here) are checked
apart and left out of the hash, so the hashes pinned before the columns existed still hold. The
runs switch prefix caching off (``server.prefix_caching: false``: today's engine, record for
record); with it on, a run without preemptions has nothing to hit and gives the same records,
while a preempted request re-hits its own cached blocks (tests/test_prefix_cache.py).
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pandas as pd
import pytest

from sdsim import simulate
from tests.conftest import small

# Small scenarios covering the engine's branches: pure decode with admissions (linear costs,
# unlimited KV), KV pressure with preemptions, adaptive k with per-request alpha and roofline
# costs, prefill-first with a tight cache. Seed 5 for all.
CASES: dict[str, dict[str, Any]] = {
    "moderate load": {},
    "kv pressure": {
        "workload.rate": 30.0,
        "server.num_gpu_blocks": 64,
        "workload.output_tokens": {"dist": "uniform", "low": 20, "high": 240},
    },
    "adaptive, beta alpha, roofline": {
        "spec.policy": "adaptive",
        "spec.k_max": 6,
        "acceptance.alpha": {"dist": "beta", "mean": 0.65, "concentration": 8},
        "costs.source": "roofline",
        "workload.rate": 6.0,
    },
    "prefill-first, tight kv": {
        "server.scheduler": "prefill-first",
        "server.num_gpu_blocks": 40,
        "server.max_num_seqs": 4,
        "workload.rate": 6.0,
    },
}

PINNED: dict[str, tuple[str, str]] = {
    "moderate load": ("5b867b6172cfc8a861bdd858", "40c72a06565a21fff3b21048"),
    "kv pressure": ("05ca4ef8ac3f441ff23fc405", "c6c49a456a54eec956cc1e24"),
    "adaptive, beta alpha, roofline": ("d7c630bdf0081d6cfefa147f", "359ffc7349772e26b5c583a8"),
    "prefill-first, tight kv": ("0cc1eaba8ac3ca2f7b486132", "49f0d6eb6e28e215350d6112"),
}


def frame_hash(df: pd.DataFrame) -> str:
    """SHA-256 of a frame's column names, dtypes and exact values (bytes), in order."""
    h = hashlib.sha256()
    h.update(str(len(df)).encode())
    for name in df.columns:
        col = df[name].to_numpy()
        h.update(f"{name}:{col.dtype}".encode())
        if col.dtype == object:
            h.update(repr(col.tolist()).encode())
        else:
            h.update(np.ascontiguousarray(col).tobytes())
    return h.hexdigest()[:24]


OFF = {"server.prefix_caching": False}


@pytest.mark.parametrize("case", list(CASES))
def test_frames_match_pinned_hashes(case: str) -> None:
    res = simulate(small(**CASES[case], **OFF), seed=5)
    got = (frame_hash(_pinned_columns(res.requests)), frame_hash(_pinned_steps(res.steps)))
    assert got == PINNED[case], f"{case}: {got}"


def _pinned_columns(requests: pd.DataFrame) -> pd.DataFrame:
    """The requests frame without ``aborted`` (asserted all false) and ``cached_tokens``
    (asserted all zero)."""
    assert requests.columns[-1] == "aborted" and not requests["aborted"].any()
    assert (requests["cached_tokens"] == 0).all()
    return requests.drop(columns=["aborted", "cached_tokens"])


def _pinned_steps(steps: pd.DataFrame) -> pd.DataFrame:
    """The steps frame without ``cached_tokens`` (asserted all zero)."""
    assert (steps["cached_tokens"] == 0).all()
    return steps.drop(columns="cached_tokens")


@pytest.mark.parametrize("case", ["moderate load", "kv pressure"])
def test_tape_prefetch_with_compaction_keeps_pinned_frames(
    case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tapes written ahead 7 request ids at a time into a 1024-entry arena: every few admissions
    # compact the arena, which must keep the prefetched tapes of requests not yet arrived.
    import sdsim.engine.server as server_mod
    import sdsim.engine.tape as tape_mod

    init = tape_mod.AcceptanceTape.__init__

    def tiny(self: Any, sampler: Any, k: Any, capacity: int = 0) -> None:
        init(self, sampler, k, capacity=1024)

    monkeypatch.setattr(tape_mod.AcceptanceTape, "__init__", tiny)
    monkeypatch.setattr(server_mod, "TAPE_PREFETCH", 7)
    res = simulate(small(**CASES[case], **OFF), seed=5)
    got = (frame_hash(_pinned_columns(res.requests)), frame_hash(_pinned_steps(res.steps)))
    assert got == PINNED[case]
