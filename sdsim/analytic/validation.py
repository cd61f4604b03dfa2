"""Check the analytic model against the simulation, rate by rate, with confidence intervals.

For each rate, N seeded replications of ``sdsim.simulate`` give a t-based confidence interval of
each summary statistic (:func:`sdsim.metrics.t_confidence_interval`); the analytic prediction is
set beside it with its relative error, and a verdict says where the model holds within tolerance
and, where it does not, the likely reason (saturation, the admission cap, prefill interference).
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_FRACTIONS",
    "TOLERANCES",
    "ValidationReport",
    "plot_validation",
    "validate",
]

import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sdsim.analytic.prediction import Prediction, predict
from sdsim.errors import ScenarioError
from sdsim.metrics import t_confidence_interval
from sdsim.scenario import Scenario, scenario_from_dict
from sdsim.simulation import simulate
from sdsim.slo import slo_bounds

# Fractions of the predicted saturation rate validated by default.
DEFAULT_FRACTIONS = (0.1, 0.25, 0.4, 0.55, 0.7, 0.8, 0.9, 0.95)
# (metric, statistic) -> relative tolerance the model is held to (the targets; quantiles
# not named there get the p99 tolerance).
TOLERANCES: dict[tuple[str, str], float] = {
    ("e2e", "mean"): 0.05,
    ("e2e", "p50"): 0.10,
    ("e2e", "p90"): 0.10,
    ("e2e", "p99"): 0.10,
    ("ttft", "mean"): 0.10,
    ("ttft", "p50"): 0.15,
    ("ttft", "p90"): 0.15,
    ("ttft", "p99"): 0.15,
    ("tpot", "mean"): 0.10,
    ("tpot", "p50"): 0.10,
    ("tpot", "p90"): 0.10,
    ("tpot", "p99"): 0.10,
}
METRICS = ("e2e", "ttft", "tpot")
STATISTICS = ("mean", "p50", "p90", "p99")


@dataclass
class ValidationReport:
    """What `validate` found.

    Attributes
    ----------
    table
        One row per (rate, metric, statistic): ``rate, metric, statistic, analytic, sim_mean,
        ci_low, ci_high, rel_error, inside_ci`` plus ``tolerance``, ``holds``, ``fraction``
        (of saturation) and ``seeds`` (the replications' run seeds, space separated). With
        SLOs in the scenario, rows ``goodput``/``rps`` and ``slo``/``attainment_<SLO>`` too
        (reported, not judged: ``holds`` is empty).
    verdicts
        One row per rate: ``rate, fraction, holds, worst, reason``.
    saturation_rate
        Predicted saturation rate (req/s).
    """

    table: pd.DataFrame
    verdicts: pd.DataFrame
    saturation_rate: float


def _sim_one(args: tuple[dict[str, Any], int]) -> dict[str, Any]:
    # A top-level function so a process pool can pickle it; the scenario travels as plain data.
    data, seed = args
    res = simulate(scenario_from_dict(data), seed=seed)
    return {k: v for k, v in res.summary.items() if isinstance(v, (int, float, bool))}


def _reason(
    pred: Prediction, frac: float, bad: list[tuple[str, str, float]], sims: list[dict[str, Any]]
) -> str:
    if not bad and not pred.outside_model:
        return "holds"
    why: list[str] = []
    if pred.outside_model:
        why.append(f"outside the model: {pred.outside_model}")
    pkv = float(pred.summary.get("p_kv_full", 0.0))
    if pkv > 0.01 and not pred.outside_model:
        why.append(
            f"KV pressure (P(KV demand > capacity)={pkv:.0%}: preemption by recomputation "
            "is not in the model)"
        )
    scn = pred.scenario
    if scn is not None and scn.workload.arrival != "poisson":
        w = scn.workload
        what = f"gamma gaps with CV {w.cv:g}" if w.arrival == "gamma" else w.arrival
        if not (w.arrival == "gamma" and w.cv == 1.0):
            why.append(
                f"non-Poisson arrivals ({what}): the birth-death law assumes Poisson arrivals, "
                "bursts meet larger batches than it predicts"
            )
    if any(s.get("stable") is False for s in sims):
        why.append("simulation unstable (overload)")
    if frac >= 0.9:
        why.append(f"saturation ({frac:.0%} of capacity: batch fluctuations dominate)")
    pw = float(pred.summary.get("p_wait", 0.0))
    if pw > 0.005:
        why.append(f"admission cap (P(wait)={pw:.1%}; heavy-traffic wait approximation)")
    co = pred.coefficients
    if co is not None:
        lam = pred.summary["throughput_rps"] / max(
            1, pred.scenario.server.replicas if pred.scenario else 1
        )
        share = lam * co.c_p
        if any(m == "ttft" for m, _, _ in bad) and share > 0.15 and pw <= 0.005:
            why.append(f"prefill interference (prefill takes {share:.0%} of GPU time)")
    if co is not None and co.fit_error > 0.05:
        why.append(
            f"step time far from linear over the batches met ({co.linearization} is off by up "
            f"to {co.fit_error:.0%}; tails use per-batch tangents)"
        )
    if not why:
        why.append("model error")
    return "; ".join(why)


def validate(
    scn: Scenario,
    rates: Sequence[float] | None = None,
    reps: int = 3,
    jobs: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ValidationReport:
    """Run the simulation at several rates and compare with the analytic prediction.

    Parameters
    ----------
    scn
        Scenario (its rate is replaced by each validated rate).
    rates
        Arrival rates (req/s); default :data:`DEFAULT_FRACTIONS` of the predicted saturation.
    reps
        Seeded replications per rate (seeds ``scn.seed .. scn.seed + reps - 1``).
    jobs
        Worker processes (default: ``min(2, cpu count)``; 1 runs in this process).
    progress
        Called with (simulations done, total).

    Returns
    -------
    ValidationReport
    """
    if reps < 1:
        raise ScenarioError("--reps", f"must be >= 1 (got {reps})")
    base = predict(scn, rates=[], k_values=[scn.spec.k], quantiles=False)
    sat = base.saturation_rate
    if rates is None:
        rates = [round(f * sat, 6) for f in DEFAULT_FRACTIONS]
    rates = [float(r) for r in rates]
    for r in rates:
        if not (r > 0 and math.isfinite(r)):
            raise ScenarioError("--rates", f"rates must be positive numbers (got {r})")
    scns = [scn.with_overrides({"workload.rate": r}) for r in rates]
    tasks = [(s.to_dict(), scn.seed + i) for s in scns for i in range(reps)]
    total = len(tasks)
    results: list[dict[str, Any]] = []
    njobs = jobs if jobs is not None else min(2, os.cpu_count() or 1)
    if progress is not None:
        progress(0, total)
    if njobs <= 1:
        for i, t in enumerate(tasks):
            results.append(_sim_one(t))
            if progress is not None:
                progress(i + 1, total)
    else:
        with ProcessPoolExecutor(max_workers=njobs) as pool:
            for i, res in enumerate(pool.map(_sim_one, tasks)):
                results.append(res)
                if progress is not None:
                    progress(i + 1, total)
    rows: list[dict[str, Any]] = []
    verdicts: list[dict[str, Any]] = []
    for j, (r, s) in enumerate(zip(rates, scns, strict=True)):
        pred = predict(s, rates=[], k_values=[s.spec.k])
        sims = results[j * reps : (j + 1) * reps]
        bad: list[tuple[str, str, float]] = []
        worst = 0.0
        for m in METRICS:
            for st in STATISTICS:
                key = f"{m}_{st}"
                mean, lo, hi = t_confidence_interval([x.get(key, math.nan) for x in sims])
                ana = float(pred.summary.get(key, math.nan))
                rel = (ana - mean) / mean if mean and math.isfinite(mean) else math.nan
                tol = TOLERANCES[(m, st)]
                ok = bool(math.isfinite(rel) and abs(rel) <= tol)
                rows.append(
                    {
                        "rate": r,
                        "fraction": r / sat,
                        "metric": m,
                        "statistic": st,
                        "analytic": ana,
                        "sim_mean": mean,
                        "ci_low": lo,
                        "ci_high": hi,
                        "rel_error": rel,
                        "inside_ci": bool(lo <= ana <= hi),
                        "tolerance": tol,
                        "holds": ok,
                        # the replications' seeds, so any row can be re-simulated exactly
                        "seeds": " ".join(str(t[1]) for t in tasks[j * reps : (j + 1) * reps]),
                    }
                )
                if not ok:
                    bad.append((m, st, rel))
                if math.isfinite(rel):
                    worst = max(worst, abs(rel) / tol)
        # goodput and attainment per SLO (when the scenario has SLOs): reported beside the
        # latencies, not judged (they follow from the latency laws the rows above judge)
        for key in ("goodput_rps", *(f"slo_attainment_{k}" for k in slo_bounds(s.slo))):
            if not slo_bounds(s.slo):
                break
            mean, lo, hi = t_confidence_interval([x.get(key, math.nan) for x in sims])
            ana = float(pred.summary.get(key, math.nan))
            rel = (ana - mean) / mean if mean and math.isfinite(mean) else math.nan
            metric, _, stat = key.partition("_")
            rows.append(
                {
                    "rate": r, "fraction": r / sat, "metric": metric, "statistic": stat,
                    "analytic": ana, "sim_mean": mean, "ci_low": lo, "ci_high": hi,
                    "rel_error": rel, "inside_ci": bool(lo <= ana <= hi),
                    "tolerance": math.nan, "holds": None,
                    "seeds": " ".join(str(t[1]) for t in tasks[j * reps : (j + 1) * reps]),
                }
            )  # fmt: skip
        verdicts.append(
            {
                "rate": r,
                "fraction": r / sat,
                "holds": not bad and not pred.outside_model,
                "failing": ", ".join(f"{m}_{st} {e:+.1%}" for m, st, e in bad) or "-",
                "reason": _reason(pred, r / sat, bad, sims),
                "p_wait": float(pred.summary.get("p_wait", math.nan)),
                "p_kv_full": float(pred.summary.get("p_kv_full", 0.0)),
                "outside_model": pred.outside_model or "",
                "sim_stable": all(x.get("stable") is not False for x in sims),
            }
        )
    return ValidationReport(pd.DataFrame(rows), pd.DataFrame(verdicts), sat)


def plot_validation(
    report: ValidationReport,
    scn: Scenario,
    path: str | Path,
    curve_points: int = 16,
    targets: dict[str, float] | None = None,
) -> None:
    """validation.png: latency vs rate (analytic curves, simulated points with CI bars, mean and
    p99 of e2e, TTFT and TPOT) and a panel of relative errors.

    Parameters
    ----------
    report
        From :func:`validate`.
    scn
        The scenario (for the analytic curves).
    path
        Output PNG.
    curve_points
        Rates on each analytic curve.
    targets
        Summary key -> target (seconds), drawn as a line on that metric's panel
        (:func:`sdsim.plots.parse_targets`).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sdsim.plots import draw_target
    from sdsim.provenance import png_metadata

    df = report.table
    sat = report.saturation_rate
    rmax = max(float(df["rate"].max()), 0.0)
    grid = np.linspace(0.05 * sat, min(0.97 * sat, max(rmax, 0.1 * sat)), curve_points)
    curves: dict[str, list[float]] = {f"{m}_{s}": [] for m in METRICS for s in ("mean", "p99")}
    limit = ""
    for r in grid:
        p = predict(
            scn.with_overrides({"workload.rate": float(r)}), rates=[], k_values=[scn.spec.k]
        )
        limit = p.saturation_limit
        for key in curves:
            curves[key].append(float(p.summary.get(key, math.nan)))
    fig, axes = plt.subplots(
        2, 3, figsize=(15, 8), sharex=True, gridspec_kw={"height_ratios": [3, 2]}
    )
    colors = {"mean": "tab:blue", "p99": "tab:red"}
    for col, m in enumerate(METRICS):
        ax = axes[0, col]
        for st in ("mean", "p99"):
            ax.plot(
                grid,
                np.asarray(curves[f"{m}_{st}"]) * 1e3,
                color=colors[st],
                label=f"analytic {st}",
            )
            d = df[(df["metric"] == m) & (df["statistic"] == st)]
            yerr = (
                np.vstack(
                    [
                        (d["sim_mean"] - d["ci_low"]).to_numpy(),
                        (d["ci_high"] - d["sim_mean"]).to_numpy(),
                    ]
                )
                * 1e3
            )
            ax.errorbar(
                d["rate"],
                d["sim_mean"] * 1e3,
                yerr=yerr,
                fmt="o",
                color=colors[st],
                capsize=3,
                label=f"simulated {st} (95% CI)",
            )
        ax.axvline(sat, color="grey", ls=":", label=f"predicted saturation ({limit})")
        for key, value in (targets or {}).items():
            if key.startswith(f"{m}_"):
                draw_target(ax, key, value, 1e3)
        ax.set_title(f"{m.upper()} latency")
        ax.set_ylabel(f"{m.upper() if m != 'e2e' else m} latency (ms)")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
        ax2 = axes[1, col]
        for st, mk in (("mean", "o-"), ("p50", "^-"), ("p90", "s-"), ("p99", "d-")):
            d = df[(df["metric"] == m) & (df["statistic"] == st)]
            ax2.plot(d["rate"], d["rel_error"] * 100, mk, label=st)
        tol = TOLERANCES[(m, "mean")] * 100
        ax2.axhspan(-tol, tol, color="green", alpha=0.1, label=f"±{tol:.0f}% (mean target)")
        ax2.axhline(0, color="black", lw=0.5)
        ax2.set_xlabel("arrival rate (req/s)")
        ax2.set_ylabel("analytic vs simulated (%)")
        ax2.legend(fontsize=7)
    fig.suptitle(f"{scn.name}: analytic model vs simulation (k={scn.spec.k})")
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata=png_metadata(scn.seed, f"{scn.name}: validation"))
    plt.close(fig)
