"""The analytic model's commands: `sdsim predict`, `sdsim advise` and `sdsim validate`.

The model loads scipy.stats and compiles kernels on first use, so each command imports it when it
runs: `sdsim --help` and the other commands start without it.
"""

from __future__ import annotations

__all__ = ["advise", "predict", "validate"]

import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from sdsim.cli.app import (
    LazyProgress,
    RatesOpt,
    ScenarioArg,
    SeedOpt,
    SetOpt,
    check_writable,
    err,
    fmt,
    load,
    ms,
    out,
    parse_rates,
    print_summary,
)
from sdsim.errors import ScenarioError
from sdsim.simulation import simulate


def predict(
    scenario: ScenarioArg,
    set_: SetOpt = None,
    rates: RatesOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the prediction as JSON")] = False,
) -> None:
    """Predict latency (mean, p50/p90/p99), saturation, speedup and best k without simulating."""
    from sdsim.analytic.prediction import predict as _predict  # deferred: see the module docstring

    scn = load(scenario, set_)
    p = _predict(scn, rates=parse_rates(rates))
    if json_out:
        out.print_json(json.dumps(p.to_dict(), default=str))
        return
    print_summary(p.summary, f"{scn.name} (analytic): k={scn.spec.k}, rate={scn.workload.rate:g}")
    t = Table(title="model", show_header=False)
    t.add_column("k")
    t.add_column("v", justify="right")
    co = p.coefficients
    rows: list[tuple[str, Any]] = [
        ("C1 (s)", p.c1),
        ("C2 (s)", p.c2),
        *((f"{n} (ms)", v * 1e3) for n, v in p.stages.items()),
        ("decode steps per request", co.steps if co else math.nan),
        ("concurrency cap", co.n_max if co else "-"),
        ("saturation rate (req/s)", p.saturation_rate),
        ("e2e mean, mean-field (ms)", p.summary["e2e_mean_meanfield"] * 1e3),
        ("e2e mean, birth-death (ms)", p.summary["e2e_mean_gps"] * 1e3),
        ("P(wait for admission)", p.summary["p_wait"]),
        ("speedup vs k=0", p.speedup),
        ("break-even rate (req/s)", p.break_even_rate),
    ]
    for name, v in rows:
        t.add_row(name, fmt(v))
    out.print(t)
    bk = Table(title="best k by rate (analytic)")
    bk.add_column("rate (req/s)", justify="right")
    bk.add_column("best k", justify="right")
    for r, k in p.best_k.items():
        bk.add_row(fmt(r), "saturated" if k is None else str(k))
    out.print(bk)
    if not p.summary["stable"]:
        err.print(
            f"[yellow]warning:[/] rate {scn.workload.rate:g} req/s is at or past the predicted "
            f"saturation ({fmt(p.saturation_rate)} req/s): latency grows without bound"
        )
    elif p.outside_model:
        err.print(f"[yellow]warning:[/] outside the model: {p.outside_model}")


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
    from sdsim.analytic.prediction import predict as _predict  # deferred: see the module docstring

    scn = load(scenario, set_)
    rlist = parse_rates(rates) or [scn.workload.rate]
    ks = list(range(scn.spec.k_max + 1))
    t = Table(title=f"{scn.name}: best draft length by rate (alpha={scn.acceptance.mean_alpha:g})")
    for c in ("rate (req/s)", "best k", "e2e mean (ms)", "k=0 e2e (ms)", "speedup"):
        t.add_column(c, justify="right")
    if confirm:
        t.add_column("simulated best k (e2e ms)", justify="right")
    prog = LazyProgress("confirming by simulation")
    total = len(rlist) * 3 if confirm else 0
    done = 0
    try:
        for r in rlist:
            preds = {}
            for k in ks:
                s = scn.with_overrides({"workload.rate": r, "spec.k": k})
                preds[k] = _predict(s, rates=[], k_values=[k], quantiles=False)
            lat = {k: float(p.summary["e2e_mean"]) for k, p in preds.items()}
            finite = {k: v for k, v in lat.items() if math.isfinite(v)}
            if not finite:
                row = [fmt(r), "saturated", "-", "-", "-"]
                if confirm:
                    row.append("-")
                t.add_row(*row)
                continue
            kbest = min(finite, key=lambda kk: finite[kk])
            sp = lat[0] / lat[kbest] if math.isfinite(lat[0]) else math.inf
            row = [fmt(r), str(kbest), ms(lat[kbest]), ms(lat[0]), fmt(sp)]
            if confirm:
                cands = sorted(finite, key=lambda kk: finite[kk])[:3]
                sim = {}
                for k in cands:
                    s = scn.with_overrides({"workload.rate": r, "spec.k": k})
                    sim[k] = float(simulate(s, seed=seed).summary["e2e_mean"])
                    done += 1
                    prog(done, total)
                ks_best = min(sim, key=lambda kk: sim[kk])
                row.append(f"{ks_best} ({ms(sim[ks_best])})")
            t.add_row(*row)
    finally:
        prog.close()
    out.print(t)


