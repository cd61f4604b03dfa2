"""The simulated serving engine: SimPy processes, the step (batching, KV cache, outcome), router,
request state.

Submodules load on first use, so :mod:`sdsim.engine.schema` (the record layout) can be read
without loading SimPy or numba.
"""

from __future__ import annotations

__all__ = [
    "AdaptiveDraftLength",
    "Batch",
    "Engine",
    "KVCache",
    "Router",
    "SimRun",
    "derive_num_gpu_blocks",
    "kv_bytes_per_token",
    "run_simulation",
]

import importlib
from typing import Any

_WHERE = {
    "AdaptiveDraftLength": "sdsim.engine.draft_length",
    "Batch": "sdsim.engine.scheduler",
    "Engine": "sdsim.engine.server",
    "KVCache": "sdsim.engine.kvcache",
    "Router": "sdsim.engine.router",
    "SimRun": "sdsim.engine.server",
    "derive_num_gpu_blocks": "sdsim.engine.kvcache",
    "kv_bytes_per_token": "sdsim.engine.kvcache",
    "run_simulation": "sdsim.engine.server",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'sdsim.engine' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
