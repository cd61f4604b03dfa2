"""The analytic model's commands: `sdsim predict`, `sdsim advise` and `sdsim validate`.

One meaning per number across the three (and `sdsim run`): "e2e mean" is the tail model's mean,
the mean of the same law the p50/p90/p99 come from (what `validate` checks against simulation);
the birth-death and mean-field means appear only in `predict`'s model table, under those names.
"Best k" is the draft length with the lowest tail-model e2e mean.

The model loads scipy.stats and compiles kernels on first use, so each command imports it when it
runs: `sdsim --help` and the other commands start without it.
"""

from __future__ import annotations

__all__ = ["advise", "predict", "validate"]

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from sdsim.cli.app import (
    LazyProgress,
    RatesOpt,
    ScenarioArg,
    SeedOpt,
    SetOpt,
    err,
    fmt,
    load,
    out,
    parse_rates,
    print_summary,
)
from sdsim.cli.tables import Column, alpha_text, render_table
from sdsim.errors import ScenarioError
from sdsim.labels import format_time
from sdsim.outputs import output_dir, resolve_output
from sdsim.scenario import Scenario
from sdsim.simulation import simulate

if TYPE_CHECKING:
    from sdsim.analytic.prediction import Prediction

TargetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--target",
        help="a target line METRIC=SECONDS on the figure, e.g. e2e_p99=10 (repeatable)",
    ),
]

MEAN_NOTE = (
    "mean and quantiles: the tail model (one law per metric); the birth-death and mean-field "
    "means are in the model table"
)


def saturation_text(p: Prediction) -> str:
    """``36.8 req/s (GPU)``: the saturation rate with what limits it."""
    text = f"{fmt(p.saturation_rate)} req/s ({p.saturation_limit})"
    if p.saturation_limit == "KV cache" and math.isfinite(p.gpu_saturation_rate):
        text += f"; GPU limit {fmt(p.gpu_saturation_rate)} req/s"
    return text


def break_even_text(p: Prediction, k: int) -> str:
    """The rate above which speculation is slower than k = 0, in words when there is none."""
    if k == 0:
        return "- (k = 0)"
    be = p.break_even_rate
    if math.isfinite(be):
        if be >= p.saturation_rate:
            return f"none below saturation (crossing at {fmt(be)} req/s)"
        return f"{fmt(be)} req/s (k = {k} is slower above it)"
    if math.isfinite(p.speedup) and p.speedup < 1:
        return f"none: k = {k} is slower than k = 0 at every load"
    return "none below saturation (speculation helps at every load)"


# The six stage coefficients of C1 = c1p + m (c1v + k c1d) and C2 = c2p + m (c2v + k c2d).
STAGE_NAMES = {
    "c1p": "c1p: prefill, alone",
    "c1v": "c1v: verify step, fixed part",
    "c1d": "c1d: draft position, fixed part",
    "c2p": "c2p: prefill, per request in flight",
    "c2v": "c2v: verify step, per request in flight",
    "c2d": "c2d: draft position, per request in flight",
}


def _model_rows(p: Prediction, k: int) -> list[list[str]]:
    co = p.coefficients
    s = p.summary
    rows = [
        ["C1: e2e mean at zero load", format_time(p.c1)],
        ["C2: added e2e per req/s of load", format_time(p.c2)],
        *([STAGE_NAMES.get(n, n), format_time(v)] for n, v in p.stages.items()),
        ["decode steps per request", fmt(co.steps if co else math.nan)],
        ["concurrency cap (requests)", fmt(co.n_max if co else "-")],
        ["saturation rate", saturation_text(p)],
        ["e2e mean, mean-field C1/(1 - λ C2)", format_time(s["e2e_mean_meanfield"])],
        ["e2e mean, birth-death model", format_time(s["e2e_mean_gps"])],
        ["P(wait for admission)", fmt(s["p_wait"])],
        ["speedup vs k = 0 (mean-field)", fmt(p.speedup)],
        ["break-even rate", break_even_text(p, k)],
    ]
    src = s.get("prefix_hit_source", "off")
    if src != "off":
        tc = s.get("prefix_char_time_s", math.nan)
        how = src
        if src == "predicted":
            how = f"predicted at this rate: a freed block stays cached {format_time(tc)}"
        hit = fmt(s["prefix_hit_rate"])
        rows.append(["prefix-cache hit rate (prompt tokens)", f"{hit} ({how})"])
    return rows


def _by_rate(scn: Scenario, rates: Sequence[float]) -> list[Prediction]:
    from sdsim.analytic.prediction import predict as _predict  # deferred: see the docstring

    return [
        _predict(scn.with_overrides({"workload.rate": float(r)}), rates=[], k_values=[scn.spec.k])
        for r in rates
    ]


