"""The simulated serving engine, one module per part (import them directly):

* :mod:`sdsim.engine.schema`: the record layout (requests, steps, engine scalars), readable
  without loading SimPy or numba;
* :mod:`sdsim.engine.step`, :mod:`sdsim.engine.scheduler`, :mod:`sdsim.engine.kvcache`: the step,
  batch formation and KV block accounting, compiled with numba;
* :mod:`sdsim.engine.server`: the SimPy processes (:class:`~sdsim.engine.server.Engine`, arrivals,
  :func:`~sdsim.engine.server.run_simulation`);
* :mod:`sdsim.engine.state`, :mod:`sdsim.engine.tape`, :mod:`sdsim.engine.prices`: request
  table, waiting queue and step log; acceptance tapes; the decode price cache;
* :mod:`sdsim.engine.router`, :mod:`sdsim.engine.draft_length`: replicas' router, adaptive k.
"""

__all__: list[str] = []
