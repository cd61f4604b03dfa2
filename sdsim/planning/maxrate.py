"""`max_rate`: the highest arrival rate one configuration sustains within its SLOs.

The model's answer is a bisection on the rate between a light load and the saturation rate
(whether the SLOs hold is monotone in the rate in the model). The simulation then checks it:
replicated runs at the model's rate, stepping the rate by ``step`` (5%) up while the SLOs
hold or down while they do not until the answer is bracketed (a rate that meets them, the next
one up that misses), then bisecting that bracket ``refine`` times. Every rate shares its
random numbers (the same requests, compressed or stretched in time).
"""

from __future__ import annotations

__all__ = ["MaxRateResult", "max_rate"]

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdsim.errors import ScenarioError
from sdsim.planning.confirm import SimVerdict, config_key, simulate_configs
from sdsim.scenario import Scenario
from sdsim.slo import slo_bounds

RATE = "workload.rate"


@dataclass
class MaxRateResult:
    """What :func:`max_rate` found.

    Attributes
    ----------
    model_rate
        The model's highest rate within the SLOs (req/s); 0 when even a light load misses.
    saturation_rate
        The model's saturation rate (req/s).
    sim_rate
        The highest simulated rate that met the SLOs (NaN when none did or nothing was
        simulated).
    sim_miss_rate
        The lowest simulated rate above ``sim_rate`` that missed them (NaN when none).
    bounds
        SLO metric -> bound.
    tried
        Simulated rate -> verdict, in the order tried.
    model
        The model's summary at ``model_rate``.
    """

    model_rate: float
    saturation_rate: float
    sim_rate: float
    sim_miss_rate: float
    bounds: dict[str, float]
    tried: dict[float, SimVerdict] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Plain data (``sdsim plan --max-rate --json``)."""

        def num(v: float) -> float | None:
            return float(v) if math.isfinite(v) else None

        return {
            "model_rate": num(self.model_rate),
            "saturation_rate": num(self.saturation_rate),
            "sim_rate": num(self.sim_rate),
            "sim_miss_rate": num(self.sim_miss_rate),
            "slo": self.bounds,
            "tried": [
                {
                    "rate": r,
                    "meets": v.meets,
                    "confident": v.confident,
                    **{k: num(v.stats[k][0]) for k in self.bounds},
                    "goodput_rps": num(v.stats["goodput_rps"][0]),
                }
                for r, v in self.tried.items()
            ],
        }


def model_max_rate(
    scn: Scenario, bounds: Mapping[str, float], tol: float = 0.002
) -> tuple[float, float, dict[str, Any]]:
    """The model's highest rate within the SLOs, its saturation rate and its summary there.

    Raises
    ------
    ScenarioError
        A scenario the model cannot price (trace arrivals).
    """
    # the analytic model loads scipy and its compiled kernels: only when a plan needs it
    from sdsim.analytic.prediction import LoadPredictor

    need_q = any(k != "e2e_mean" for k in bounds)
    lp = LoadPredictor(scn)
    n = scn.server.replicas
    sat = float(lp(scn.workload.rate, n, quantiles=False).saturation_rate)
    if not math.isfinite(sat) or sat <= 0:
        return 0.0, sat, {}

    def ok(rate: float) -> tuple[bool, dict[str, Any]]:
        p = lp(rate, n, quantiles=need_q)
        s = p.summary
        good = bool(s["stable"]) and not s.get("kv_saturated") and s.get("slo_met") is True
        return good, s

    lo = sat * 1e-3
    good, summ = ok(lo)
    if not good:
        return 0.0, sat, summ
    hi = sat
    best = summ
    while (hi - lo) > tol * hi:
        mid = 0.5 * (lo + hi)
        g, s = ok(mid)
        if g:
            lo, best = mid, s
        else:
            hi = mid
    return lo, sat, best


def max_rate(
    base: Scenario,
    slo: Mapping[str, float] | None = None,
    *,
    replications: int = 3,
    step: float = 0.05,
    refine: int = 2,
    max_steps: int = 8,
    simulate: bool = True,
    workers: int = 1,
    dask: str | None = None,
    out_dir: str | Path | None = None,
    progress: Callable[[Any], None] | None = None,
) -> MaxRateResult:
    """The highest rate the configuration ``base`` sustains within the SLOs.

    Parameters
    ----------
    base
        The configuration (its ``workload.rate`` only seeds the search).
    slo
        SLO metric -> bound (seconds), merged over the scenario's ``slo`` section.
    replications
        Simulated runs per rate.
    step
        Relative rate step of the simulated walk.
    refine
        Bisections of the simulated bracket.
    max_steps
        Most steps of the walk in either direction.
    simulate
        False: the model's answer only.
    workers, dask, out_dir, progress
        As for :func:`sdsim.planning.plan`.

    Raises
    ------
    ScenarioError
        No SLO, bad step or replication counts, or a scenario the model cannot price.
    """
    scn = base.with_overrides({f"slo.{k}": v for k, v in (slo or {}).items()})
    bounds = slo_bounds(scn.slo)
    if not bounds:
        raise ScenarioError("--slo", "--max-rate needs at least one SLO (--slo METRIC=SECONDS)")
    if not 0 < step < 1 or replications < 1 or refine < 0 or max_steps < 1:
        raise ScenarioError("--max-rate", "needs 0 < step < 1, replications >= 1, refine >= 0")
    r_model, sat, summ = model_max_rate(scn, bounds)
    res = MaxRateResult(r_model, sat, math.nan, math.nan, bounds, model=summ)
    if not simulate or r_model <= 0:
        return res
    out = Path(out_dir) if out_dir is not None else None

    def check(rates: list[float]) -> None:
        rates = [r for r in rates if r not in res.tried]
        if not rates:
            return
        configs = [{RATE: r} for r in rates]
        got = simulate_configs(
            scn,
            configs,
            bounds,
            replications=replications,
            out_dir=out,
            workers=workers,
            dask=dask,
            progress=progress,
            name="max-rate",
        )
        for r in rates:
            res.tried[r] = got[config_key({RATE: r})]

    def meets(r: float) -> bool:
        check([r])
        return res.tried[r].meets

    r0 = _round(r_model)
    if meets(r0):
        lo, hi = r0, math.nan
        for i in range(1, max_steps + 1):
            r = _round(r_model * (1 + step * i))
            if meets(r):
                lo = r
            else:
                hi = r
                break
    else:
        lo, hi = math.nan, r0
        for i in range(1, max_steps + 1):
            r = _round(r_model * (1 - step * i))
            if r <= 0:
                break
            if meets(r):
                lo = r
                break
            hi = r
    if math.isfinite(lo) and math.isfinite(hi):
        for _ in range(refine):
            mid = _round(0.5 * (lo + hi))
            if mid in (lo, hi):
                break
            if meets(mid):
                lo = mid
            else:
                hi = mid
    res.sim_rate, res.sim_miss_rate = lo, hi
    return res


def _round(r: float) -> float:
    """Rates to 4 significant digits: stable sweep keys, and no false precision."""
    return float(f"{r:.4g}")