def best_k(scn: Scenario, rates: Sequence[float]) -> list[tuple[int | None, dict[int, float]]]:
    """Per rate: the draft length with the lowest tail-model e2e mean, and every k's mean.

    Every k in ``0..spec.k_max`` (fixed, whatever the scenario's policy) is predicted at every
    rate in one :func:`~sdsim.analytic.prediction.predict_grid`, which shares the cost model and
    step curves. Saturated draft lengths are left out; the best k is ``None`` when every one is
    saturated.
    """
    from sdsim.analytic.prediction import _k_search_max, predict_grid  # deferred: see docstring

    fixed = scn if scn.spec.policy == "fixed" else scn.with_overrides({"spec.policy": "fixed"})
    ks = list(range(_k_search_max(scn) + 1))
    grid = predict_grid(fixed, [float(r) for r in rates], ks, None)
    means = grid["e2e_mean"].to_numpy(dtype=float).reshape(len(rates), len(ks))
    out: list[tuple[int | None, dict[int, float]]] = []
    for row in means:
        finite = {k: float(v) for k, v in zip(ks, row, strict=True) if math.isfinite(v)}
        out.append((min(finite, key=lambda kk: finite[kk]) if finite else None, finite))
    return out


def predict(
    scenario: ScenarioArg,
    set_: SetOpt = None,
    rates: RatesOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the prediction as JSON")] = False,
) -> None:
    """Predict latency (mean, p50/p90/p99), saturation, speedup and best k without simulating.

    With --rates: one row per rate (sorted) of mean and p99 e2e, TTFT and TPOT at the scenario's
    k, and the best k there.
    """
    from sdsim.analytic.prediction import predict as _predict  # deferred: see the docstring

    scn = load(scenario, set_)
    rate_list = sorted(set(parse_rates(rates) or []))
    p = _predict(scn, rates=rate_list or None)
    if json_out:
        d = p.to_dict()
        if rate_list:
            d["by_rate"] = {
                f"{r:g}": {**q.summary, "saturation_rate": q.saturation_rate}
                for r, q in zip(rate_list, _by_rate(scn, rate_list), strict=True)
            }
        out.print_json(json.dumps(d, default=str))
        return
    k = p.summary["k_effective"]
    print_summary(
        p.summary,
        f"{scn.name} (analytic): k={k}, {alpha_text(scn.acceptance)}, rate "
        f"{scn.workload.rate:g} req/s",
        notes=[MEAN_NOTE],
        facts=("throughput_rps", "throughput_tps", "tokens_per_step_mean", "batch_mean",
               "in_system_mean", "stable"),
    )
    render_table("model", [Column("quantity", "label"), Column("value", "text")], _model_rows(p, k))
    shown = rate_list or sorted(p.best_k)
    if rate_list:
        preds = _by_rate(scn, rate_list)
        rows: list[list[Any]] = []
        outside: list[str] = []
        for r, q, (kb, _) in zip(rate_list, preds, best_k(scn, rate_list), strict=True):
            s = q.summary
            if q.outside_model:
                outside.append(f"* {fmt(r)} req/s is outside the model: {q.outside_model}")
            outside += [f"{fmt(r)} req/s, caveat: {c}" for c in q.caveats]
            rows.append(
                [
                    fmt(r) + (" *" if q.outside_model else ""),
                    r / q.saturation_rate if q.saturation_rate > 0 else math.nan,
                    *(s[f"{m}_{st}"] for m in ("e2e", "ttft", "tpot") for st in ("mean", "p99")),
                    "saturated" if kb is None else str(kb),
                ]
            )
        lat = [(m, st) for m in ("e2e", "TTFT", "TPOT") for st in ("mean", "p99")]
        cols = [
            Column("rate", "label", "req/s"),
            Column("load", "pct", "% of sat."),
            *(Column(f"{m} {st}", "time") for m, st in lat),
            Column("best k", "text"),
        ]
        render_table(
            f"by rate (k={k}; saturation {saturation_text(p)})",
            cols,
            rows,
            notes=["best k: the lowest tail-model e2e mean over k = 0..k_max", *outside],
        )
    else:
        rows = []
        for r, (kb, means) in zip(shown, best_k(scn, shown), strict=True):
            e2e = means.get(kb, math.nan) if kb is not None else math.inf
            rows.append([fmt(r), "saturated" if kb is None else str(kb), e2e])
        render_table(
            "best draft length by rate (the scenario's rate and 10-90% of k = 0's saturation)",
            [Column("rate", "label", "req/s"), Column("best k", "text"),
             Column("e2e mean at best k", "time")],
            rows,
        )
    if not p.summary["stable"]:
        err.print(
            f"[yellow]warning:[/] rate {scn.workload.rate:g} req/s is at or past the predicted "
            f"saturation ({saturation_text(p)}): latency grows without bound"
        )
    elif p.outside_model:
        err.print(f"[yellow]warning:[/] outside the model: {p.outside_model}")
    for c in p.caveats:
        err.print(f"[yellow]caveat:[/] {c}")


