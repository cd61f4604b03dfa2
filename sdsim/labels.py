"""What a number is called and in what unit it is shown: one table for tables, figures and files.

Every number sdsim prints or draws comes from a summary key (``e2e_p99``, ``throughput_rps``), a
scenario field (``workload.rate``, ``spec.k``) or a model quantity; this module names each once,
with its unit, so ``sdsim run``, ``predict``, ``advise``, ``validate``, ``sweep`` and the figures
say the same thing about the same number. Latencies are stored in seconds everywhere and shown in
the unit (s, ms or µs) that suits the values of one column or axis: :func:`time_unit`.
"""

from __future__ import annotations

__all__ = [
    "FIELDS",
    "METRICS",
    "REQUEST_UNITS",
    "STEP_UNITS",
    "Label",
    "field_label",
    "format_time",
    "integer_field",
    "metric_label",
    "short_field",
    "sig3",
    "time_unit",
]

import math
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Label:
    """How one quantity is shown.

    Attributes
    ----------
    name
        Words a person reads ("arrival rate", "e2e p99").
    unit
        Unit of the stored value: ``"s"`` for latencies (shown as s, ms or µs, see
        :func:`time_unit`), another unit string, or ``""`` for a pure number.
    integer
        Whether the quantity only takes integer values (axes get integer ticks).
    """

    name: str
    unit: str = ""
    integer: bool = False


# Scenario fields a sweep varies or a figure draws against. A field not listed is shown by its
# dotted name.
FIELDS: dict[str, Label] = {
    "workload.rate": Label("arrival rate", "req/s"),
    "workload.cv": Label("arrival CV (gamma)"),
    "workload.num_requests": Label("requests simulated", integer=True),
    "workload.prompt_tokens": Label("prompt length", "tokens", integer=True),
    "workload.prompt_tokens.mean": Label("mean prompt length", "tokens"),
    "workload.prompt_tokens.value": Label("prompt length", "tokens", integer=True),
    "workload.output_tokens": Label("output length", "tokens", integer=True),
    "workload.output_tokens.mean": Label("mean output length", "tokens"),
    "workload.output_tokens.value": Label("output length", "tokens", integer=True),
    "workload.arrival": Label("arrival process"),
    "spec.k": Label("draft length k", "tokens", integer=True),
    "spec.k_max": Label("largest draft length k_max", "tokens", integer=True),
    "spec.policy": Label("draft-length policy"),
    "acceptance.alpha": Label("acceptance α (per drafted token)"),
    "acceptance.alpha.mean": Label("mean acceptance α"),
    "acceptance.preset": Label("acceptance preset"),
    "server.replicas": Label("replicas", integer=True),
    "server.router": Label("router"),
    "server.affinity_imbalance": Label("affinity imbalance bound", "requests", integer=True),
    "server.scheduler": Label("scheduler"),
    "server.max_num_seqs": Label("max running requests (max_num_seqs)", integer=True),
    "server.max_num_batched_tokens": Label("token budget per step", "tokens", integer=True),
    "server.num_gpu_blocks": Label("KV cache blocks", integer=True),
    "server.block_size": Label("KV block size", "tokens", integer=True),
    "server.prefix_caching": Label("prefix caching"),
    "server.api_delay_s": Label("API delay", "s"),
    "hardware": Label("GPU"),
    "target": Label("target model"),
    "drafter.kind": Label("drafter"),
    "costs.source": Label("step-cost source"),
    "seed": Label("seed", integer=True),
}

# Summary keys (simulation, prediction and sweep summaries share them).
METRICS: dict[str, Label] = {
    **{
        f"{m}_{s}": Label(f"{name} {s}", "s")
        for m, name in (("e2e", "e2e"), ("ttft", "TTFT"), ("tpot", "TPOT"))
        for s in ("mean", "p50", "p90", "p99")
    },
    "queue_delay_mean": Label("queue delay mean", "s"),
    "throughput_rps": Label("throughput", "req/s"),
    "throughput_tps": Label("output throughput", "tok/s"),
    "tokens_per_step_mean": Label("tokens per step (acceptance length)"),
    "draft_acceptance_rate": Label("draft acceptance rate (accepted / drafted)"),
    "k_mean": Label("mean draft length k", "tokens"),
    "batch_mean": Label("mean decode batch", "requests"),
    "in_system_mean": Label("mean requests in system", "requests"),
    "waiting_mean": Label("mean requests waiting", "requests"),
    "busy_fraction": Label("GPU busy fraction"),
    "little_residual": Label("Little's-law residual"),
    "arrival_rate_obs": Label("observed arrival rate", "req/s"),
    "queue_growth_rps": Label("queue growth", "req/s"),
    "completed": Label("requests completed", integer=True),
    "measured": Label("requests measured", integer=True),
    "preemptions": Label("preemptions", integer=True),
    "preempted_requests": Label("requests preempted", integer=True),
    "kv_blocks_total": Label("KV cache blocks per replica", integer=True),
    "kv_peak_blocks": Label("KV blocks in use, peak", integer=True),
    "kv_util_mean": Label("KV cache use, mean fraction"),
    "prefix_hit_rate": Label("prefix hit rate, share of prompt tokens cached"),
    "prefill_saved_fraction": Label("share of prefill tokens taken from the cache"),
    "prefill_tokens_requested": Label("prefill tokens requested", "tokens", integer=True),
    "prefill_tokens_computed": Label("prefill tokens computed", "tokens", integer=True),
    "prefix_evictions": Label("cached blocks evicted", integer=True),
    "overhead_s_mean": Label("CPU overhead per step", "s"),
    "api_delay_s": Label("API delay", "s"),
    "steps": Label("engine steps", integer=True),
    "duration_s": Label("simulated time", "s"),
    "stable": Label("stable"),
    "goodput_rps": Label("goodput, requests meeting every SLO", "req/s"),
    "slo_attainment": Label("SLO attainment, share meeting every SLO"),
    "slo_met": Label("every SLO met"),
    "speedup": Label("speedup vs k=0"),
    "p_wait": Label("P(wait for admission)"),
    "saturation_rate": Label("saturation rate", "req/s"),
    "seed": Label("seed", integer=True),
    "sdsim_version": Label("sdsim version"),
    "break_even_rate": Label("break-even rate", "req/s"),
}


