"""Scenario: the validated, frozen description of one what-if experiment.

A scenario is loaded from YAML, optionally changed by dotted overrides (``workload.rate=4``), and
validated by pydantic v2 models that refuse unknown names (``extra="forbid"``) and are frozen, so a
scenario cannot drift while a simulation reads it. Every bad value becomes a one-line
:class:`~sdsim.errors.ScenarioError` naming the field.
"""

from __future__ import annotations

__all__ = [
    "BLOCK_SIZES",
    "MAX_REQUESTS",
    "AcceptanceSpec",
    "AnalyticSpec",
    "BetaAlpha",
    "CalibratedKnobs",
    "CostsSpec",
    "DrafterSpec",
    "EmpiricalLength",
    "ExponentialTime",
    "FixedLength",
    "FixedTime",
    "GeometricLength",
    "HardwareSpec",
    "LengthSpec",
    "LimitsSpec",
    "LinearCosts",
    "LognormalLength",
    "LognormalTime",
    "RooflineKnobs",
    "Scenario",
    "ServerSpec",
    "SessionSpec",
    "SharedPrefixSpec",
    "SloSpec",
    "SpecSpec",
    "TimeSpec",
    "TraceLength",
    "UniformLength",
    "WorkloadSpec",
    "apply_overrides",
    "load_scenario",
    "parse_set_options",
    "referenced_files",
    "scenario_from_dict",
    "scenario_hash",
    "scenario_schema",
]

import copy
import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from sdsim.errors import ScenarioError, format_validation_error
from sdsim.inputs import file_digest, load_yaml
from sdsim.memory import check_registry
from sdsim.models import MODELS
from sdsim.spec_base import Frozen as _Frozen
from sdsim.spec_base import PathStr
from sdsim.workload_spec import (
    MAX_REQUESTS,
    EmpiricalLength,
    ExponentialTime,
    FixedLength,
    FixedTime,
    GeometricLength,
    LengthSpec,
    LognormalLength,
    LognormalTime,
    SessionSpec,
    SharedPrefixSpec,
    TimeSpec,
    TraceLength,
    UniformLength,
    WorkloadSpec,
)

# Draft lengths beyond this are not a real configuration: acceptance probability to the 32nd power
# is negligible for any drafter, and verify widths that large would be a prefill, not a decode step.
MAX_K = 32

# KV block sizes vLLM accepts (``CacheConfig.BlockSize`` in vllm/config/cache.py).
BLOCK_SIZES = (1, 8, 16, 32, 64, 128, 256)

# Simulated clocks stay below this many seconds (about 3 years): float64 then resolves
# ~15 ns, far below any step time. A workload whose arrivals would run longer is refused.
MAX_SPAN_S = 1e8

# Upper bounds of the server's integer limits: beyond any real engine, and small enough that the
# compiled engine's int64 arithmetic on them cannot overflow.
MAX_NUM_SEQS = 1 << 20
MAX_BATCHED_TOKENS = 1 << 30
MAX_GPU_BLOCKS = 1 << 40

# Lowest efficiency factor accepted (0.1% of a spec-sheet peak): a smaller one prices steps at
# centuries, and such runs finish nothing.
MIN_EFFICIENCY = 1e-3




# --------------------------------------------------------------------------- acceptance


class BetaAlpha(_Frozen):
    """Per-request acceptance probability drawn from Beta(mean, concentration)."""

    dist: Literal["beta"] = "beta"
    mean: float = Field(gt=0, lt=1)
    concentration: float = Field(
        ge=1e-3, le=1e9, description="a + b of the beta law; larger = tighter"
    )

    @property
    def a(self) -> float:
        return self.mean * self.concentration

    @property
    def b(self) -> float:
        return (1 - self.mean) * self.concentration


