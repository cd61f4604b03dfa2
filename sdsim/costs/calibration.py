"""Calibration files: the named terms of the calibrated step-cost model, where each came from.

A calibration (``format: sdsim-calibration/1``, YAML) holds

``engine``
    Host-side costs of a serving engine (:class:`EngineTerms`): a fixed cost per step, per
    decoding request, per logits row, per speculative step and per draft pass (by drafter kind),
    n-gram lookup per context token, and the CUDA-graph regime (largest captured token count,
    the kernel floor of eager execution above it, the per-layer cost of piecewise graphs).
``gpus``
    Per GPU (registry name, or ``default`` for any other): the GEMM efficiency curve
    (:class:`GemmTerms`), attention efficiencies (:class:`AttentionTerms`) and the all-reduce
    latency floor and link efficiency (:class:`AllReduceTerms`). An entry may say ``like: NAME``
    to take whatever it does not give from another entry (an H200 has the H100's compute die).
``sources``
    Term (dotted) -> where its value came from: a fit (data files, rows) or a citation.
``fit``
    When the file was written by a fit (:func:`sdsim.costs.fitting.fit_calibration`): the
    command, the data, the terms fitted and every anchor's measured and predicted step time.

The shipped calibration is ``sdsim/data/calibration/shipped.yaml``, written by ``sdsim
calibrate`` from the public measurements in ``sdsim/data/calibration/`` and Vidur's kernel
profiles (notes/costs.md lists every anchor). A scenario names another file with
``costs.calibration: FILE`` and overrides single terms with ``costs.calibrated.<term>``.
"""

from __future__ import annotations

__all__ = [
    "ABLATIONS",
    "FORMAT",
    "SHIPPED",
    "AllReduceTerms",
    "AnchorResidual",
    "AttentionTerms",
    "Calibration",
    "DrafterTerms",
    "EngineTerms",
    "FitRecord",
    "GPUTerms",
    "GemmTerms",
    "ResolvedGPU",
    "ablated",
    "load_calibration",
    "shipped_calibration",
    "write_calibration",
]

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sdsim.errors import ScenarioError, format_validation_error
from sdsim.provenance import yaml_header

FORMAT: Literal["sdsim-calibration/1"] = "sdsim-calibration/1"
SHIPPED = Path(__file__).resolve().parents[1] / "data" / "calibration" / "shipped.yaml"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class GemmTerms(_Model):
    """Time of a weight GEMM (``M`` tokens x ``K`` in x ``N`` out) on one GPU:

    ``t = max(a, c) (1 + ridge_dip exp(-((log2(c / a) - ridge_shift) / ridge_width)^2))
    + floor_s``

    with ``a = bytes / (bandwidth x memory_eff)`` (weights read once, activations in and out)
    and ``c = 2 M K N / (peak x compute_eff)``. The bump centred on the ridge point (where the
    GEMM turns from memory- to compute-bound, ``c = a``) is the time mid-sized GEMMs lose to tile
    quantisation, split-K and wave effects that a two-line roofline misses: measured H100 kernels
    of Llama-2-7B run 36% slower than the roofline at 256 tokens, within 7% at 1 and 4096.
    Fitted per GPU to Vidur's measured per-operator times (``mlp.csv``).
    """

    memory_eff: float = Field(gt=0, le=1.5)
    compute_eff: float = Field(gt=0, le=1.5)
    ridge_dip: float = Field(ge=0, le=5)
    ridge_width: float = Field(gt=0.05, le=10)
    ridge_shift: float = Field(ge=-5, le=5)
    floor_s: float = Field(ge=0, le=1e-3)


class AttentionTerms(_Model):
    """Attention kernels' efficiencies: the fraction of peak HBM bandwidth the paged KV reads
    reach in decode (one query token per request) and in (k+1)-token verification, the fraction
    of peak tensor FLOP/s prefill chunks reach, and the floor of one layer's attention call."""

    decode_memory: float = Field(gt=0, le=1)
    verify_memory: float = Field(gt=0, le=1)
    prefill_compute: float = Field(gt=0, le=1)
    floor_s: float = Field(ge=0, le=1e-3)


class AllReduceTerms(_Model):
    """Tensor-parallel all-reduce: a latency floor per call plus ring traffic at ``link_eff`` of
    one direction of the GPU link."""

    latency_s: float = Field(ge=0, le=1e-2)
    link_eff: float = Field(gt=0, le=1)


class GPUTerms(_Model):
    """One GPU's kernel terms; ``like`` names the entry that supplies whatever is not given."""

    like: str | None = None
    gemm: GemmTerms | None = None
    attention: AttentionTerms | None = None
    allreduce: AllReduceTerms | None = None


class DrafterTerms(_Model):
    """A host cost by drafter kind (seconds)."""

    eagle: float = Field(ge=0, le=1.0)
    eagle3: float = Field(ge=0, le=1.0)
    model: float = Field(ge=0, le=1.0)
    ngram: float = Field(ge=0, le=1.0)

    def of(self, kind: str) -> float:
        """The value for drafter ``kind``."""
        return float(getattr(self, kind))


