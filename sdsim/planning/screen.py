"""Analytic screening: which configurations of a search the closed-form model says meet the SLOs.

Every configuration of the space gets a status:

* ``invalid``: its scenario cannot be built (weights that do not fit the GPU at that tp, a KV
  cache that cannot hold one request, ...); ``reason`` says why;
* ``saturated``: the rate per replica is at or past the model's saturation rate (step curve or
  KV cache), so latency grows without bound;
* ``misses`` / ``meets``: the model's statistics against the SLOs.

Within a group (configurations that differ only in replicas) each replica sees ``rate /
replicas``, and the model's latencies fall as that per-replica rate falls, so whether the SLOs
hold is monotone in the replica count. The screen uses that: one means-only prediction gives
the saturation rate (ruling out every replica count below it), then an exponential search
upward from the first stable count, closed by bisection, finds the fewest replicas that meet
the SLOs with about ``2 log2(d)`` full predictions (``d`` the distance from the first stable
count). Configurations decided by monotonicity, not priced, have ``evaluated = False``.

``screen_chunk`` is the unit of work the executors run: plain data in, rows out.
"""

from __future__ import annotations

__all__ = [
    "ScreenTask",
    "screen_chunk",
    "screen_group",
]

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sdsim.errors import ScenarioError
from sdsim.scenario import Scenario, SloSpec, scenario_from_dict
from sdsim.slo import slo_bounds

# Model summary keys kept for every priced configuration (besides the SLO keys).
MODEL_KEYS = (
    "e2e_mean",
    "e2e_p99",
    "ttft_mean",
    "ttft_p99",
    "tpot_mean",
    "tpot_p99",
    "throughput_rps",
    "throughput_tps",
    "batch_mean",
    "goodput_rps",
    "slo_attainment",
)


@dataclass(frozen=True)
class ScreenTask:
    """A chunk of groups to screen: everything a worker needs, as plain picklable data.

    Attributes
    ----------
    base
        The base scenario as data (rate and SLOs already set).
    groups
        ``(group key, overrides)`` per group.
    replicas
        Replica counts each group tries, ascending.
    bounds
        SLO metric -> bound (seconds).
    key
        Names the chunk's result file.
    """

    base: dict[str, Any]
    groups: list[tuple[str, dict[str, Any]]]
    replicas: tuple[int, ...]
    bounds: dict[str, float]
    key: str


def _meets(p: Any) -> bool:
    s = p.summary
    return bool(s.get("stable")) and not s.get("kv_saturated") and s.get("slo_met") is True


def _row(p: Any, bounds: Mapping[str, float]) -> dict[str, Any]:
    s = p.summary
    row = {k: _num(s.get(k)) for k in MODEL_KEYS}
    for k in bounds:
        row[k] = _num(s.get(k))
        row[f"slo_margin_{k}"] = _num(s.get(f"slo_margin_{k}"))
        row[f"slo_attainment_{k}"] = _num(s.get(f"slo_attainment_{k}"))
    row["k_effective"] = s.get("k_effective")
    row["outside_model"] = p.outside_model
    return row


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def screen_group(
    scn: Scenario,
    replicas: tuple[int, ...],
    rate: float,
    bounds: Mapping[str, float],
) -> list[dict[str, Any]]:
    """Screen one group: a row per replica count (ascending).

    Parameters
    ----------
    scn
        The group's scenario (its own replica count and SLOs are ignored).
    replicas
        Replica counts, ascending.
    rate
        Total arrival rate, req/s.
    bounds
        SLO metric -> bound, seconds.

    Returns
    -------
    list of dict
        ``replicas``, ``status``, ``evaluated``, ``reason``, ``saturation_rate`` (all replicas),
        and for priced rows the model's statistics (:data:`MODEL_KEYS`, each SLO statistic with
        its margin and attainment); ``output_tps`` (the stable throughput in tokens/s) on every
        stable row.
    """
    # the analytic model loads scipy and its compiled kernels: only when a plan needs it
    from sdsim.analytic.prediction import LoadPredictor

    if slo_bounds(scn.slo) != dict(bounds):  # the SLOs judged are the ones given
        scn = scn.model_copy(update={"slo": SloSpec(**bounds)})
    need_q = any(k != "e2e_mean" for k in bounds)
    rows: list[dict[str, Any]] = [
        {"replicas": n, "status": "", "evaluated": False, "reason": None} for n in replicas
    ]
    try:
        lp = LoadPredictor(scn)
        probe = lp(rate, replicas[-1], quantiles=False)
    except ScenarioError as exc:
        for r in rows:
            r.update(status="invalid", reason=str(exc))
        return rows
    sat1 = probe.saturation_rate / replicas[-1]  # per replica
    stable = [i for i, n in enumerate(replicas) if rate / n < sat1]
    for i, r in enumerate(rows):
        r["saturation_rate"] = sat1 * replicas[i]
        if i not in stable:
            r.update(
                status="saturated",
                reason=f"{rate / replicas[i]:.4g} req/s per replica >= saturation {sat1:.4g}",
            )
    if not stable:
        return rows
    cache: dict[int, Any] = {}

    def ok(i: int) -> bool:
        if i not in cache:
            cache[i] = lp(rate, replicas[i], quantiles=need_q)
        return _meets(cache[i])

    first = stable[0]
    last = len(replicas) - 1
    # exponential search for a meeting count, then bisection between the last miss and it
    lo, step, i = first - 1, 1, first
    hi: int | None = None
    while True:
        if ok(i):
            hi = i
            break
        lo = i
        if i == last:
            break
        i = min(i + step, last)
        step *= 2
    if hi is not None:
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if ok(mid):
                hi = mid
            else:
                lo = mid
    frontier = hi if hi is not None else len(replicas)
    tps = math.nan
    for i in stable:
        rows[i]["status"] = "meets" if i >= frontier else "misses"
        if i in cache:
            rows[i].update(evaluated=True, **_row(cache[i], bounds))
            if not math.isnan(float(rows[i]["throughput_tps"])):
                tps = float(rows[i]["throughput_tps"])
    for i in stable:
        rows[i]["output_tps"] = tps  # the same at every stable count: rate x mean output
    return rows


def screen_chunk(task: ScreenTask) -> list[dict[str, Any]]:
    """Screen every group of a chunk; rows carry ``group`` (its key) and the group's overrides
    under ``overrides``. A group whose scenario cannot be built gives ``invalid`` rows."""
    base = scenario_from_dict(task.base)
    out: list[dict[str, Any]] = []
    for key, ov in task.groups:
        try:
            scn = base.with_overrides(ov)
            rows = screen_group(scn, task.replicas, float(base.workload.rate), task.bounds)
        except ScenarioError as exc:
            rows = [
                {"replicas": n, "status": "invalid", "evaluated": False, "reason": str(exc)}
                for n in task.replicas
            ]
        for r in rows:
            r["group"] = key
            r["overrides"] = ov
        out.extend(rows)
    return out