class AcceptanceSpec(_Frozen):
    """How draft tokens are accepted.

    ``alpha`` is either one probability (i.i.d. geometric acceptance), a list of per-position
    probabilities (position j accepted with probability alpha[j] given all before it were;
    the list must be at least ``spec.k`` long), or ``{dist: beta, mean, concentration}`` for a
    per-request alpha. ``preset: NAME`` takes the per-position alpha measured for a
    target/drafter/dataset pair (``sdsim acceptance list``); the resolved scenario keeps both.
    ``alpha`` is the model parameter, not the draft acceptance rate a server reports (accepted
    over drafted tokens): ``sdsim acceptance fit`` converts one into the other.
    """

    alpha: (
        Annotated[float, Field(ge=0, le=1)] | list[Annotated[float, Field(ge=0, le=1)]] | BetaAlpha
    ) = 0.7
    preset: str | None = Field(
        default=None, description="measured acceptance preset (sdsim acceptance list)"
    )

    @model_validator(mode="before")
    @classmethod
    def _resolve_preset(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("preset") is None:
            return data
        from sdsim.acceptance_presets import get_preset

        name = data["preset"]
        try:
            alpha = list(get_preset(str(name)).alpha)
        except KeyError as exc:
            raise ValueError(f"preset: {exc.args[0]}") from None
        given = data.get("alpha")
        if given is not None and given != alpha:
            raise ValueError(
                f"alpha: {given!r} disagrees with preset {name!r} (alpha {alpha}); give one of "
                "the two (an override of acceptance.alpha replaces the preset)"
            )
        return {**data, "alpha": alpha}

    @field_validator("alpha", mode="before")
    @classmethod
    def _alpha_shape(cls, v: Any) -> Any:
        if isinstance(v, bool):
            raise ValueError("must be a probability in [0, 1], a list of them, or a beta law")
        if isinstance(v, list) and not v:
            raise ValueError("per-position list must not be empty")
        return v

    @property
    def mean_alpha(self) -> float:
        """A representative scalar alpha (for display and for the analytic model's first cut)."""
        a = self.alpha
        if isinstance(a, BetaAlpha):
            return a.mean
        if isinstance(a, list):
            return float(sum(a) / len(a))
        return float(a)


# --------------------------------------------------------------------------- model pieces


class DrafterSpec(_Frozen):
    """The draft proposer: a separate small model, an EAGLE-1 head (``eagle``), an EAGLE-3 head
    (``eagle3``: fuses three of the verifier's hidden layers, drafts over its own smaller
    vocabulary) or n-gram lookup."""

    kind: Literal["model", "eagle", "eagle3", "ngram"] = "eagle"
    model: PathStr | None = Field(default=None, description="registry name or config.json path")
    tp: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="kind 'model': the draft model's tensor-parallel degree (default 1; heads "
        "always run at server.tp)",
    )
    draft_vocab: int | None = Field(
        default=None,
        ge=1,
        le=10_000_000,
        description="kind 'eagle3': the head's draft vocabulary (default 32000)",
    )

    @model_validator(mode="after")
    def _needs_model(self) -> DrafterSpec:
        if self.kind == "model" and not self.model:
            raise ScenarioError(
                "model", "kind 'model' needs `model:` (a registry name or config.json path)"
            )
        if self.tp is not None and self.kind != "model":
            raise ScenarioError("tp", "applies to kind 'model' only (heads run at server.tp)")
        if self.draft_vocab is not None and self.kind != "eagle3":
            raise ScenarioError("draft_vocab", "applies to kind 'eagle3' only")
        return self


class SpecSpec(_Frozen):
    """Speculative decoding settings.

    ``policy: fixed`` drafts ``k`` tokens every step. ``policy: adaptive`` picks k in
    ``0..k_max`` before every step from the observed acceptance rate and the current batch
    (maximising expected tokens per second of step time), starting from ``k``.
    """

    k: int = Field(default=4, ge=0, le=MAX_K, description="draft tokens per step; 0 = off")
    policy: Literal["fixed", "adaptive"] = "fixed"
    k_max: int = Field(default=8, ge=1, le=MAX_K, description="largest k the adaptive policy tries")
    alpha_halflife_tokens: float = Field(
        default=256.0,
        gt=0,
        le=1e9,
        description="adaptive policy: drafted tokens over which an acceptance observation's "
        "weight halves",
    )