def validate(
    scenario: ScenarioArg,
    rates: RatesOpt = None,
    reps: Annotated[
        int, typer.Option("--reps", help="replications per stage of the sequential runs")
    ] = 2,
    target: Annotated[
        float, typer.Option("--target", help="relative 95% CI half-width the p99s are run to")
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
) -> None:
    """Check the analytic model against steady-state simulations, rate by rate."""
    # deferred: see the module docstring
    from sdsim.analytic.validation import TOO_WIDE, validate_many, write_reports

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
    dest = out_dir if out_dir is not None else Path("out") / f"validate-{name}"
    check_writable(dest)
    prog = LazyProgress(f"validating {name} (requests)", delay_s=0.0)
    try:
        reports = validate_many(
            scns,
            None if all_ else [parse_rates(rates)],
            target=target,
            max_requests=max_requests,
            initial=initial,
            reps=reps,
            jobs=jobs,
            progress=prog,
        )
    finally:
        prog.close()
    files = write_reports(reports, scns, dest)
    for rep in reports:
        t = Table(
            title=f"{rep.scenario}: analytic vs simulated at steady state (saturation "
            f"{fmt(rep.saturation_rate)} req/s; error ± the simulation's 95% CI)"
        )
        d = rep.table
        has_slo = bool((d["metric"] == "goodput").any())
        for c in ("rate", "% sat", "requests", "e2e mean", "e2e p99", "TTFT p99", "TPOT p99"):
            t.add_column(c, justify="right")
        if has_slo:
            t.add_column("goodput req/s model / sim", justify="right")
        t.add_column("verdict", justify="left")
        for _, v in rep.verdicts.iterrows():
            cells = []
            for m, st in (("e2e", "mean"), ("e2e", "p99"), ("ttft", "p99"), ("tpot", "p99")):
                row = d[(d["rate"] == v["rate"]) & (d["metric"] == m) & (d["statistic"] == st)]
                r = row.iloc[0]
                style = {"holds": "", "fails": "[red]"}.get(str(r["verdict"]), "[yellow]")
                cells.append(f"{style}{r['rel_error']:+.1%}±{r['ci_half_width']:.0%}")
            if has_slo:
                g = d[(d["rate"] == v["rate"]) & (d["metric"] == "goodput")].iloc[0]
                cells.append(f"{fmt(float(g['analytic']))} / {fmt(float(g['sim']))}")
            verdict = {"holds": "holds", TOO_WIDE: "CI too wide"}.get(str(v["verdict"]), "breaks")
            if v["outside_model"]:
                verdict = "outside model"
            t.add_row(
                fmt(v["rate"]), f"{v['fraction']:.0%}", f"{int(v['requests']):,}", *cells, verdict
            )
        out.print(t)
        for _, v in rep.verdicts.iterrows():
            if v["verdict"] == TOO_WIDE:
                out.print(f"  {fmt(v['rate'])} req/s: {TOO_WIDE}: {v['undecided']}")
            elif v["verdict"] != "holds":
                out.print(f"  {fmt(v['rate'])} req/s: {v['reason']} ({v['failing']})")
    out.print(
        "tolerances: means 5% (e2e) / 10% (TTFT, TPOT); p50-p99 10% (e2e, TPOT) / 15% (TTFT). "
        "A statistic holds when its whole CI is within tolerance (plain), fails when all of it "
        f"is outside (red), else the CI is too wide to judge (yellow). Wrote "
        f"{', '.join(str(f) for f in files)}"
    )
