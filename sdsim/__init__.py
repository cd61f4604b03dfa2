"""sdsim: latency of speculative decoding under load.

A SimPy simulator of a continuous-batching LLM server with speculative decoding, a closed-form
model of the same server, and kernel measurements that check both.

Public API: :func:`load_scenario`, :func:`simulate`, :func:`step_time`, :func:`load_report`,
:func:`report_to_measurements`, and the types they return.
"""

from sdsim.costs.step import StepTime
from sdsim.errors import ScenarioError
from sdsim.reports import Report, load_report, report_to_measurements
from sdsim.scenario import Scenario, load_scenario
from sdsim.simulation import SimResult, simulate

__version__ = "0.1.0"


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
    from sdsim.costs.step import StepShape, build_cost_model

    if decode_seqs < 0 or context_tokens < 0 or prefill_tokens < 0:
        raise ScenarioError("step_time", "decode_seqs, context_tokens, prefill_tokens must be >= 0")
    kk = scenario.spec.k if k is None else int(k)
    model = build_cost_model(scenario)
    return model.step(
        StepShape(
            decode_seqs=decode_seqs,
            decode_context=decode_seqs * context_tokens,
            k=kk,
            prefill_tokens=prefill_tokens,
            prefill_context=prefill_tokens,
            prefill_seqs=1 if prefill_tokens else 0,
        )
    )


__all__ = [
    "Report",
    "Scenario",
    "ScenarioError",
    "SimResult",
    "StepTime",
    "__version__",
    "load_report",
    "load_scenario",
    "report_to_measurements",
    "simulate",
    "step_time",
]