_Blocks = Annotated[int, Field(ge=1, le=MAX_GPU_BLOCKS)]


class ServerSpec(_Frozen):
    """Engine limits (vLLM's names), replicas and their router.

    ``num_gpu_blocks`` is the KV-cache capacity in blocks of ``block_size`` tokens, per replica
    (what vLLM logs at start-up; preferred when known). ``null`` (the default) derives it like a
    real engine: GPU memory x ``gpu_memory_utilization`` - weights of verifier and drafter (per
    tensor-parallel shard) - ``activation_reserve_gb``, divided by the KV bytes of one token
    (verifier and drafter caches both count); see :mod:`sdsim.memory`. ``unlimited`` switches the
    limit off (block accounting still runs). ``scheduler`` is ``vllm-v1`` (running
    requests first, chunked prefill, preemption by recomputation when the KV cache is short) or
    ``prefill-first`` (older engines). ``api_delay_s`` delays every request before it reaches the
    waiting queue (API server, tokenisation); per-step CPU overhead belongs to the cost model.
    """

    max_num_seqs: int = Field(default=256, ge=1, le=MAX_NUM_SEQS)
    max_num_batched_tokens: int = Field(default=8192, ge=1, le=MAX_BATCHED_TOKENS)
    block_size: int = Field(
        default=16,
        description=f"tokens per KV block; vLLM allows {', '.join(map(str, BLOCK_SIZES))}",
    )
    num_gpu_blocks: _Blocks | Literal["unlimited"] | None = Field(
        default=None,
        description="KV blocks per replica; null = derive from GPU memory, 'unlimited' = no limit",
    )
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    activation_reserve_gb: float = Field(
        default=2.0,
        ge=0,
        le=1e4,
        description="GB per GPU kept for activations, CUDA graphs and the sampler when the KV "
        "capacity is derived (vLLM's profiling run measures ~1.2-1.5 GiB for an 8B model at "
        "8192 batched tokens)",
    )
    tp: int = Field(default=1, ge=1, le=64)
    replicas: int = Field(default=1, ge=1, le=4096)
    router: Literal["round-robin", "least-outstanding", "random", "prefix-affinity"] = (
        "round-robin"
    )
    affinity_imbalance: int = Field(
        default=16,
        ge=0,
        le=1_000_000,
        description="prefix-affinity router: route to the least-outstanding replica instead when "
        "the replica the prefix names has more than this many requests outstanding beyond it",
    )
    scheduler: Literal["vllm-v1", "prefill-first"] = "vllm-v1"
    prefix_caching: bool = Field(
        default=True,
        description="vLLM's automatic prefix caching (on by default in V1): full KV blocks of "
        "a shared prompt prefix or an earlier turn are reused instead of prefilled again",
    )
    api_delay_s: float = Field(
        default=0.0,
        ge=0,
        le=3600,
        description="per-request API/tokenisation delay before admission",
    )

    @field_validator("block_size")
    @classmethod
    def _block_size(cls, v: int) -> int:
        if v not in BLOCK_SIZES:
            raise ValueError(
                f"must be one of {', '.join(map(str, BLOCK_SIZES))} (vLLM's block sizes), got {v}"
            )
        return v