def advise(
    scenario: ScenarioArg,
    rates: RatesOpt = None,
    set_: SetOpt = None,
    confirm: Annotated[
        bool, typer.Option("--confirm", help="simulate the three best k per rate to confirm")
    ] = False,
    seed: SeedOpt = None,
) -> None:
    """Best draft length per arrival rate (analytic; optionally confirmed by simulation)."""
    from sdsim.analytic.prediction import predict as _predict  # deferred: see the docstring

    scn = load(scenario, set_)
    rlist = sorted(set(parse_rates(rates) or [scn.workload.rate]))
    fixed = scn if scn.spec.policy == "fixed" else scn.with_overrides({"spec.policy": "fixed"})
    plain = _predict(fixed.with_overrides({"spec.k": 0}), rates=[], k_values=[0], quantiles=False)
    prog = LazyProgress("confirming by simulation")
    total = len(rlist) * 3 if confirm else 0
    done = 0
    rows: list[list[Any]] = []
    try:
        for r, (kbest, means) in zip(rlist, best_k(scn, rlist), strict=True):
            e0 = means.get(0, math.inf)
            if kbest is None:
                row: list[Any] = [fmt(r), "saturated", math.inf, e0, math.nan]
            else:
                e = means[kbest]
                row = [fmt(r), str(kbest), e, e0, e0 / e if math.isfinite(e0) else math.inf]
            if confirm:
                sim: dict[int, float] = {}
                for k in sorted(means, key=lambda kk: means[kk])[:3]:
                    s = fixed.with_overrides({"workload.rate": r, "spec.k": k})
                    sim[k] = float(simulate(s, seed=seed).summary["e2e_mean"])
                    done += 1
                    prog(done, total)
                if sim:
                    kb = min(sim, key=lambda kk: sim[kk])
                    row += [str(kb), sim[kb]]
                else:
                    row += ["-", math.nan]
            rows.append(row)
    finally:
        prog.close()
    cols = [
        Column("rate", "label", "req/s"),
        Column("best k", "text"),
        Column("e2e mean at best k", "time"),
        Column("e2e mean at k=0", "time"),
        Column("speedup", "num"),
    ]
    if confirm:
        cols += [Column("simulated best k", "text"), Column("its simulated e2e mean", "time")]
    render_table(
        f"{scn.name}: best draft length by rate ({alpha_text(scn.acceptance)}; k=0 "
        f"saturates at {saturation_text(plain)})",
        cols,
        rows,
        notes=["e2e means: the tail model's (as `sdsim predict`); speedup = k=0 mean / best"],
    )


def _parse_targets(items: list[str] | None) -> dict[str, float]:
    from sdsim.plots import parse_targets

    return parse_targets(items)


