"""The simulated serving engine: SimPy processes, batch formation, request state."""

from sdsim.engine.scheduler import Batch, form_batch
from sdsim.engine.server import Engine, SimRun, run_simulation

__all__ = ["Batch", "Engine", "SimRun", "form_batch", "run_simulation"]
