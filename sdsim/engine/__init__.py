"""The simulated serving engine: SimPy processes, batching, KV cache, router, request state."""

from sdsim.engine.draft_length import AdaptiveDraftLength
from sdsim.engine.kvcache import KVCache, derive_num_gpu_blocks, kv_bytes_per_token
from sdsim.engine.router import Router
from sdsim.engine.scheduler import Batch, form_batch
from sdsim.engine.server import Engine, SimRun, run_simulation

__all__ = [
    "AdaptiveDraftLength",
    "Batch",
    "Engine",
    "KVCache",
    "Router",
    "SimRun",
    "derive_num_gpu_blocks",
    "form_batch",
    "kv_bytes_per_token",
    "run_simulation",
]
