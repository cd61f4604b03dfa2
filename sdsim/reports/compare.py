"""Measured vs simulated vs analytic, benchmark by benchmark.

Every benchmark of a report is replayed through the simulator (its exact arrival times and
lengths, :mod:`sdsim.reports.replay`) and, when the analytic model is available
(``sdsim.predict``), predicted at the benchmark's achieved rate and mean lengths. The measured
statistics are computed from the report's per-request rows with the same estimator as the
simulation's (``numpy.percentile``, linear interpolation), so the three columns differ only in
what produced the latencies.
"""

from __future__ import annotations

__all__ = ["Comparison", "compare_report", "comparison_figure"]

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sdsim.errors import ScenarioError
from sdsim.provenance import png_metadata
from sdsim.report_formats import Report, load_report
from sdsim.reports.replay import replay_scenario
from sdsim.scenario import Scenario
from sdsim.simulation import simulate

METRICS = ("ttft", "tpot", "e2e")
STATS = ("mean", "p50", "p90", "p99")


@dataclass
class Comparison:
    """The outcome of :func:`compare_report`.

    Attributes
    ----------
    table
        Long format: one row per (benchmark, metric, stat) with ``measured``, ``simulated``,
        ``analytic`` (s; NaN when unavailable) and relative errors ``sim_rel_error``,
        ``analytic_rel_error`` (``(model − measured) / measured``).
    notes
        Anything the reader should know (analytic model unavailable, benchmarks skipped).
    """

    table: pd.DataFrame
    notes: list[str] = field(default_factory=list)


def _stats(x: np.ndarray) -> dict[str, float]:
    x = x[np.isfinite(x)]
    if x.size == 0:
        return dict.fromkeys(STATS, math.nan)
    p = np.percentile(x, [50, 90, 99])
    return {"mean": float(x.mean()), "p50": float(p[0]), "p90": float(p[1]), "p99": float(p[2])}


def _analytic(
    scenario: Scenario, brow: pd.Series, reqs: pd.DataFrame, i: int, notes: list[str]
) -> dict[str, Any]:
    """``sdsim.predict`` at the benchmark's achieved rate and mean lengths (Poisson arrivals).

    The model's own refusals (a scenario it cannot price) become a note and NaN, never an abort:
    the measured and simulated columns are still worth having.
    """
    # imported on demand: the analytic model loads scipy.stats (about a second), which `import
    # sdsim` (it reads reports through this package) and --no-analytic never need
    from sdsim.analytic.prediction import predict

    over: dict[str, Any] = {
        "workload.arrival": "poisson",
        "workload.trace": None,
        "workload.rate": float(brow["rate"]),
        "workload.prompt_tokens": max(1, round(float(brow["prompt_tokens_mean"]))),
        "workload.output_tokens": max(1, round(float(brow["output_tokens_mean"]))),
        "workload.num_requests": max(2, len(reqs)),
        "warmup_requests": 0,
    }
    if not (math.isfinite(over["workload.rate"]) and over["workload.rate"] > 0):
        notes.append(f"benchmark {i}: no achieved rate, analytic model skipped")
        return {}
    try:
        pred = predict(scenario.with_overrides(over))
    except (ScenarioError, ValueError, ArithmeticError) as exc:
        notes.append(f"benchmark {i}: analytic model refused ({exc})")
        return {}
    if not pred.summary.get("stable", True):
        notes.append(
            f"benchmark {i}: {over['workload.rate']:.3g} req/s is past the analytic saturation "
            f"({pred.saturation_rate:.3g} req/s)"
        )
    return dict(pred.summary)


def compare_report(
    report: str | Path,
    scenario: Scenario,
    seed: int | None = None,
    benchmarks: Sequence[int | str] | None = None,
    analytic: bool = True,
) -> Comparison:
    """Replay every benchmark of a report and compare with the measurement.

    Parameters
    ----------
    report
        Report file (GuideLLM or vLLM).
    scenario
        Server, costs, speculation and acceptance to simulate; its workload is replaced.
    seed
        Simulation seed (acceptance draws); default the scenario's.
    benchmarks
        Indices or ids to compare; default all that can be replayed.
    analytic
        Also fill the analytic column with ``sdsim.predict``.
    """
    rep: Report = load_report(report)
    notes: list[str] = []
    which = [rep.resolve(b) for b in benchmarks] if benchmarks else list(range(len(rep.benchmarks)))
    rows: list[dict[str, Any]] = []
    for i in which:
        brow = rep.benchmarks.iloc[i]
        reqs = rep.benchmark_requests(i)
        if reqs.empty or not np.all(np.isfinite(reqs["start"].to_numpy(dtype=np.float64))):
            notes.append(f"benchmark {i}: no per-request start times, not replayed")
            continue
        scn_i = replay_scenario(scenario, report, i)
        sim = simulate(scn_i, seed=seed)
        done = sim.requests[np.isfinite(sim.requests["finish"])]
        if len(done) < len(sim.requests):
            notes.append(
                f"benchmark {i}: {len(sim.requests) - len(done)} requests unfinished in the "
                f"simulation ({sim.summary['stop_reason']})"
            )
        ana: dict[str, Any] = {}
        if analytic:
            ana = _analytic(scenario, brow, reqs, i, notes)
        for m in METRICS:
            meas = _stats(reqs[m].to_numpy(dtype=np.float64))
            simd = _stats(done[m].to_numpy(dtype=np.float64))
            for s in STATS:
                a_val = float(ana.get(f"{m}_{s}", math.nan)) if ana else math.nan
                mv = meas[s]
                rows.append(
                    {
                        "benchmark": i,
                        "benchmark_id": brow["benchmark_id"],
                        "strategy": brow["strategy"],
                        "rate": float(brow["rate"]),
                        "metric": m,
                        "stat": s,
                        "measured": mv,
                        "simulated": simd[s],
                        "analytic": a_val,
                        "sim_rel_error": (simd[s] - mv) / mv if mv else math.nan,
                        "analytic_rel_error": (a_val - mv) / mv if mv else math.nan,
                    }
                )
    return Comparison(pd.DataFrame(rows), notes)


def comparison_figure(
    table: pd.DataFrame, path: str | Path, title: str = "", seed: int | None = None
) -> Path:
    """One figure: per metric, mean (solid) and p99 (dashed) of measured, simulated and analytic
    latency against each benchmark's achieved rate.

    Parameters
    ----------
    table
        :attr:`Comparison.table`.
    path
        PNG file to write.
    title
        Figure title.
    seed
        The simulation's seed, recorded in the PNG with the sdsim version.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 4), constrained_layout=True)
    colors = {"measured": "black", "simulated": "tab:blue", "analytic": "tab:orange"}
    for ax, m in zip(axes, METRICS, strict=True):
        sub = table[table["metric"] == m]
        for col, colr in colors.items():
            for stat, ls in (("mean", "-"), ("p99", "--")):
                d = sub[sub["stat"] == stat].sort_values("rate")
                y = d[col].to_numpy(dtype=np.float64) * 1e3
                if not np.isfinite(y).any():
                    continue
                ax.plot(d["rate"], y, ls, marker="o", color=colr, label=f"{col} {stat}")
        ax.set_title({"ttft": "TTFT", "tpot": "TPOT (decode gap)", "e2e": "end-to-end"}[m])
        ax.set_xlabel("achieved rate (req/s)")
        ax.set_ylabel(f"{m if m == 'e2e' else m.upper()} latency (ms)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=110, metadata=png_metadata(seed, title))
    plt.close(fig)
    return p
