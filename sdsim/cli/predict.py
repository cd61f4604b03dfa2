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
    reps: Annotated[int, typer.Option("--reps", help="seeded replications per rate")] = 3,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="directory for validation.csv and .png")
    ] = None,
    set_: SetOpt = None,
    jobs: Annotated[int, typer.Option("--jobs", help="worker processes")] = 2,
) -> None:
    """Check the analytic model against seeded simulations, rate by rate."""
    # deferred: see the module docstring
    from sdsim.analytic.validation import plot_validation
    from sdsim.analytic.validation import validate as _validate

    scn = load(scenario, set_)
    if reps < 1:
        raise ScenarioError("--reps", f"must be >= 1 (got {reps})")
    if jobs < 1:
        raise ScenarioError("--jobs", f"must be >= 1 (got {jobs})")
    target = out_dir if out_dir is not None else Path("out") / f"validate-{scn.name}"
    check_writable(target)
    prog = LazyProgress(f"validating {scn.name}", delay_s=0.0)
    try:
        rep = _validate(scn, rates=parse_rates(rates), reps=reps, jobs=jobs, progress=prog)
    finally:
        prog.close()
    target.mkdir(parents=True, exist_ok=True)
    cols = [
        "rate",
        "metric",
        "statistic",
        "analytic",
        "sim_mean",
        "ci_low",
        "ci_high",
        "rel_error",
        "inside_ci",
    ]
    extra = [c for c in rep.table.columns if c not in cols]
    rep.table[cols + extra].to_csv(target / "validation.csv", index=False)
    plot_validation(rep, scn, target / "validation.png")
    t = Table(
        title=f"{scn.name}: analytic vs simulated ({reps} replications per rate; "
        f"saturation {fmt(rep.saturation_rate)} req/s)"
    )
    for c in ("rate", "% sat", "e2e mean", "e2e p99", "TTFT mean", "TPOT mean", "verdict"):
        t.add_column(c, justify="right" if c != "verdict" else "left")
    d = rep.table
    for _, v in rep.verdicts.iterrows():
        cells = []
        for m, st in (("e2e", "mean"), ("e2e", "p99"), ("ttft", "mean"), ("tpot", "mean")):
            row = d[(d["rate"] == v["rate"]) & (d["metric"] == m) & (d["statistic"] == st)]
            e = float(row["rel_error"].iloc[0])
            ok = bool(row["holds"].iloc[0])
            cells.append(("" if ok else "[red]") + f"{e:+.1%}")
        verdict = "holds" if v["holds"] else f"breaks: {v['reason']} ({v['failing']})"
        t.add_row(fmt(v["rate"]), f"{v['fraction']:.0%}", *cells, verdict)
    out.print(t)
    out.print(
        "tolerances: e2e mean 5%, e2e p50/p90/p99 10%, TTFT and TPOT means 10% "
        f"(errors are analytic vs simulated mean). Wrote {target}/validation.csv, validation.png"
    )