class EngineTerms(_Model):
    """Host-side costs of a serving engine (vLLM V1 with CUDA graphs; ../shared/VLLM-STEP.md).

    Attributes
    ----------
    step_s
        Fixed CPU/host time per step: scheduling, input preparation, launching the verifier's
        graph, output processing.
    per_seq_s
        Host time per decoding request in the step (input preparation, output bookkeeping).
    per_token_s
        Host and sampling time per logits row: each decoding request has k + 1 rows in a
        speculative step (rejection sampling, logits processing), one in a plain step.
    spec_step_s
        Fixed time of a speculative step beyond its passes, by drafter kind (rejection sampler,
        speculative metadata, the proposer's setup).
    draft_pass_s
        Host time per draft pass, by drafter kind (launches of the drafter's piecewise graph
        and its eager attention, the draft token bookkeeping).
    ngram_context_token_s
        n-gram lookup CPU time per context token of a decoding request (the proposer scans each
        request's whole history, in parallel threads).
    graph_max_tokens
        Largest token count run as a CUDA graph (vLLM: min(2 x max_num_seqs x (1 + k), 512)):
        steps up to it are padded to the next captured size, steps above it run eagerly.
    eager_launch_s
        Shortest time of one kernel in eager execution (host launch rate), instead of the
        graph's launch floor.
    piecewise_layer_s
        Extra time per verifier layer when a step is not a uniform decode batch (a prefill chunk
        in it): piecewise graphs run attention eagerly between captured pieces.
    """

    step_s: float = Field(ge=0, le=1.0)
    per_seq_s: float = Field(ge=0, le=1.0)
    per_token_s: float = Field(ge=0, le=1.0)
    spec_step_s: DrafterTerms
    draft_pass_s: DrafterTerms
    ngram_context_token_s: float = Field(ge=0, le=1e-3)
    graph_max_tokens: int = Field(ge=0, le=1_000_000)
    eager_launch_s: float = Field(ge=0, le=1e-2)
    piecewise_layer_s: float = Field(ge=0, le=1e-2)


class AnchorResidual(_Model):
    """One measured anchor against the calibrated model (step times in milliseconds)."""

    id: str
    source: str
    gpu: str
    target: str
    drafter: str
    tp: int = 1
    batch: float
    context: float = 0.0
    k: int
    prompt_tokens: float = 0.0
    prefill_per_step: float = 0.0
    metric: str
    measured_ms: float
    predicted_ms: float
    error: float
    role: Literal["fit", "held-out", "unused"]
    note: str = ""


class FitRecord(_Model):
    """How a calibration was fitted: command, data files, fitted terms, every anchor."""

    command: str
    data: list[str]
    terms: list[str]
    held_out: list[str] = Field(default_factory=list)
    fit_rms_error: float
    held_out_rms_error: float | None = None
    anchors: list[AnchorResidual] = Field(default_factory=list)
    kernels: dict[str, dict[str, float]] = Field(default_factory=dict)


@dataclass(frozen=True)
class ResolvedGPU:
    """A GPU's kernel terms with ``like`` references and the ``default`` entry resolved."""

    name: str
    gemm: GemmTerms
    attention: AttentionTerms
    allreduce: AllReduceTerms
    borrowed: tuple[str, ...]


class Calibration(_Model):
    """A calibration file in memory (see the module docstring)."""

    format: Literal["sdsim-calibration/1"] = FORMAT
    description: str = ""
    engine: EngineTerms
    gpus: dict[str, GPUTerms]
    sources: dict[str, str] = Field(default_factory=dict)
    fit: FitRecord | None = None

    @model_validator(mode="after")
    def _complete(self) -> Calibration:
        if "default" not in self.gpus:
            raise ValueError("gpus needs a 'default' entry (the terms of unlisted GPUs)")
        d = self.gpus["default"]
        if d.like is not None or d.gemm is None or d.attention is None or d.allreduce is None:
            raise ValueError("gpus.default must give gemm, attention and allreduce (no `like`)")
        for name, g in self.gpus.items():
            seen = {name}
            ref = g.like
            while ref is not None:
                if ref not in self.gpus:
                    raise ValueError(f"gpus.{name}.like: no entry {ref!r}")
                if ref in seen:
                    raise ValueError(f"gpus.{name}.like: the `like` references form a cycle")
                seen.add(ref)
                ref = self.gpus[ref].like
        return self

    def gpu(self, name: str) -> ResolvedGPU:
        """The kernel terms of GPU ``name`` (its entry, what its ``like`` chain supplies, then
        the ``default`` entry); ``borrowed`` names the entries each missing part came from."""
        key = name.strip().lower()
        chain: list[str] = []
        ref: str | None = key if key in self.gpus else None
        while ref is not None:
            chain.append(ref)
            ref = self.gpus[ref].like
        chain.append("default")
        parts: dict[str, Any] = {}
        borrowed: list[str] = []
        for part in ("gemm", "attention", "allreduce"):
            for i, entry in enumerate(chain):
                v = getattr(self.gpus[entry], part)
                if v is not None:
                    parts[part] = v
                    if i > 0:
                        borrowed.append(f"{part} from {entry}")
                    break
        return ResolvedGPU(key, parts["gemm"], parts["attention"], parts["allreduce"],
                           tuple(borrowed))

    def with_engine(self, **changes: Any) -> Calibration:
        """A copy with engine terms replaced (validated)."""
        eng = self.engine.model_dump()
        eng.update(changes)
        return self.model_copy(update={"engine": EngineTerms.model_validate(eng)})