class LinearCosts(_Frozen):
    """The `linear` step-cost model: the form practitioners fit to real engines.

    Verifier pass: ``verify_fixed_s + verify_per_token_s * tokens + verify_per_kv_token_s * kv``
    where ``tokens`` is every token in the step's forward pass (prefill chunk tokens and k+1 per
    decoding request) and ``kv`` the KV-cache tokens read. Each of the k drafter passes costs
    ``draft_fixed_s + draft_per_token_s * B + draft_per_kv_token_s * kv_draft``. The drafter also
    processes prefill tokens once (``draft_per_token_s`` each). ``overhead_s`` is CPU time per step.
    Defaults are an 8B-class verifier with an EAGLE-style head on an H100-class GPU.
    """

    verify_fixed_s: float = Field(default=6.0e-3, ge=0, le=60)
    verify_per_token_s: float = Field(default=1.5e-5, ge=0, le=1)
    verify_per_kv_token_s: float = Field(default=4.0e-8, ge=0, le=1e-3)
    draft_fixed_s: float = Field(default=4.0e-4, ge=0, le=60)
    draft_per_token_s: float = Field(default=1.0e-6, ge=0, le=1)
    draft_per_kv_token_s: float = Field(default=1.0e-9, ge=0, le=1e-3)
    overhead_s: float = Field(default=5.0e-4, ge=0, le=60)


class RooflineKnobs(_Frozen):
    """Overrides of the roofline's efficiency factors (``None`` = the documented default in
    :class:`sdsim.costs.roofline.Efficiency`)."""

    gemm_compute: float | None = Field(default=None, ge=MIN_EFFICIENCY, le=1)
    moe_compute: float | None = Field(default=None, ge=MIN_EFFICIENCY, le=1)
    attention_compute: float | None = Field(default=None, ge=MIN_EFFICIENCY, le=1)
    memory: float | None = Field(default=None, ge=MIN_EFFICIENCY, le=1)
    attention_memory: float | None = Field(default=None, ge=MIN_EFFICIENCY, le=1)
    link: float | None = Field(default=None, ge=MIN_EFFICIENCY, le=1)
    launch_floor_s: float | None = Field(default=None, ge=0, le=1e-2)
    allreduce_latency_s: float | None = Field(default=None, ge=0, le=1e-2)


class CalibratedKnobs(_Frozen):
    """Overrides of the calibrated model's terms (``None`` = the calibration file's value; see
    :class:`sdsim.costs.calibration.EngineTerms` and :class:`~sdsim.costs.calibration.
    AttentionTerms` for what each means and where its default comes from). ``spec_step_s`` and
    ``draft_pass_s`` apply to the scenario's drafter kind."""

    step_s: float | None = Field(default=None, ge=0, le=1.0)
    per_seq_s: float | None = Field(default=None, ge=0, le=1.0)
    per_token_s: float | None = Field(default=None, ge=0, le=1.0)
    spec_step_s: float | None = Field(default=None, ge=0, le=1.0)
    draft_pass_s: float | None = Field(default=None, ge=0, le=1.0)
    ngram_context_token_s: float | None = Field(default=None, ge=0, le=1e-3)
    graph_max_tokens: int | None = Field(default=None, ge=0, le=1_000_000)
    eager_launch_s: float | None = Field(default=None, ge=0, le=1e-2)
    piecewise_layer_s: float | None = Field(default=None, ge=0, le=1e-2)
    attention_decode_memory: float | None = Field(default=None, ge=MIN_EFFICIENCY, le=1)
    attention_verify_memory: float | None = Field(default=None, ge=MIN_EFFICIENCY, le=1)
    attention_prefill_compute: float | None = Field(default=None, ge=MIN_EFFICIENCY, le=1)
    allreduce_latency_s: float | None = Field(default=None, ge=0, le=1e-2)


