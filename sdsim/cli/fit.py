"""`sdsim fit` (the analytic model and step costs from measurements or reports) and `sdsim
compare` (a report replayed through the simulator and the model)."""

from __future__ import annotations

__all__ = ["compare", "fit"]

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from sdsim.cli.app import (
    OptScenario,
    SeedOpt,
    SetOpt,
    err,
    fmt,
    load,
    out,
)
from sdsim.cli.tables import Column, render_table
from sdsim.errors import ScenarioError
from sdsim.labels import format_time
from sdsim.outputs import atomic_write_text, output_dir, output_file, sidecar_file, write_run
from sdsim.provenance import yaml_header
from sdsim.reports import (
    check_fit_options,
    compare_report,
    comparison_figure,
    fit_reports,
    load_report,
)
from sdsim.scenario import load_scenario, parse_set_options

ReportArgs = Annotated[
    list[Path], typer.Argument(help="GuideLLM (JSON/YAML) or vLLM bench serve (JSON) report(s)")
]


def _per_report(values: list[Any] | None, reports: list[Path], option: str) -> list[Any] | None:
    """One value for every report: ``--k 4`` applies to all, ``--k 0 --k 4`` one per report."""
    if not values:
        return None
    if len(values) == 1:
        return values * len(reports)
    if len(values) != len(reports):
        raise ScenarioError(
            option,
            f"give one {option} for all reports or one per report ({len(reports)}), "
            f"got {len(values)}",
        )
    return values


def _fit_measurements_csv(measurements: Path, form: str, json_out: bool) -> None:
    """Fit the dense (C1, C2) or six-coefficient SD form to a measurements table (`sdsim fit`)."""
    # deferred: importing sdsim.analytic loads the whole model (scipy.stats, about a second)
    from sdsim.analytic.fitting import fit_measurements, read_measurements

    res = fit_measurements(read_measurements(measurements), form=form)
    if json_out:
        out.print_json(json.dumps(res.to_dict()))
        return
    render_table(
        f"{res.form} fit of {measurements.name} ({res.n} rows)",
        [Column("coefficient", "label"), Column("value", "time"), Column("std. error", "time")],
        [[n, v, res.stderr[n]] for n, v in res.coefficients.items()],
    )
    out.print(
        f"R² = {fmt(res.r2)}; max |relative residual| = "
        f"{fmt(float(abs(res.rel_residuals).max()))}; leave-some-out mean |relative error| = "
        f"{fmt(res.loo_error)}"
    )


