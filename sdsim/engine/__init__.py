"""The simulated serving engine: SimPy processes, batching, KV cache, router, request state."""

from sdsim.engine.draft_length import AdaptiveDraftLength
from sdsim.engine.kvcache import KVCache
from sdsim.engine.router import Router
from sdsim.engine.scheduler import Batch, form_batch
from sdsim.engine.server import Engine, run_simulation
from sdsim.records import SimRun

__all__ = [
    "AdaptiveDraftLength",
    "Batch",
    "Engine",
    "KVCache",
    "Router",
    "SimRun",
    "form_batch",
    "run_simulation",
]