class CostsSpec(_Frozen):
    """Where step costs come from.

    ``auto`` (the default) is ``calibrated``: kernel costs from the GPU's spec sheet and the
    models' architectures with efficiencies fitted to measured kernels, plus the per-pass,
    per-request and per-token host costs of a real serving engine fitted to public measurements
    (the shipped calibration, or the file ``calibration`` names; ``calibrated`` overrides single
    terms). ``roofline`` is the ideal spec-sheet roofline with a fixed CPU overhead per step;
    ``linear`` uses the coefficients in ``linear``; ``profile`` reads the measured profile bundle
    at ``profile``.
    """

    source: Literal["auto", "linear", "roofline", "profile", "calibrated"] = "auto"
    linear: LinearCosts = LinearCosts()
    profile: PathStr | None = Field(default=None, description="profile bundle directory")
    calibration: PathStr | None = Field(
        default=None,
        description="calibration file (`sdsim calibrate --out`); default: the shipped one",
    )
    overhead_s: float | None = Field(
        default=None,
        ge=0,
        le=60,
        description="CPU overhead per step for roofline/profile sources; for the calibrated "
        "source, the per-step host cost (calibrated.step_s)",
    )
    dtype: Literal["bf16", "fp8"] = Field(
        default="bf16", description="roofline precision: weights, KV cache and peak FLOPs"
    )
    roofline: RooflineKnobs = RooflineKnobs()
    calibrated: CalibratedKnobs = CalibratedKnobs()

    @model_validator(mode="after")
    def _profile_needs_path(self) -> CostsSpec:
        if self.source == "profile" and not self.profile:
            raise ScenarioError(
                "profile", "source 'profile' needs `profile:` (a profile bundle directory)"
            )
        return self

    @property
    def resolved_source(self) -> str:
        """``auto`` resolved: the calibrated model."""
        return "calibrated" if self.source == "auto" else self.source


# --------------------------------------------------------------------------- hardware


class HardwareSpec(_Frozen):
    """An inline GPU spec sheet (instead of a registry name): dense peaks and memory."""

    name: str = "custom"
    bf16_tflops: float = Field(gt=0, le=1e6, description="dense BF16 tensor TFLOPS")
    fp8_tflops: float | None = Field(default=None, gt=0, le=1e6, description="dense FP8 TFLOPS")
    hbm_gb: float = Field(gt=0, le=1e5, description="device memory, GB")
    hbm_tbps: float = Field(gt=0, le=1e3, description="memory bandwidth, TB/s")
    interconnect_gbps: float = Field(
        default=0.0, ge=0, le=1e6, description="GPU-to-GPU GB/s, both directions together"
    )
    vendor: str = "custom"


# --------------------------------------------------------------------------- SLOs


class SloSpec(_Frozen):
    """Latency objectives, in seconds; unset ones do not apply.

    Each field bounds the run statistic of the same name (``ttft_p99: 0.5``: the 99th
    percentile of TTFT at most 0.5 s). The bound also applies to every request: a request meets
    the SLOs when each latency that has an objective is within its bound, and ``goodput_rps``
    counts those per second (:mod:`sdsim.slo`).
    """

    e2e_mean: float | None = Field(default=None, gt=0, le=1e6, description="mean e2e, s")
    e2e_p50: float | None = Field(default=None, gt=0, le=1e6, description="median e2e, s")
    e2e_p90: float | None = Field(default=None, gt=0, le=1e6, description="p90 e2e, s")
    e2e_p99: float | None = Field(default=None, gt=0, le=1e6, description="p99 e2e, s")
    ttft_mean: float | None = Field(default=None, gt=0, le=1e6, description="mean TTFT, s")
    ttft_p50: float | None = Field(default=None, gt=0, le=1e6, description="median TTFT, s")
    ttft_p90: float | None = Field(default=None, gt=0, le=1e6, description="p90 TTFT, s")
    ttft_p99: float | None = Field(default=None, gt=0, le=1e6, description="p99 TTFT, s")
    tpot_mean: float | None = Field(default=None, gt=0, le=1e6, description="mean TPOT, s")
    tpot_p50: float | None = Field(default=None, gt=0, le=1e6, description="median TPOT, s")
    tpot_p90: float | None = Field(default=None, gt=0, le=1e6, description="p90 TPOT, s")
    tpot_p99: float | None = Field(default=None, gt=0, le=1e6, description="p99 TPOT, s")


# --------------------------------------------------------------------------- workload