def load_calibration(
    path: str | Path | None = None, field: str = "costs.calibration"
) -> Calibration:
    """Read a calibration file (``None``: the shipped one).

    Raises
    ------
    ScenarioError
        Missing or unreadable file, invalid YAML, a wrong format tag, an unknown, missing or
        out-of-range term (one line naming it, e.g. ``costs.calibration: engine.step_s: ...``).
    """
    if path is None:
        return shipped_calibration()
    return _load(Path(path), field)


@lru_cache(maxsize=1)
def shipped_calibration() -> Calibration:
    """The calibration shipped with sdsim (read once)."""
    return _load(SHIPPED, "costs.calibration")


def _load(p: Path, field: str) -> Calibration:
    if not p.is_file():
        raise ScenarioError(field, f"calibration file {str(p)!r} not found")
    try:
        # libyaml's loader when present: the shipped file is read in every process that prices
        # a step, and the pure-Python parser takes most of a tenth of a second over it
        data = yaml.load(p.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (OSError, UnicodeDecodeError):
        raise ScenarioError(field, f"cannot read {p.name}") from None
    except yaml.YAMLError:
        raise ScenarioError(field, f"{p.name} is not valid YAML") from None
    if not isinstance(data, dict):
        raise ScenarioError(field, f"{p.name} must hold a mapping of terms")
    if data.get("format") != FORMAT:
        raise ScenarioError(field, f"{p.name}: format must be {FORMAT!r}")
    try:
        return Calibration.model_validate(data)
    except ValidationError as exc:
        err = format_validation_error(exc)
        raise ScenarioError(field, f"{p.name}: {err}") from None


def write_calibration(cal: Calibration, path: str | Path) -> Path:
    """Write a calibration file (YAML, terms in a stable order) and return its path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    data = cal.model_dump(mode="json", exclude_none=True)
    head = yaml_header(None, "calibration file (costs.calibration)")
    p.write_text(head + yaml.safe_dump(data, sort_keys=False, width=100))
    return p


# The calibration's terms by group, each with what "off" means: the ideal roofline's equivalent
# (its 0.5 ms CPU overhead per step, its efficiencies, no host cost per request or pass, no graph
# effects), so that switching every group off leaves the roofline's kernel prices.
ABLATIONS: dict[str, str] = {
    "host_step": "fixed host time per step at the roofline's 0.5 ms",
    "host_request": "no host time per request or logits row",
    "host_spec": "no fixed speculative-step or per-draft-pass host time",
    "gemm": "GEMMs at the roofline's efficiencies (memory 0.8, compute 0.75, no ridge loss)",
    "attention": "attention at the roofline's efficiencies (decode and verify 0.7, prefill 0.55)",
    "graphs": "no CUDA-graph padding, eager launch floor or piecewise-graph cost",
    "allreduce": "all-reduce at the roofline's 8 us latency and 0.8 link efficiency",
}


def ablated(cal: Calibration, group: str) -> Calibration:
    """``cal`` with one group of terms (:data:`ABLATIONS`) switched off.

    Raises
    ------
    ScenarioError
        Unknown group.
    """
    eng = cal.engine.model_dump()
    gpus = {n: g.model_dump(exclude_none=True) for n, g in cal.gpus.items()}
    zero = {k: 0.0 for k in ("eagle", "eagle3", "model", "ngram")}
    if group == "host_step":
        eng["step_s"] = 5e-4
    elif group == "host_request":
        eng["per_seq_s"] = eng["per_token_s"] = 0.0
    elif group == "host_spec":
        eng["spec_step_s"] = eng["draft_pass_s"] = zero
    elif group == "graphs":
        eng.update(eager_launch_s=2.5e-6, piecewise_layer_s=0.0, graph_max_tokens=1_000_000)
    elif group in ("gemm", "attention", "allreduce"):
        off = {
            "gemm": {"memory_eff": 0.8, "compute_eff": 0.75, "ridge_dip": 0.0, "ridge_width": 1.0,
                     "ridge_shift": 0.0, "floor_s": 2.5e-6},
            "attention": {"decode_memory": 0.7, "verify_memory": 0.7, "prefill_compute": 0.55,
                          "floor_s": 2.5e-6},
            "allreduce": {"latency_s": 8e-6, "link_eff": 0.8},
        }[group]
        for g in gpus.values():
            if group in g or "like" not in g:
                g[group] = dict(off)
    else:
        raise ScenarioError("ablation", f"unknown group {group!r}; use {', '.join(ABLATIONS)}")
    return Calibration.model_validate({**cal.model_dump(exclude_none=True), "engine": eng,
                                       "gpus": gpus})