def validate(
    scenario: ScenarioArg,
    rates: RatesOpt = None,
    reps: Annotated[
        int, typer.Option("--reps", help="replications per stage of the sequential runs")
    ] = 2,
    half_width: Annotated[
        float,
        typer.Option("--half-width", help="relative 95% CI half-width the p99s are run to"),
    ] = 0.03,
    max_requests: Annotated[
        int, typer.Option("--max-requests", help="most requests simulated per rate")
    ] = 400_000,
    initial: Annotated[
        int, typer.Option("--initial", help="requests per replication in the first stage")
    ] = 10_000,
    all_: Annotated[
        bool,
        typer.Option("--all", help="SCENARIO is a directory: every rate-driven scenario in it"),
    ] = False,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="directory for validation.csv and .png")
    ] = None,
    set_: SetOpt = None,
    jobs: Annotated[int, typer.Option("--jobs", help="worker processes")] = 2,
    targets: TargetOpt = None,
) -> None:
    """Check the analytic model against steady-state simulations, rate by rate."""
    # deferred: see the module docstring
    from sdsim.analytic.validation import report_layout, validate_many, write_reports

    if jobs < 1:
        raise ScenarioError("--jobs", f"must be >= 1 (got {jobs})")
    if all_:
        if not scenario.is_dir():
            raise ScenarioError("--all", f"{scenario} is not a directory of scenarios")
        scns = [load(p, set_) for p in sorted(scenario.glob("*.yaml"))]
        scns = [s for s in scns if s.workload.arrival not in ("trace", "replay")]
        if not scns:
            raise ScenarioError("--all", f"no rate-driven scenario in {scenario}")
        if rates:
            raise ScenarioError("--rates", "not with --all (each scenario takes its own loads)")
    else:
        scns = [load(scenario, set_)]
    name = "all" if all_ else scns[0].name
    dest = resolve_output(out_dir or Path("out") / f"validate-{name}", "--out")
    target_lines = _parse_targets(targets)
    for d, names in report_layout([s.name for s in scns], dest).items():
        output_dir(d, names)  # every destination checked before any simulation
    prog = LazyProgress(f"validating {name} (requests)", delay_s=0.0)
    try:
        reports = validate_many(
            scns,
            None if all_ else [parse_rates(rates)],
            target=half_width,
            max_requests=max_requests,
            initial=initial,
            reps=reps,
            jobs=jobs,
            progress=prog,
        )
    finally:
        prog.close()
    files = write_reports(reports, scns, dest, targets=target_lines)
    for rep, scn in zip(reports, scns, strict=True):
        _print_validation(rep, scn)
    out.print("wrote " + ", ".join(str(f) for f in files), highlight=False, soft_wrap=True)


def _print_validation(rep: Any, scn: Scenario) -> None:
    from sdsim.analytic.prediction import predict as _predict  # deferred: see the docstring
    from sdsim.analytic.validation import TOO_WIDE

    limit = _predict(scn, rates=[], k_values=[scn.spec.k], quantiles=False).saturation_limit
    d = rep.table
    has_slo = bool((d["metric"] == "goodput").any())
    rows: list[list[Any]] = []
    notes: list[str] = []
    for _, v in rep.verdicts.sort_values("rate").iterrows():
        cells: list[Any] = []
        for m, st in (("e2e", "mean"), ("e2e", "p99"), ("ttft", "p99"), ("tpot", "p99")):
            row = d[(d["rate"] == v["rate"]) & (d["metric"] == m) & (d["statistic"] == st)]
            r = row.iloc[0]
            cell = f"{r['rel_error']:+.1%}±{r['ci_half_width']:.0%}"
            style = {"holds": "", "fails": "red"}.get(str(r["verdict"]), "yellow")
            cells.append(f"[{style}]{cell}[/]" if style else cell)
        if has_slo:  # reported beside the latencies, not judged
            g = d[(d["rate"] == v["rate"]) & (d["metric"] == "goodput")].iloc[0]
            cells.append(f"{fmt(float(g['analytic']))} / {fmt(float(g['sim']))}")
        verdict = {"holds": "holds", TOO_WIDE: "CI too wide"}.get(str(v["verdict"]), "breaks")
        if v["outside_model"]:
            verdict = "outside model"
        if v["verdict"] == TOO_WIDE:
            notes.append(f"{fmt(v['rate'])} req/s: {TOO_WIDE}: {v['undecided']}")
        elif v["verdict"] != "holds":
            notes.append(f"{fmt(v['rate'])} req/s: {v['reason']} ({v['failing']})")
        if v["verdict"] != "breaks" and v.get("caveats"):
            # holds here, but predict knows of a larger error nearby: say so
            notes.append(f"{fmt(v['rate'])} req/s: caveat (predict): {v['caveats']}")
        rows.append([fmt(v["rate"]), v["fraction"], int(v["requests"]), *cells, verdict])
    render_table(
        f"{rep.scenario}: analytic vs simulated at steady state (saturation "
        f"{fmt(rep.saturation_rate)} req/s, {limit})",
        [Column("rate", "label", "req/s"), Column("load", "pct", "% of sat."),
         Column("requests", "int"), Column("e2e mean", "text"), Column("e2e p99", "text"),
         Column("TTFT p99", "text"), Column("TPOT p99", "text"),
         *([Column("goodput model / sim", "text", "req/s")] if has_slo else []),
         Column("verdict", "text")],
        rows,
        notes=[
            "cells: analytic minus simulated, relative to the simulated value, ± the relative "
            "half-width of its 95% CI (MSER-5 warm-up cut, batch means); tolerances: means 5% "
            "(e2e) / 10% (TTFT, TPOT), p50-p99 10% (e2e, TPOT) / 15% (TTFT); a statistic holds "
            "when its whole CI is within tolerance, fails (red) when all of it is outside, "
            "else the CI is too wide to judge (yellow)",
            *notes,
        ],
    )
