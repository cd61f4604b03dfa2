"""Simulation confirmation: replicated runs of chosen configurations on the sweep executors.

A batch of configurations (dotted overrides of a base scenario) becomes one sweep whose points
are those configurations (a ``zip`` group of every overridden field) with ``replications`` runs
each, common random numbers across points (a configuration and its neighbour with one replica
fewer see the same requests), written under ``DIR/`` like any sweep, so an interrupted plan
resumes without rerunning what finished. Each configuration gets the mean and t-based CI of
every SLO statistic over its replications and a verdict: it *meets* the SLOs when every run is
stable and each statistic's mean is within its bound (``confident`` when the CI's upper end is
too).
"""

from __future__ import annotations

__all__ = ["SimVerdict", "config_key", "simulate_configs"]

import json
import math
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdsim.scenario import Scenario
from sdsim.sweep import SweepSpec, plan_sweep, run_sweep

# Run statistics kept for every simulated configuration (besides the SLO statistics).
SIM_METRICS = (
    "e2e_mean",
    "e2e_p99",
    "ttft_p99",
    "tpot_p99",
    "throughput_rps",
    "throughput_tps",
    "goodput_rps",
    "slo_attainment",
    "stable",
)


@dataclass
class SimVerdict:
    """What the replicated simulation of one configuration says.

    Attributes
    ----------
    overrides
        The configuration (dotted field -> value).
    meets
        Every run stable and every SLO statistic's mean within its bound.
    confident
        ``meets`` with every CI's upper end within its bound too.
    runs
        Successful replications.
    stats
        Statistic -> ``(mean, ci_low, ci_high)`` over the replications.
    """

    overrides: dict[str, Any]
    meets: bool
    confident: bool
    runs: int
    stats: dict[str, tuple[float, float, float]] = field(default_factory=dict)

    def margin(self, metric: str, bound: float) -> float:
        """``(bound - mean) / bound`` of one SLO statistic."""
        return (bound - self.stats[metric][0]) / bound


def config_key(ov: Mapping[str, Any]) -> str:
    """A configuration's key in :func:`simulate_configs`' result: its canonical JSON."""
    return json.dumps(ov, sort_keys=True, separators=(",", ":"), default=str)


def simulate_configs(
    base: Scenario,
    configs: list[dict[str, Any]],
    bounds: Mapping[str, float],
    *,
    replications: int,
    out_dir: Path | None,
    workers: int = 1,
    dask: str | None = None,
    progress: Callable[[Any], None] | None = None,
    name: str = "confirm",
) -> dict[str, SimVerdict]:
    """Simulate each configuration ``replications`` times and judge it against the SLOs.

    Parameters
    ----------
    base
        The scenario the configurations override (rate, SLOs and run length set).
    configs
        Overrides per configuration; every one must name the same fields.
    bounds
        SLO metric -> bound, seconds.
    replications
        Runs per configuration.
    out_dir
        Where the sweep is kept (``out_dir/name``; resumed when present); ``None``: a temporary
        directory.
    workers, dask
        Executor (:func:`sdsim.sweep.run_sweep`).
    progress
        Sweep progress callback.

    Returns
    -------
    dict
        Canonical JSON of a configuration's overrides -> its :class:`SimVerdict`.
    """
    if not configs:
        return {}
    fields = list(configs[0])
    with tempfile.TemporaryDirectory(prefix="sdsim-plan-") as tmp:
        root = (out_dir / name) if out_dir is not None else Path(tmp) / name
        root.mkdir(parents=True, exist_ok=True)
        base_path = root / "base.yaml"
        text = base.to_yaml()
        if not base_path.is_file() or base_path.read_text() != text:
            base_path.write_text(text)
        metrics = list(dict.fromkeys([*SIM_METRICS, *bounds]))
        spec = SweepSpec(
            name=name,
            base=str(base_path),
            zip=[{f: [c[f] for c in configs] for f in fields}] if fields else [],
            replications=replications,
            metrics=metrics,
            common_random_numbers=fields,
        )
        plan = plan_sweep(spec)
        res = run_sweep(plan, root, workers=workers, dask=dask, progress=progress)
        out: dict[str, SimVerdict] = {}
        by_key = {p.key: p.overrides for p in plan.points}
        for _, row in res.summary.iterrows():
            ov = by_key[row["point_key"]]
            stats = {
                m: (float(row[m]), float(row[f"{m}_ci_low"]), float(row[f"{m}_ci_high"]))
                for m in plan.spec.metrics
                if m != "stable"
            }
            runs = int(row["runs"])
            all_stable = runs == replications and float(row["stable"]) == 1.0
            meets = all_stable and all(
                math.isfinite(stats[k][0]) and stats[k][0] <= x for k, x in bounds.items()
            )
            confident = meets and all(stats[k][2] <= x for k, x in bounds.items())
            out[config_key(ov)] = SimVerdict(dict(ov), meets, confident, runs, stats)
        return out
