"""sdsim: latency of speculative decoding under load.

A SimPy simulator of a continuous-batching LLM server with speculative decoding, a closed-form
model of the same server, and kernel measurements that check both.

Public API: :func:`load_scenario`, :func:`simulate`, :func:`step_time`, :func:`predict`,
:func:`fit_measurements`, :func:`load_sweep`, :func:`plan_sweep`, :func:`run_sweep`, the KV-cache
sizing helpers :func:`derive_num_gpu_blocks` and :func:`kv_bytes_per_token`, the report
readers :func:`load_report` and :func:`report_to_measurements`, and the types they return.
"""

from typing import Any as _Any

from sdsim._version import __version__
from sdsim.costs.build import build_cost_model as _build_cost_model
from sdsim.costs.step import StepShape as _StepShape
from sdsim.costs.step import StepTime
from sdsim.errors import ScenarioError
from sdsim.memory import derive_num_gpu_blocks, kv_bytes_per_token
from sdsim.reports import Report, load_report, report_to_measurements
from sdsim.scenario import Scenario, load_scenario
from sdsim.simulation import SimResult, simulate

# docs/design.md's short names for the same entry points
_ALIASES = {"fit": "fit_measurements"}


def __getattr__(name: str) -> _Any:
    # The analytic model and sweeps load on first use: the model pulls in scipy.stats (about a
    # second), sweeps pyarrow (and dask on demand), and a simulation needs neither. The sweep
    # module is `sdsim.sweep`, so its entry points are exposed under their own names: a function
    # `sdsim.sweep` would be shadowed by the submodule as soon as anything imports it.
    name = _ALIASES.get(name, name)
    if name in ("predict", "Prediction", "predict_grid"):
        from sdsim.analytic import prediction

        return getattr(prediction, name)
    if name in ("fit_measurements", "FitResult"):
        from sdsim.analytic import fitting

        return getattr(fitting, name)
    if name in ("load_sweep", "plan_sweep", "run_sweep"):
        from sdsim import sweep

        return getattr(sweep, name)
    raise AttributeError(f"module 'sdsim' has no attribute {name!r}")


def step_time(
    scenario: Scenario,
    decode_seqs: int,
    context_tokens: int,
    prefill_tokens: int = 0,
    k: int | None = None,
) -> StepTime:
    """What one engine step costs.

    Parameters
    ----------
    scenario
        Scenario whose cost model to use.
    decode_seqs
        Decoding requests in the step (B).
    context_tokens
        Mean KV length of those requests (C); the step reads B x C KV tokens.
    prefill_tokens
        Prompt tokens prefilled in the same step (one chunk, no cached prefix).
    k
        Draft length; defaults to the scenario's ``spec.k``.

    Returns
    -------
    StepTime
        total, prefill, draft, verify, overhead (seconds).
    """
    if decode_seqs < 0 or context_tokens < 0 or prefill_tokens < 0:
        raise ScenarioError("step_time", "decode_seqs, context_tokens, prefill_tokens must be >= 0")
    kk = scenario.spec.k if k is None else int(k)
    model = _build_cost_model(scenario)
    return model.step(
        _StepShape(
            decode_seqs=decode_seqs,
            decode_context=decode_seqs * context_tokens,
            k=kk,
            prefill_tokens=prefill_tokens,
            prefill_context=prefill_tokens,
            prefill_seqs=1 if prefill_tokens else 0,
        )
    )


__all__ = [
    "FitResult",
    "Prediction",
    "Report",
    "Scenario",
    "ScenarioError",
    "SimResult",
    "StepTime",
    "__version__",
    "derive_num_gpu_blocks",
    "fit",
    "fit_measurements",
    "kv_bytes_per_token",
    "load_report",
    "load_scenario",
    "load_sweep",
    "plan_sweep",
    "predict",
    "predict_grid",
    "report_to_measurements",
    "run_sweep",
    "simulate",
    "step_time",
]
