"""Check the analytic model against the simulation, rate by rate, with steady-state CIs.

For each rate, :mod:`sdsim.steadystate` runs replications until the 95% CIs of the p99s are
narrow enough (``target``, relative half-width) or the request budget is spent: every run's
warm-up is cut by MSER-5, the replications are batched, and percentile CIs are read off the
pooled sample (so they never leave the data's range). The analytic prediction is set beside
each estimate with its relative error and the range of errors the CI allows, and every
statistic gets one of three verdicts: **holds** (the whole CI lies within the tolerance of the
prediction), **fails** (all of it lies outside) or **CI too wide to judge**. A rate holds when
all its statistics hold and the prediction is inside the model; where it does not, the reason
names what the model leaves out (saturation, KV pressure, an assumption ``predict`` flags).
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_FRACTIONS",
    "MAP_FILES",
    "SCENARIO_FILES",
    "TOLERANCES",
    "ValidationReport",
    "plot_error_map",
    "plot_validation",
    "predicted_hit_saturation",
    "report_layout",
    "reports_from_csv",
    "validate",
    "validate_many",
    "write_reports",
]

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from matplotlib.figure import Figure

from sdsim.analytic.hitpoint import consistent_saturation
from sdsim.analytic.prediction import LoadPredictor, Prediction, predict
from sdsim.errors import ScenarioError
from sdsim.outputs import sidecar_file, write_run
from sdsim.provenance import png_metadata
from sdsim.scenario import Scenario
from sdsim.slo import slo_bounds
from sdsim.steadystate import (
    DEFAULT_INITIAL,
    DEFAULT_MAX_REQUESTS,
    DEFAULT_TARGET,
    Sequential,
    SteadyState,
    run_sequential,
)

# Fractions of the predicted saturation rate validated by default.
DEFAULT_FRACTIONS = (0.1, 0.25, 0.4, 0.55, 0.7, 0.8, 0.9, 0.95)
# (metric, statistic) -> relative tolerance the model is held to.
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
TOO_WIDE = "CI too wide to judge"
# Units of validation.csv's columns (its sidecar); latencies in seconds, errors relative.
_UNITS = {
    "rate": "req/s",
    "analytic": "s (latencies; goodput req/s, attainment a fraction)",
    "sim": "s (as analytic)",
    "ci_low": "s (as analytic)",
    "ci_high": "s (as analytic)",
}


@dataclass
class ValidationReport:
    """What `validate` found.

    Attributes
    ----------
    table
        One row per (rate, metric, statistic): ``rate, fraction, metric, statistic, analytic,
        sim, ci_low, ci_high, rel_error, err_low, err_high, ci_half_width, tolerance, verdict``
        (``holds`` / ``fails`` / :data:`TOO_WIDE`), ``holds`` (bool), ``outside_model``
        (predict says the rate is outside the model), ``requests`` (simulated at that rate),
        ``seeds`` and ``deleted`` (the replications' run seeds and warm-up cuts, space
        separated, so any row can be re-simulated exactly). With SLOs in the scenario,
        rows ``goodput``/``rps`` and ``slo``/``attainment_<SLO>`` too (reported, not judged:
        ``verdict`` and ``holds`` empty).
    verdicts
        One row per rate: ``rate, fraction, verdict`` (``holds`` / ``breaks`` /
        :data:`TOO_WIDE`), ``holds``, ``failing``, ``undecided``, ``reason``, ``p_wait``,
        ``p_kv_full``, ``outside_model``, ``caveats`` (``predict``'s known errors there,
        ``"; "``-joined), ``sim_stable``, ``requests``, ``target_met``.
    saturation_rate
        Predicted saturation rate (req/s).
    scenario
        The scenario's name.
    """

    table: pd.DataFrame
    verdicts: pd.DataFrame
    saturation_rate: float
    scenario: str = ""


def _reason(pred: Prediction, frac: float, bad: list[tuple[str, str, float]], stable: bool) -> str:
    if not bad and not pred.outside_model and stable:
        return "holds"
    why: list[str] = []
    if pred.outside_model:
        why.append(f"outside the model: {pred.outside_model}")
    why += [f"known model error: {c}" for c in pred.caveats]
    pkv = float(pred.summary.get("p_kv_full", 0.0))
    if pkv > 0.01 and not pred.outside_model:
        why.append(
            f"KV pressure (P(KV demand > capacity)={pkv:.0%}: preemption by recomputation "
            "is not in the model)"
        )
    if not stable:
        why.append("simulation unstable (overload)")
    if frac >= 0.9:
        why.append(f"saturation ({frac:.0%} of capacity: batch fluctuations dominate)")
    pw = float(pred.summary.get("p_wait", 0.0))
    if pw > 0.005:
        why.append(f"admission cap (P(wait)={pw:.1%}; heavy-traffic wait approximation)")
    co = pred.coefficients
    if co is not None and co.fit_error > 0.05:
        why.append(
            f"step time far from linear over the batches met ({co.linearization} is off by up "
            f"to {co.fit_error:.0%})"
        )
    if not why:
        why.append("model error")
    return "; ".join(why)


def _verdict(ana: float, lo: float, hi: float, tol: float) -> tuple[str, float, float]:
    """Three-way verdict of one statistic and the range of relative errors its CI allows."""
    if not (math.isfinite(ana) and math.isfinite(lo) and math.isfinite(hi)) or lo <= 0:
        return TOO_WIDE, math.nan, math.nan
    e_lo, e_hi = ana / hi - 1.0, ana / lo - 1.0
    if e_lo >= -tol and e_hi <= tol:
        return "holds", e_lo, e_hi
    if e_lo > tol or e_hi < -tol:
        return "fails", e_lo, e_hi
    return TOO_WIDE, e_lo, e_hi


def _rows(
    r: float, sat: float, pred: Prediction, st: SteadyState
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    bad: list[tuple[str, str, float]] = []
    undecided: list[str] = []
    for m in METRICS:
        for stat in STATISTICS:
            key = f"{m}_{stat}"
            est = st.estimates[key]
            ana = float(pred.summary.get(key, math.nan))
            tol = TOLERANCES[(m, stat)]
            rel = ana / est.value - 1.0 if est.value and math.isfinite(est.value) else math.nan
            if not math.isfinite(ana) and not math.isfinite(est.value):
                verdict, e_lo, e_hi = "n/a", math.nan, math.nan  # e.g. TPOT of 1-token answers
            else:
                verdict, e_lo, e_hi = _verdict(ana, est.low, est.high, tol)
            rows.append(
                {
                    "rate": r,
                    "fraction": r / sat,
                    "metric": m,
                    "statistic": stat,
                    "analytic": ana,
                    "sim": est.value,
                    "ci_low": est.low,
                    "ci_high": est.high,
                    "rel_error": rel,
                    "err_low": e_lo,
                    "err_high": e_hi,
                    "ci_half_width": est.rel_half_width,
                    "tolerance": tol,
                    "verdict": verdict,
                    "holds": verdict in ("holds", "n/a"),
                    "outside_model": bool(pred.outside_model),
                    "requests": st.requests,
                    "seeds": " ".join(str(x) for x in st.seeds),
                    "deleted": " ".join(str(x) for x in st.deleted),
                }
            )
            if verdict == "fails":
                bad.append((m, stat, rel))
            elif verdict == TOO_WIDE:
                undecided.append(f"{key} {rel:+.1%} (CI ±{est.rel_half_width:.1%})")
    # goodput and attainment per SLO (when the scenario has SLOs): reported beside the
    # latencies, not judged (they follow from the latency laws the rows above judge)
    for key, est in st.attainment.items():
        if key == "all":
            scale, metric, stat, pkey = r, "goodput", "rps", "goodput_rps"
        else:
            scale, metric, stat, pkey = 1.0, "slo", f"attainment_{key}", f"slo_attainment_{key}"
        ana = float(pred.summary.get(pkey, math.nan))
        sim = est.value * scale
        rows.append(
            {
                "rate": r, "fraction": r / sat, "metric": metric, "statistic": stat,
                "analytic": ana, "sim": sim, "ci_low": est.low * scale,
                "ci_high": est.high * scale, "rel_error": ana / sim - 1.0 if sim else math.nan,
                "err_low": math.nan, "err_high": math.nan, "ci_half_width": est.rel_half_width,
                "tolerance": math.nan, "verdict": "", "holds": None,
                "outside_model": bool(pred.outside_model), "requests": st.requests,
                "seeds": " ".join(str(x) for x in st.seeds),
                "deleted": " ".join(str(x) for x in st.deleted),
            }
        )
    frac = r / sat
    broken = bool(bad) or bool(pred.outside_model) or not st.stable
    verdict = "breaks" if broken else (TOO_WIDE if undecided else "holds")
    return rows, {
        "rate": r,
        "fraction": frac,
        "verdict": verdict,
        "holds": verdict == "holds",
        "failing": ", ".join(f"{m}_{s} {e:+.1%}" for m, s, e in bad) or "-",
        "undecided": "; ".join(undecided) or "-",
        "reason": _reason(pred, frac, bad, st.stable) if broken else verdict,
        "p_wait": float(pred.summary.get("p_wait", math.nan)),
        "p_kv_full": float(pred.summary.get("p_kv_full", 0.0)),
        "outside_model": pred.outside_model or "",
        "caveats": "; ".join(pred.caveats),
        "sim_stable": st.stable,
        "requests": st.requests,
        "target_met": st.target_met,
    }


def predicted_hit_saturation(scn: Scenario) -> float:
    """The saturation rate (req/s) of a scenario whose prefix-cache hit rate is predicted, the
    hit rate taken at the saturation rate itself (:func:`~sdsim.analytic.hitpoint.
    consistent_saturation`)."""

    load = LoadPredictor(scn)
    reps = scn.server.replicas

    def at(rate: float) -> float:
        return load(rate, reps, quantiles=False).saturation_rate

    return consistent_saturation(at)


def _rates(scn: Scenario, rates: Sequence[float] | None) -> tuple[list[float], float]:
    base = predict(scn, rates=[], k_values=[scn.spec.k], quantiles=False)
    sat = base.saturation_rate
    if base.summary.get("prefix_hit_source") == "predicted":
        sat = predicted_hit_saturation(scn)
    rs = [round(f * sat, 6) for f in DEFAULT_FRACTIONS] if rates is None else list(rates)
    out = [float(r) for r in rs]
    for r in out:
        if not (r > 0 and math.isfinite(r)):
            raise ScenarioError("--rates", f"rates must be positive numbers (got {r})")
    return out, sat


def validate_many(
    scns: Sequence[Scenario],
    rates: Sequence[Sequence[float] | None] | None = None,
    *,
    target: float = DEFAULT_TARGET,
    max_requests: int = DEFAULT_MAX_REQUESTS,
    initial: int = DEFAULT_INITIAL,
    reps: int = 2,
    jobs: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[ValidationReport]:
    """:func:`validate` for several scenarios, their simulations sharing one process pool.

    Parameters are :func:`validate`'s, ``rates`` one entry (or ``None``) per scenario.
    """
    if reps < 1:
        raise ScenarioError("--reps", f"must be >= 1 (got {reps})")
    if not 0 < target < 1:
        raise ScenarioError("--half-width", f"must lie in (0, 1) (got {target})")
    if initial < 10:
        raise ScenarioError("--initial", f"must be >= 10 requests (got {initial})")
    if max_requests < reps * initial:
        raise ScenarioError(
            "--max-requests", f"must be >= reps x initial = {reps * initial} (got {max_requests})"
        )
    plans: list[tuple[Scenario, list[float], float, list[Sequential]]] = []
    for i, scn in enumerate(scns):
        rs, sat = _rates(scn, None if rates is None else rates[i])
        seqs = [
            Sequential(
                scn.with_overrides({"workload.rate": r}).to_dict(),
                scn.seed,
                target=target,
                initial=initial,
                max_requests=max_requests,
                reps=reps,
                slo=slo_bounds(scn.slo),
            )
            for r in rs
        ]
        plans.append((scn, rs, sat, seqs))
    njobs = jobs if jobs is not None else 2
    run_sequential([s for p in plans for s in p[3]], jobs=njobs, progress=progress)
    reports = []
    for scn, rs, sat, seqs in plans:
        rows: list[dict[str, Any]] = []
        verdicts: list[dict[str, Any]] = []
        for r, seq in zip(rs, seqs, strict=True):
            assert seq.result is not None
            one = scn.with_overrides({"workload.rate": r})
            pred = predict(one, rates=[], k_values=[scn.spec.k])
            rr, v = _rows(r, sat, pred, seq.result)
            rows.extend(rr)
            verdicts.append(v)
        reports.append(ValidationReport(pd.DataFrame(rows), pd.DataFrame(verdicts), sat, scn.name))
    return reports


def validate(
    scn: Scenario,
    rates: Sequence[float] | None = None,
    reps: int = 2,
    jobs: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    *,
    target: float = DEFAULT_TARGET,
    max_requests: int = DEFAULT_MAX_REQUESTS,
    initial: int = DEFAULT_INITIAL,
) -> ValidationReport:
    """Simulate a scenario at several rates to steady state and compare with the prediction.

    Parameters
    ----------
    scn
        Scenario (its rate and length are replaced per run).
    rates
        Arrival rates (req/s); default :data:`DEFAULT_FRACTIONS` of the predicted saturation.
    reps
        Replications per stage of the sequential procedure (seeds ``scn.seed``, ``+1``, ...).
    jobs
        Worker processes (default 2; 1 runs in this process).
    progress
        Called with (requests simulated, requests planned so far).
    target
        Relative CI half-width the p99s of e2e, TTFT and TPOT are run to.
    max_requests
        Most requests simulated per rate (the budget that bounds the run length).
    initial
        Requests per replication in the first stage.

    Returns
    -------
    ValidationReport
    """
    return validate_many(
        [scn],
        None if rates is None else [rates],
        target=target,
        max_requests=max_requests,
        initial=initial,
        reps=reps,
        jobs=jobs,
        progress=progress,
    )[0]


# The files `sdsim validate` writes per scenario and, for several, beside them.
SCENARIO_FILES = ("validation.csv", "validation.csv.meta.json", "validation.png")
MAP_FILES = ("validation-all.csv", "validation-all.csv.meta.json", "validation-map.png")


def report_layout(names: Sequence[str], out_dir: str | Path) -> dict[Path, tuple[str, ...]]:
    """Where :func:`write_reports` puts its files: directory -> file names (``out_dir`` for one
    scenario; ``out_dir/NAME/`` per scenario and the map files in ``out_dir`` for several), so a
    command can check every destination before it simulates
    (:func:`sdsim.outputs.output_dir`)."""
    out = Path(out_dir)
    if len(names) == 1:
        return {out: SCENARIO_FILES}
    return {out: MAP_FILES, **{out / n: SCENARIO_FILES for n in names}}


def _write_csv(table: pd.DataFrame, path: Path) -> None:
    table.to_csv(path, index=False)


def _write_plot(
    rep: ValidationReport, scn: Scenario, targets: dict[str, float] | None, path: Path
) -> None:
    plot_validation(rep, scn, path, targets=targets)


def write_reports(
    reports: Sequence[ValidationReport],
    scns: Sequence[Scenario],
    out_dir: str | Path,
    targets: dict[str, float] | None = None,
) -> list[Path]:
    """Write what ``sdsim validate`` leaves on disk, each directory as one atomic run
    (:func:`sdsim.outputs.write_run`): per scenario ``validation.csv`` (with its ``.meta.json``
    sidecar) and ``validation.png``, and for several scenarios also ``validation-all.csv`` and
    the error map ``validation-map.png`` (layout: :func:`report_layout`). ``targets`` are
    :func:`plot_validation`'s target lines.

    Returns
    -------
    list of Path
        The files written.
    """
    layout = list(report_layout([s.name for s in scns], out_dir))
    dirs = layout[1:] if len(scns) > 1 else layout
    files: list[Path] = []
    for rep, scn, d in zip(reports, scns, dirs, strict=True):
        side, write_side = sidecar_file("validation.csv", scn.seed, scenario=scn.name, units=_UNITS)
        files += write_run(
            d,
            {
                "validation.csv": partial(_write_csv, rep.table),
                side: write_side,
                "validation.png": partial(_write_plot, rep, scn, targets),
            },
            "validate",
        )
    if len(scns) > 1:
        frames = [r.table.assign(scenario=r.scenario) for r in reports]
        allt = pd.concat(frames, ignore_index=True)
        allt = allt[["scenario", *[c for c in allt.columns if c != "scenario"]]]
        side, write_side = sidecar_file("validation-all.csv", None, units=_UNITS)
        files += write_run(
            layout[0],
            {
                "validation-all.csv": partial(_write_csv, allt),
                side: write_side,
                "validation-map.png": lambda p: plot_error_map(reports, p),
            },
            "validate --all",
        )
    return files


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
                        (d["sim"] - d["ci_low"]).to_numpy(),
                        (d["ci_high"] - d["sim"]).to_numpy(),
                    ]
                )
                * 1e3
            )
            ax.errorbar(
                d["rate"],
                d["sim"] * 1e3,
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
        for st, mk in (("mean", "o"), ("p50", "^"), ("p90", "s"), ("p99", "d")):
            d = df[(df["metric"] == m) & (df["statistic"] == st)]
            e = d["rel_error"].to_numpy() * 100
            lo = np.nan_to_num(e - d["err_low"].to_numpy() * 100)
            hi = np.nan_to_num(d["err_high"].to_numpy() * 100 - e)
            ax2.errorbar(d["rate"], e, yerr=np.vstack([lo, hi]), fmt=mk + "-", capsize=2,
                         label=st)
        tol = TOLERANCES[(m, "mean")] * 100
        ax2.axhspan(-tol, tol, color="green", alpha=0.1, label=f"±{tol:.0f}% (mean target)")
        ax2.axhline(0, color="black", lw=0.5)
        ax2.set_xlabel("arrival rate (req/s)")
        ax2.set_ylabel("analytic vs simulated (%, 95% CI)")
        ax2.legend(fontsize=7)
    fig.suptitle(f"{scn.name}: analytic model vs simulation (k={scn.spec.k})")
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata=png_metadata(scn.seed, f"{scn.name}: validation"))
    plt.close(fig)


def reports_from_csv(path: str | Path) -> list[ValidationReport]:
    """The reports of a ``validation-all.csv`` (from ``sdsim validate --all``), one per
    scenario, for :func:`plot_error_map` and :func:`write_reports` (their ``verdicts`` are left
    empty)."""
    df = pd.read_csv(path)
    return [
        ValidationReport(
            g.drop(columns="scenario"),
            pd.DataFrame(),
            float((g["rate"] / g["fraction"]).median()),  # the saturation the loads were set by
            str(name),
        )
        for name, g in df.groupby("scenario", sort=False)
    ]


def plot_error_map(
    reports: Sequence[ValidationReport], path: str | Path | None = None
) -> Figure | None:
    """Where the model holds: relative error of the mean and the p99 of e2e, TTFT and TPOT
    against the load (fraction of the predicted saturation), one line per scenario, with the
    range of errors each estimate's 95% CI allows and the tolerance band shaded; points that
    ``predict`` marks outside the model are drawn hollow.

    Parameters
    ----------
    reports
        From :func:`validate_many` (one per scenario), or rebuilt from ``validation-all.csv``.
    path
        Output PNG; ``None`` returns the figure instead (e.g. to show in a notebook).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(16, 8.5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 3, sharex=True)
    for row, stat in enumerate(("mean", "p99")):
        for col, m in enumerate(METRICS):
            ax = axes[row, col]
            tol = TOLERANCES[(m, stat)] * 100
            ax.axhspan(-tol, tol, color="green", alpha=0.08)
            ax.axhline(0, color="black", lw=0.5)
            for i, rep in enumerate(reports):
                d = rep.table[(rep.table["metric"] == m) & (rep.table["statistic"] == stat)]
                if not len(d):
                    continue
                e = d["rel_error"].to_numpy() * 100
                lo = np.nan_to_num(e - d["err_low"].to_numpy() * 100)
                hi = np.nan_to_num(d["err_high"].to_numpy() * 100 - e)
                x = d["fraction"].to_numpy() + (i - len(reports) / 2) * 0.003
                color = f"C{i % 10}"
                ax.errorbar(x, e, yerr=np.vstack([lo, hi]), fmt="o-", ms=3, lw=1, capsize=2,
                            color=color, label=rep.scenario)
                if "outside_model" in d:
                    out = d["outside_model"].to_numpy(dtype=bool)
                    ax.plot(x[out], e[out], "o", ms=7, mfc="white", mec=color, zorder=3)
            ax.set_title(f"{m.upper()} {stat}: analytic vs simulated (±{tol:.0f}% shaded)")
            ax.set_ylabel("model error vs simulation (%)")
            lim = max(3 * tol, 10.0)
            ax.set_ylim(-lim, lim)
            if row == 1:
                ax.set_xlabel("load (fraction of the predicted saturation rate)")
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles, _ = axes[0, 0].get_legend_handles_labels()
    handles += [
        Patch(color="green", alpha=0.15, label="tolerance"),
        Line2D([], [], marker="o", ls="", mfc="white", mec="gray", label="outside the model"),
    ]
    axes[0, 0].legend(handles=handles, fontsize=7, loc="lower left")
    fig.suptitle("Where the closed-form model holds (errors with the simulation's 95% CI; "
                 "hollow: predict says outside the model)")
    fig.tight_layout()
    if path is None:
        return fig
    fig.savefig(path, dpi=110, metadata=png_metadata(None, "validation map"))
    return None