def fit(
    reports: ReportArgs,
    scenario: OptScenario = None,
    set_: SetOpt = None,
    alpha: Annotated[
        list[float] | None,
        typer.Option(
            "--alpha", help="acceptance the server ran with (once for all reports, or per report)"
        ),
    ] = None,
    k: Annotated[
        list[int] | None,
        typer.Option("--k", help="draft length the server ran with (once, or once per report)"),
    ] = None,
    metric: Annotated[str, typer.Option("--metric", help="mean latency to fit")] = "e2e_mean",
    linear: Annotated[
        bool, typer.Option("--linear/--no-linear", help="also fit linear step costs")
    ] = True,
    out_path: Annotated[
        Path | None, typer.Option("--out", help="write a scenario YAML that uses the fitted costs")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print results as JSON")] = False,
    form: Annotated[
        str,
        typer.Option(
            "--form",
            help="dense | sd | auto (auto: reports get the dense form per (k, alpha) and the SD "
            "form when they cover several; a CSV gets sd when it has k > 0 and >= 8 rows)",
        ),
    ] = "auto",
) -> None:
    """Fit the analytic model to measurements (a CSV, or GuideLLM / vLLM reports).

    Both go through `sdsim.fit_measurements`. A CSV (columns rate, alpha, k, prompt_tokens,
    output_tokens, e2e_mean) gets the dense or six-coefficient SD form. Reports get the dense
    model L = C1/(1 - rate*C2) per draft length and acceptance, the six stage coefficients when
    they cover several (one report per configuration: --k 0 --k 4 in the reports' order), and,
    from per-request timings, linear step costs for a fitted scenario (--out).
    """
    check_fit_options(form, alpha, k)
    if len(reports) == 1 and reports[0].suffix.lower() == ".csv":
        _fit_measurements_csv(reports[0], form, json_out)
        return
    ks = _per_report(k, reports, "--k")
    alphas = _per_report(alpha, reports, "--alpha")
    over: dict[str, Any] = parse_set_options(set_)
    if alphas is not None:
        over["acceptance.alpha"] = alphas[0]
    if ks is not None:
        over["spec.k"] = ks[0]
    scn = load_scenario(scenario, over)
    dest = output_file(out_path, "--out") if out_path is not None else None
    res = fit_reports(reports, scn, ks=ks, alphas=alphas, metric=metric, form=form, linear=linear)
    result = res.to_dict()
    if out_path is not None and dest is not None:
        fitted = res.fitted_scenario()
        dest.parent.mkdir(parents=True, exist_ok=True)
        src = ", ".join(str(r) for r in reports)
        atomic_write_text(
            dest, yaml_header(fitted.seed, f"fitted by `sdsim fit` from {src}") + fitted.to_yaml()
        )
        result["scenario"] = str(out_path)
    if json_out:
        out.print_json(json.dumps(result, default=str))
        return
    for kk, aa, dense in res.dense:
        cfg = f" (k={kk}, alpha={aa:g})" if res.several else ""
        render_table(
            f"dense fit of {metric}{cfg}: L = C1 / (1 - rate * C2)",
            [Column("coefficient", "label"), Column("value", "text"),
             Column("std. error", "text")],
            [["C1: e2e mean at zero load", format_time(dense.c1), format_time(dense.c1_se)],
             ["C2: added e2e per req/s of load", format_time(dense.c2),
              format_time(dense.c2_se)],
             ["saturation rate", f"{fmt(dense.saturation_rate)} req/s", ""],
             ["R²", fmt(dense.r2), ""]],
        )
        render_table(
            "predicted vs measured",
            [Column("benchmark", "label"), Column("strategy", "text"),
             Column("rate", "num", "req/s"), Column("measured", "time"),
             Column("predicted", "time"), Column("error", "signed_pct")],
            [[str(r["benchmark"]) + ("" if r["used"] else " (not fitted)"), str(r["strategy"]),
              float(r["rate"]), float(r["measured"]), float(r["predicted"]),
              float(r["rel_error"])] for r in dense.table.to_dict(orient="records")],
        )
    if res.sd is not None:
        sd = res.sd.result
        render_table(
            f"SD fit of e2e_mean over {sd.n} benchmarks: six stage coefficients",
            [Column("coefficient", "label"), Column("value", "time"),
             Column("std. error", "time")],
            [[n, v, sd.stderr[n]] for n, v in sd.coefficients.items()],
        )
        render_table(
            "SD form: predicted vs measured",
            [Column("benchmark", "label"), Column("k", "int"), Column("α", "num"),
             Column("rate", "num", "req/s"), Column("measured", "time"),
             Column("predicted", "time"), Column("error", "signed_pct")],
            [[str(r["benchmark"]), r["k"], float(r["alpha"]), float(r["rate"]),
              float(r["measured"]), float(r["predicted"]), float(r["rel_error"])]
             for r in res.sd.table.to_dict(orient="records")],
        )
        out.print(
            f"R² = {fmt(sd.r2)}; leave-some-out mean |relative error| = {fmt(sd.loo_error)}"
        )
    lin = res.linear
    if lin is not None:
        render_table(
            f"linear step costs from {lin.requests} requests (R² {fmt(lin.r2)})",
            [Column("scenario field", "label"), Column("value", "text"),
             Column("std. error", "text")],
            [["costs.linear.verify_fixed_s", format_time(lin.verify_fixed_s),
              format_time(lin.verify_fixed_se)],
             ["costs.linear.verify_per_token_s", format_time(lin.verify_per_token_s),
              format_time(lin.verify_per_token_se)]],
        )
        if lin.clipped:
            err.print("[yellow]warning:[/] a fitted step cost hit its lower bound 0")
    elif linear:
        err.print(
            f"note: linear step costs not fitted ({res.linear_note}); derived from C1, C2 instead"
        )
    if out_path is not None:
        out.print(f"wrote {out_path}")


def compare(
    report: Annotated[Path, typer.Argument(help="GuideLLM or vLLM report to replay")],
    scenario: OptScenario = None,
    set_: SetOpt = None,
    seed: SeedOpt = None,
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", help="write comparison.csv and comparison.png (default out/compare)"),
    ] = None,
    analytic: Annotated[
        bool, typer.Option("--analytic/--no-analytic", help="include the analytic model")
    ] = True,
) -> None:
    """Replay every benchmark of a report; compare measured, simulated and analytic latency."""
    scn = load(scenario, set_)
    out_dir = out_dir if out_dir is not None else Path("out/compare")
    dest = output_dir(out_dir, ["comparison.csv", "comparison.csv.meta.json", "comparison.png"])
    load_report(report)  # fail early on a bad file
    res = compare_report(report, scn, seed=seed, analytic=analytic)
    for note in res.notes:
        err.print(f"note: {note}", markup=False, highlight=False)
    tab = res.table
    if tab.empty:
        raise ScenarioError("report", "no benchmark could be replayed")
    render_table(
        f"{report.name}: measured vs simulated vs analytic",
        [Column("benchmark", "label"), Column("rate", "num", "req/s"), Column("metric", "text"),
         Column("measured", "text"), Column("simulated", "text"), Column("error", "signed_pct"),
         Column("analytic", "text"), Column("error", "signed_pct")],
        [[str(r["benchmark"]), float(r["rate"]), f"{r['metric']} {r['stat']}",
          format_time(float(r["measured"])), format_time(float(r["simulated"])),
          float(r["sim_rel_error"]), format_time(float(r["analytic"])),
          float(r["analytic_rel_error"])] for r in tab.to_dict(orient="records")],
        notes=["error: model minus measured, relative to the measured value"],
    )
    run_seed = scn.seed if seed is None else seed
    title = f"{report.name} vs {scn.name}"
    side, write_side = sidecar_file(
        "comparison.csv", run_seed, report=str(report.name), scenario=scn.name
    )
    write_run(
        dest,
        {
            "comparison.csv": lambda p: tab.to_csv(p, index=False),
            side: write_side,
            "comparison.png": lambda p: comparison_figure(tab, p, title=title, seed=run_seed),
        },
        "compare",
    )
    out.print(f"wrote {out_dir}/comparison.csv, comparison.png")