class AnalyticSpec(_Frozen):
    """Inputs of the closed-form model that no other section gives."""

    prefix_hit_rate: float | None = Field(
        default=None,
        ge=0,
        lt=1,
        description="share of prompt tokens served from the prefix cache (the model's input; "
        "null: none)",
    )


class LimitsSpec(_Frozen):
    """Bounds that stop an overloaded run instead of letting its queue grow forever."""

    max_waiting: int = Field(
        default=20_000,
        ge=1,
        le=1_000_000_000,
        description="stop when more than this many wait (all replicas)",
    )
    max_sim_time_s: float | None = Field(default=None, gt=0, le=MAX_SPAN_S)


class Scenario(_Frozen):
    """One what-if experiment: hardware, models, speculation, server, costs, workload, seed."""

    name: str = "scenario"
    description: str = ""
    hardware: str | HardwareSpec = Field(
        default="h100-sxm", description="GPU registry name or an inline spec sheet"
    )
    target: PathStr = "llama-3.1-8b"
    drafter: DrafterSpec = DrafterSpec()
    spec: SpecSpec = SpecSpec()
    acceptance: AcceptanceSpec = AcceptanceSpec()
    server: ServerSpec = ServerSpec()
    costs: CostsSpec = CostsSpec()
    workload: WorkloadSpec = WorkloadSpec()
    limits: LimitsSpec = LimitsSpec()
    analytic: AnalyticSpec = AnalyticSpec()
    slo: SloSpec = SloSpec()
    warmup_requests: int = Field(default=100, ge=0)
    seed: int = Field(default=0, ge=0, lt=2**63)

    @model_validator(mode="after")
    def _cross_checks(self) -> Scenario:
        a = self.acceptance.alpha
        preset = self.acceptance.preset
        if preset is not None and isinstance(a, list):
            need = max(self.spec.k, self.spec.k_max if self.spec.policy == "adaptive" else 0)
            if len(a) < need:
                raise ValueError(
                    f"acceptance.preset: {preset!r} is measured for draft lengths up to "
                    f"{len(a)}; spec.k{'_max' if need > self.spec.k else ''} is {need} (lower it, "
                    "or give acceptance.alpha)"
                )
        if isinstance(a, list) and len(a) < max(self.spec.k, 1):
            raise ScenarioError(
                "acceptance.alpha",
                f"per-position list has {len(a)} entries, needs >= spec.k ({self.spec.k})",
            )
        if (
            isinstance(a, list)
            and self.spec.policy == "adaptive"
            and len(a) < max(self.spec.k, self.spec.k_max)
        ):
            raise ScenarioError(
                "acceptance.alpha",
                f"per-position list has {len(a)} entries, the adaptive policy needs >= "
                f"spec.k_max ({self.spec.k_max})",
            )
        k_top = max(self.spec.k, self.spec.k_max) if self.spec.policy == "adaptive" else self.spec.k
        if self.server.max_num_batched_tokens < k_top + 1:
            raise ScenarioError(
                "server.max_num_batched_tokens",
                f"must be >= k + 1 = {k_top + 1} (a decoding request verifies k + 1 tokens in "
                f"one step), got {self.server.max_num_batched_tokens}",
            )
        wl = self.workload
        if self.warmup_requests >= wl.num_requests and wl.arrival not in ("trace", "replay"):
            raise ScenarioError(
                "warmup_requests", f"must be < workload.num_requests ({wl.num_requests})"
            )
        if (
            wl.arrival in ("poisson", "constant", "gamma")
            and wl.num_requests / wl.rate > MAX_SPAN_S
        ):
            raise ScenarioError(
                "workload.rate",
                f"{wl.num_requests} requests at {wl.rate:g} req/s arrive over "
                f"{wl.num_requests / wl.rate:.3g} s; at most {MAX_SPAN_S:g} s is simulated "
                f"(raise the rate to >= {wl.num_requests / MAX_SPAN_S:.3g} req/s or send fewer "
                "requests)",
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        """The resolved scenario as plain data (what `sdsim run --out` writes)."""
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        """The resolved scenario as YAML."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def with_overrides(self, overrides: dict[str, Any]) -> Scenario:
        """A new scenario with dotted overrides applied and validated."""
        return scenario_from_dict(apply_overrides(self.to_dict(), overrides))


# --------------------------------------------------------------------------- loading


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    """Apply dotted overrides (``{"workload.rate": 4}``) to raw scenario data.

    Parameters
    ----------
    data
        Raw scenario mapping (not modified).
    overrides
        Dotted key → value. Intermediate mappings are created when absent, so a typo reaches
        validation and is reported as an unknown field.

    Returns
    -------
    dict
        A new mapping.
    """
    out = copy.deepcopy(data)
    for key, value in (overrides or {}).items():
        parts = str(key).split(".")
        if not all(parts):
            raise ScenarioError(str(key), "empty component in dotted name")
        node: Any = out
        for i, part in enumerate(parts[:-1]):
            nxt = node.get(part) if isinstance(node, dict) else None
            if nxt is None:
                nxt = {}
                node[part] = nxt
            elif not isinstance(nxt, dict):
                # `workload.prompt_tokens.mean=...` on a shorthand int: expand it first.
                if isinstance(nxt, int | float) and not isinstance(nxt, bool):
                    nxt = {"dist": "fixed", "value": nxt}
                    node[part] = nxt
                else:
                    where = ".".join(parts[: i + 1])
                    raise ScenarioError(where, f"is a {type(nxt).__name__}, cannot set {key}")
            node = nxt
        node[parts[-1]] = value
    # an override of the acceptance law replaces it whole: a new alpha drops a preset the data
    # named, a new preset drops an alpha (the resolved alpha of the old preset included)
    acc = out.get("acceptance")
    keys = set(overrides or {})
    if isinstance(acc, dict):
        for given, dropped in (("alpha", "preset"), ("preset", "alpha")):
            if f"acceptance.{given}" in keys and f"acceptance.{dropped}" not in keys:
                acc.pop(dropped, None)
    return out


def parse_set_options(items: list[str] | None) -> dict[str, Any]:
    """Parse CLI ``--set key=value`` items; values are YAML scalars or flow collections."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ScenarioError("--set", f"expected key=value, got {item!r}")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ScenarioError("--set", f"empty key in {item!r}")
        try:
            out[key] = load_yaml(raw, key) if raw.strip() else ""
        except ScenarioError as exc:
            if not exc.message.startswith("invalid YAML"):
                raise
            out[key] = raw
    return out


def scenario_from_dict(data: Any, base_dir: Path | None = None) -> Scenario:
    """Validate raw data into a :class:`Scenario`.

    Parameters
    ----------
    data
        Mapping as read from YAML.
    base_dir
        Directory relative file paths (profile bundle, trace CSV) are resolved against.

    Raises
    ------
    ScenarioError
        One line naming the first offending field.
    """
    if data is None:
        raise ScenarioError("scenario", "file is empty")
    if not isinstance(data, dict):
        raise ScenarioError("scenario", f"must be a mapping of fields, got {type(data).__name__}")
    data = _resolve_paths(data, base_dir)
    try:
        scn = Scenario.model_validate(data)
    except ValidationError as exc:
        raise format_validation_error(exc, model=Scenario) from None
    check_registry(scn)
    return scn


def _exists(p: Path) -> bool:
    # a name the system cannot look up (too long, a NUL byte) does not exist; validation says why
    try:
        return p.exists()
    except (OSError, ValueError):
        return False


def _resolve_paths(data: dict[str, Any], base_dir: Path | None) -> dict[str, Any]:
    if base_dir is None:
        return data
    out = copy.deepcopy(data)
    for section, key in (
        ("workload", "trace"),
        ("workload", "report"),
        ("costs", "profile"),
        ("costs", "calibration"),
        ("drafter", "model"),
    ):
        sec = out.get(section)
        if isinstance(sec, dict) and isinstance(sec.get(key), str):
            p = Path(sec[key])
            if not p.is_absolute() and not _exists(p) and _exists(base_dir / p):
                sec[key] = str((base_dir / p).resolve())
    # length laws read from a CSV ({dist: trace | ccdf, path: ...}), anywhere in the workload
    stack = [out.get("workload")]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if node.get("dist") in ("trace", "ccdf") and isinstance(node.get("path"), str):
                p = Path(node["path"])
                if not p.is_absolute() and not _exists(p) and _exists(base_dir / p):
                    node["path"] = str((base_dir / p).resolve())
            stack.extend(node.values())
    # `target: path/to/config.json` is a model given by its Hugging Face config file
    if isinstance(out.get("target"), str):
        p = Path(out["target"])
        if not p.is_absolute() and not _exists(p) and _exists(base_dir / p):
            out["target"] = str((base_dir / p).resolve())
    return out


def load_scenario(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> Scenario:
    """Load a scenario YAML file and apply dotted overrides.

    Parameters
    ----------
    path
        YAML file; ``None`` gives the built-in defaults.
    overrides
        Dotted key → value, e.g. ``{"workload.rate": 4.0, "spec.k": 3}``.

    Returns
    -------
    Scenario
        Validated and frozen.

    Raises
    ------
    ScenarioError
        Missing or unreadable file, invalid YAML, or an invalid field.
    """
    data: Any
    base_dir: Path | None = None
    if path is None:
        data = {}
    else:
        p = Path(path)
        if not p.exists():
            raise ScenarioError(str(path), "scenario file not found")
        if p.is_dir():
            raise ScenarioError(str(path), "is a directory, expected a scenario YAML file")
        try:
            text = p.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ScenarioError(str(path), f"cannot read: {exc.__class__.__name__}") from None
        data = load_yaml(text, str(path))
        if data is None:
            raise ScenarioError(str(path), "file is empty")
        base_dir = p.resolve().parent
    if isinstance(data, dict):
        data = apply_overrides(data, overrides)
    return scenario_from_dict(data, base_dir)


def scenario_schema() -> dict[str, Any]:
    """The JSON Schema of a scenario file (what `sdsim schema` prints)."""
    return Scenario.model_json_schema()


def referenced_files(scenario: Scenario) -> dict[str, str]:
    """The files a scenario reads, by field: a trace, a report, a profile bundle, a calibration
    file, the target's and the drafter's ``config.json`` (registry names are not files and are
    left out)."""
    refs: dict[str, str | None] = {
        "workload.trace": scenario.workload.trace,
        "workload.report": scenario.workload.report,
        "costs.profile": scenario.costs.profile if scenario.costs.source == "profile" else None,
        "costs.calibration": scenario.costs.calibration,
        "target": scenario.target,
        "drafter.model": scenario.drafter.model if scenario.drafter.kind == "model" else None,
    }
    # length laws drawn from a trace's column ({dist: trace, path: ...})
    wl = scenario.workload
    laws = {
        "workload.prompt_tokens": wl.prompt_tokens,
        "workload.output_tokens": wl.output_tokens,
        "workload.shared_prefix.tokens": wl.shared_prefix.tokens if wl.shared_prefix else None,
        "workload.sessions.turns": wl.sessions.turns if wl.sessions else None,
    }
    for field, law in laws.items():
        if isinstance(law, TraceLength):
            refs[field] = law.path
    out: dict[str, str] = {}
    for field, ref in refs.items():
        if ref and ref.strip().lower() not in MODELS and _exists(Path(ref)):
            out[field] = ref
    return out


def scenario_hash(scenario: Scenario) -> str:
    """A short stable hash of the resolved scenario and of the contents of every file it reads
    (:func:`referenced_files`): editing a trace or a profile changes the hash, so sweep results
    computed from the old contents are never resumed."""
    files = {f: file_digest(p) for f, p in referenced_files(scenario).items()}
    blob = json.dumps({"scenario": scenario.to_dict(), "files": files}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
