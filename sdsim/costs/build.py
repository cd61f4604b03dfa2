"""Build the StepCostModel a scenario asks for: linear, roofline or a measured profile."""

from __future__ import annotations

__all__ = ["build_cost_model", "build_kernel_cost", "efficiency_of", "roofline_ops"]

from dataclasses import replace

from sdsim.costs.kernel import KernelStepCost
from sdsim.costs.profile import ProfileOps, read_bundle
from sdsim.costs.roofline import DEFAULT_EFFICIENCY, Efficiency, RooflineOps
from sdsim.costs.step import DEFAULT_OVERHEAD_S, LinearStepCost, StepCostModel
from sdsim.errors import ScenarioError
from sdsim.memory import gpu_of
from sdsim.models import ModelSpec, resolve_drafter, resolve_model
from sdsim.scenario import Scenario


def efficiency_of(scn: Scenario) -> Efficiency:
    """Default efficiency factors with the scenario's ``costs.roofline`` overrides applied."""
    knobs = {k: v for k, v in scn.costs.roofline.model_dump().items() if v is not None}
    return replace(DEFAULT_EFFICIENCY, **knobs) if knobs else DEFAULT_EFFICIENCY


def roofline_ops(scn: Scenario, model: ModelSpec, tp: int | None = None) -> RooflineOps:
    """Roofline operator costs of ``model`` on the scenario's GPU."""
    return RooflineOps(model, gpu_of(scn), scn.server.tp if tp is None else tp,
                       efficiency_of(scn), scn.costs.dtype)  # fmt: skip


def build_kernel_cost(scn: Scenario) -> KernelStepCost:
    """Roofline or profile step costs for the scenario's target and drafter.

    The drafter runs without tensor parallelism when it is a separate model (as vLLM runs draft
    models at TP 1 by default only when they fit; we take the scenario's tp for EAGLE heads, which
    live inside the verifier, and 1 for separate draft models).

    Raises
    ------
    ScenarioError
        Unknown names, tp > 1 on a GPU without an interconnect, missing or mismatched bundle.
    """
    gpu = gpu_of(scn)
    tp = scn.server.tp
    if tp > 1 and gpu.interconnect_gbps <= 0:
        raise ScenarioError("hardware.interconnect_gbps", "must be > 0 when server.tp > 1")
    target = resolve_model(scn.target, "target")
    drafter = resolve_drafter(scn.drafter.kind, scn.drafter.model, target)
    d_tp = tp if drafter.kind == "eagle" else 1
    overhead = DEFAULT_OVERHEAD_S if scn.costs.overhead_s is None else scn.costs.overhead_s
    v_roof = roofline_ops(scn, target, tp)
    d_roof = roofline_ops(scn, drafter.model, d_tp) if drafter.model is not None else None
    if scn.costs.resolved_source == "roofline":
        return KernelStepCost(v_roof, drafter, d_roof, overhead, source="roofline")
    assert scn.costs.profile is not None  # CostsSpec validation guarantees it
    bundle = read_bundle(scn.costs.profile)
    v_ops = ProfileOps(bundle, target, tp, v_roof)
    d_ops = None
    if drafter.model is not None and d_roof is not None:
        try:
            d_ops = ProfileOps(bundle, drafter.model, d_tp, d_roof, "drafter")
        except ScenarioError:
            if drafter.kind == "model":
                raise
            # an EAGLE head has the verifier's layer shapes: time it with the verifier's curves
            d_ops = ProfileOps(bundle, target, d_tp, d_roof)
            d_ops.model = drafter.model
            d_ops.layers = drafter.model.layers
            d_ops.once_ops = d_roof.once_ops
    return KernelStepCost(v_ops, drafter, d_ops, overhead, source="profile")


def build_cost_model(scn: Scenario) -> StepCostModel:
    """The StepCostModel a scenario asks for.

    ``costs.source``: ``auto`` and ``roofline`` give the spec-sheet roofline for the scenario's GPU
    and models; ``profile`` reads a measured bundle (operator families it lacks come from the
    roofline); ``linear`` uses the scenario's coefficients.

    Raises
    ------
    ScenarioError
        When the requested source cannot be built (unknown names, missing bundle).
    """
    src = scn.costs.resolved_source
    if src == "linear":
        return LinearStepCost(scn.costs.linear, drafter_prefills=scn.drafter.kind != "ngram")
    if src in ("roofline", "profile"):
        return build_kernel_cost(scn)
    raise ScenarioError("costs.source", f"{src!r} is not a cost source; use auto, linear, "
                        "roofline or profile")  # fmt: skip