# Units of the per-request and per-step records (requests.csv, steps.csv); columns not listed
# are counts or identifiers.
REQUEST_UNITS: dict[str, str] = {
    **{c: "s" for c in ("arrival", "first_scheduled", "first_token", "finish")},
    **{c: "s" for c in ("ttft", "e2e", "tpot", "queue_delay")},
    "prompt_tokens": "tokens",
    "output_tokens": "tokens",
    "steps": "decode steps",
    "drafted": "tokens",
    "accepted": "tokens",
    "alpha": "acceptance probability per drafted token",
}
STEP_UNITS: dict[str, str] = {
    **{c: "s" for c in ("start", "duration", "draft_s", "verify_s", "prefill_s", "overhead_s")},
    "num_seqs": "requests",
    "decode_seqs": "requests",
    "prefill_tokens": "tokens",
    "verify_tokens": "tokens",
    "kv_blocks_used": "blocks",
    "waiting": "requests",
    "k": "tokens",
    "accepted": "tokens",
    "emitted": "tokens",
    "preempted": "requests",
}


def short_field(field: str) -> str:
    """A field's name as a column header or legend entry: its label without the unit."""
    lab = FIELDS.get(field)
    return lab.name if lab else field.rsplit(".", 1)[-1]


def field_label(field: str) -> str:
    """A scenario field as an axis label, with its unit: ``workload.rate`` -> ``arrival rate
    (req/s)``; an unlisted field keeps its dotted name."""
    lab = FIELDS.get(field)
    if lab is None:
        return field
    return f"{lab.name} ({lab.unit})" if lab.unit else lab.name


def integer_field(field: str) -> bool:
    """Whether a scenario field or summary key only takes integer values."""
    lab = FIELDS.get(field) or METRICS.get(field)
    return bool(lab and lab.integer)


def metric_label(metric: str, time_unit_name: str | None = None) -> str:
    """A summary key as an axis label or column header with its unit.

    Parameters
    ----------
    metric
        Summary key (``e2e_p99``); an unlisted key is shown as it is.
    time_unit_name
        For latencies, the unit chosen by :func:`time_unit` (default ``s``).
    """
    lab = METRICS.get(metric)
    if lab is None:
        return metric
    unit = (time_unit_name or "s") if lab.unit == "s" else lab.unit
    return f"{lab.name} ({unit})" if unit else lab.name


_TIME_UNITS = (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6))


def time_unit(seconds: Iterable[float]) -> tuple[str, float]:
    """The unit that shows a set of durations best, and the factor from seconds to it.

    The unit is the largest one in which the median finite value is at least 1 (seconds from 1 s
    up, milliseconds from 1 ms, microseconds below), so a column of 0.4-12 s reads in seconds and
    one of 3-40 ms in milliseconds.

    Returns
    -------
    (unit, factor)
        ``value_in_unit = seconds * factor``.
    """
    vals = sorted(abs(float(v)) for v in seconds if v is not None and math.isfinite(float(v)))
    vals = [v for v in vals if v > 0]
    if not vals:
        return "ms", 1e3
    med = vals[len(vals) // 2]
    for name, size in _TIME_UNITS:
        if med >= size:
            return name, 1.0 / size
    return "µs", 1e6


def format_time(seconds: float, unit: str | None = None) -> str:
    """A duration with its unit, three significant digits: ``12.2 s``, ``450 ms``, ``87.5 µs``."""
    if not math.isfinite(seconds):
        return "∞" if seconds > 0 else "-"
    name, factor = time_unit([seconds]) if unit is None else (unit, dict(_UNIT_FACTORS)[unit])
    return f"{sig3(seconds * factor)} {name}"


_UNIT_FACTORS = tuple((name, 1.0 / size) for name, size in _TIME_UNITS)


def sig3(v: float) -> str:
    """A number with three significant digits, no exponent: ``12.2``, ``4.45``, ``1,024``."""
    a = abs(float(f"{v:.3g}"))  # the digits shown decide the format (99.96 shows as 100)
    if a >= 100 or a == 0:
        return f"{v:,.0f}"
    if a >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"
