"""Build the StepCostModel a scenario asks for: calibrated, linear, roofline or a measured
profile."""

from __future__ import annotations

__all__ = [
    "build_calibrated_cost",
    "build_cost_model",
    "build_kernel_cost",
    "calibration_of",
    "drafter_of",
    "efficiency_of",
    "roofline_ops",
]

from dataclasses import replace
from typing import Any

from sdsim.costs.calibrated import CalibratedOps, CalibratedStepCost
from sdsim.costs.calibration import Calibration, load_calibration
from sdsim.costs.kernel import KernelStepCost
from sdsim.costs.profile import ProfileOps, read_bundle
from sdsim.costs.roofline import DEFAULT_EFFICIENCY, Efficiency, RooflineOps
from sdsim.costs.step import DEFAULT_OVERHEAD_S, LinearStepCost, StepCostModel
from sdsim.errors import ScenarioError
from sdsim.memory import gpu_of
from sdsim.models import Drafter, ModelSpec, drafter_tp, resolve_drafter, resolve_model
from sdsim.scenario import Scenario


def efficiency_of(scn: Scenario) -> Efficiency:
    """Default efficiency factors with the scenario's ``costs.roofline`` overrides applied."""
    knobs = {k: v for k, v in scn.costs.roofline.model_dump().items() if v is not None}
    return replace(DEFAULT_EFFICIENCY, **knobs) if knobs else DEFAULT_EFFICIENCY


def roofline_ops(scn: Scenario, model: ModelSpec, tp: int | None = None) -> RooflineOps:
    """Roofline operator costs of ``model`` on the scenario's GPU."""
    return RooflineOps(model, gpu_of(scn), scn.server.tp if tp is None else tp,
                       efficiency_of(scn), scn.costs.dtype)


def drafter_of(scn: Scenario, target: ModelSpec) -> Drafter:
    """The scenario's drafter, resolved against its target."""
    d = scn.drafter
    return resolve_drafter(d.kind, d.model, target, "drafter.model", d.draft_vocab)


def calibration_of(scn: Scenario, base: Calibration | None = None) -> Calibration:
    """The calibration a scenario prices with: ``base`` (default: ``costs.calibration``'s file,
    else the shipped one) with ``costs.overhead_s`` and the ``costs.calibrated`` overrides of the
    engine terms applied (``spec_step_s`` and ``draft_pass_s`` to the scenario's drafter kind).
    Attention and all-reduce overrides are applied by :func:`build_calibrated_cost`."""
    cal = base if base is not None else load_calibration(scn.costs.calibration)
    knobs = scn.costs.calibrated
    eng: dict[str, Any] = {}
    for name in ("step_s", "per_seq_s", "per_token_s", "ngram_context_token_s",
                 "graph_max_tokens", "eager_launch_s", "piecewise_layer_s"):
        val = getattr(knobs, name)
        if val is not None:
            eng[name] = val
    if scn.costs.overhead_s is not None:
        eng["step_s"] = scn.costs.overhead_s
    kind = scn.drafter.kind
    for name in ("spec_step_s", "draft_pass_s"):
        val = getattr(knobs, name)
        if val is not None:
            eng[name] = {**getattr(cal.engine, name).model_dump(), kind: val}
    return cal.with_engine(**eng) if eng else cal


def build_calibrated_cost(scn: Scenario, base: Calibration | None = None) -> CalibratedStepCost:
    """The calibrated step costs of the scenario's target and drafter on its GPU.

    Parameters
    ----------
    scn
        The scenario (GPU, models, ``server.tp``, ``drafter.tp``, ``costs``).
    base
        A calibration to use instead of ``costs.calibration`` (ablations, fits).

    Raises
    ------
    ScenarioError
        Unknown names, tp > 1 on a GPU without an interconnect, an unreadable or invalid
        calibration file.
    """
    gpu = gpu_of(scn)
    tp = scn.server.tp
    if tp > 1 and gpu.interconnect_gbps <= 0:
        raise ScenarioError("hardware.interconnect_gbps", "must be > 0 when server.tp > 1")
    cal = calibration_of(scn, base)
    terms = cal.gpu(gpu.name)
    knobs = scn.costs.calibrated
    att = {n: getattr(knobs, f"attention_{n}") for n in ("decode_memory", "verify_memory",
                                                         "prefill_compute")}
    att = {n: v for n, v in att.items() if v is not None}
    if att:
        terms = replace(terms, attention=terms.attention.model_copy(update=att))
    if knobs.allreduce_latency_s is not None:
        terms = replace(terms, allreduce=terms.allreduce.model_copy(
            update={"latency_s": knobs.allreduce_latency_s}))
    target = resolve_model(scn.target, "target")
    drafter = drafter_of(scn, target)
    dtype = scn.costs.dtype
    v_ops = CalibratedOps(target, gpu, tp, dtype, terms, cal.engine)
    d_ops = None
    if drafter.model is not None:
        d_ops = CalibratedOps(drafter.model, gpu, drafter_tp(drafter, tp, scn.drafter.tp), dtype,
                              terms, cal.engine)
    return CalibratedStepCost(v_ops, drafter, d_ops, cal.engine)


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
    drafter = drafter_of(scn, target)
    d_tp = drafter_tp(drafter, tp, scn.drafter.tp)
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
            if not drafter.is_head:
                raise
            # an EAGLE head has the verifier's layer shapes: time it with the verifier's curves
            d_ops = ProfileOps(bundle, target, d_tp, d_roof)
            d_ops.model = drafter.model
            d_ops.layers = drafter.model.layers
            d_ops.once_ops = d_roof.once_ops
    return KernelStepCost(v_ops, drafter, d_ops, overhead, source="profile")


def build_cost_model(scn: Scenario) -> StepCostModel:
    """The StepCostModel a scenario asks for.

    ``costs.source``: ``auto`` and ``calibrated`` give the calibrated model (kernel terms fitted
    to measured kernels, host terms to measured step times: :mod:`sdsim.costs.calibrated`);
    ``roofline`` the ideal spec-sheet roofline for the scenario's GPU and models; ``profile``
    reads a measured bundle (operator families it lacks come from the roofline); ``linear`` uses
    the scenario's coefficients.

    Raises
    ------
    ScenarioError
        When the requested source cannot be built (unknown names, missing bundle).
    """
    src = scn.costs.resolved_source
    if src == "linear":
        return LinearStepCost(scn.costs.linear, drafter_prefills=scn.drafter.kind != "ngram")
    if src == "calibrated":
        return build_calibrated_cost(scn)
    if src in ("roofline", "profile"):
        return build_kernel_cost(scn)
    raise ScenarioError("costs.source", f"{src!r} is not a cost source; use auto, calibrated, "
                        "linear, roofline or profile")
