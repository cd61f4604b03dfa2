"""The `sdsim` command line (typer).

Every user mistake ends with exit code 2 and one line on stderr naming the field and what is
allowed; tracebacks are for bugs only.
"""

from __future__ import annotations

__all__ = ["app", "main"]

import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from sdsim.errors import ScenarioError
from sdsim.scenario import Scenario, load_scenario, parse_set_options, scenario_schema

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Latency of speculative decoding under load: simulate, predict, compare.",
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)

ScenarioArg = Annotated[Path, typer.Argument(help="scenario YAML file")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="dotted override, e.g. --set workload.rate=4 (repeatable)"),
]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="run seed (default: scenario seed)")]


def _load(path: Path, sets: list[str] | None) -> Scenario:
    return load_scenario(path, parse_set_options(sets))


class _LazyProgress:
    """A progress bar that appears only when the work takes more than ~1 second."""

    def __init__(self, label: str, delay_s: float = 1.0) -> None:
        self.label = label
        self.delay = delay_s
        self.t0 = time.perf_counter()
        self.bar: Progress | None = None
        self.task: Any = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            if not err.is_terminal or time.perf_counter() - self.t0 < self.delay:
                return
            self.bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=err,
                transient=True,
            )
            self.bar.start()
            self.task = self.bar.add_task(self.label, total=total)
        self.bar.update(self.task, completed=done, total=total)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "-"
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
            return f"{v:.3e}"
        return f"{v:.4g}"
    return str(v)


def print_summary(summary: dict[str, Any], title: str) -> None:
    """Print a run summary as a table (latencies in milliseconds)."""
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("metric")
    for c in ("mean", "p50", "p90", "p99"):
        table.add_column(c, justify="right")
    for m, label in (("e2e", "e2e (ms)"), ("ttft", "TTFT (ms)"), ("tpot", "TPOT (ms)")):
        table.add_row(
            label,
            *(_fmt(summary.get(f"{m}_{s}", math.nan) * 1e3) for s in ("mean", "p50", "p90", "p99")),
        )
    out.print(table)
    t2 = Table(show_header=False)
    t2.add_column("k")
    t2.add_column("v", justify="right")
    for key in (
        "completed",
        "throughput_rps",
        "throughput_tps",
        "tokens_per_step_mean",
        "acceptance_rate",
        "batch_mean",
        "in_system_mean",
        "little_residual",
        "preemptions",
        "stable",
        "seed",
    ):
        if key in summary:
            t2.add_row(key, _fmt(summary[key]))
    out.print(t2)


@app.command()
def run(
    scenario: ScenarioArg,
    set_: SetOpt = None,
    seed: SeedOpt = None,
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", help="write requests.csv, steps.csv, summary.json, scenario.yaml"),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
) -> None:
    """Simulate a scenario and print its latency summary."""
    from sdsim.simulation import simulate

    scn = _load(scenario, set_)
    if out_dir is not None:
        _check_writable(out_dir)
    prog = _LazyProgress(f"simulating {scn.name}")
    try:
        res = simulate(scn, seed=seed, progress=prog)
    finally:
        prog.close()
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        res.requests.to_csv(out_dir / "requests.csv", index=False)
        res.steps.to_csv(out_dir / "steps.csv", index=False)
        (out_dir / "summary.json").write_text(json.dumps(res.summary, indent=2, default=str) + "\n")
        (out_dir / "scenario.yaml").write_text(scn.to_yaml())
    if json_out:
        out.print_json(json.dumps(res.summary, default=str))
    else:
        print_summary(res.summary, f"{scn.name}: k={scn.spec.k}, rate={scn.workload.rate:g} req/s")
        if out_dir is not None:
            out.print(f"wrote {out_dir}/requests.csv, steps.csv, summary.json, scenario.yaml")
    if not res.summary["stable"]:
        err.print(
            f"[yellow]warning:[/] run is not stable ({res.summary['stop_reason']}; queue growth "
            f"{_fmt(res.summary['queue_growth_rps'])} req/s): the arrival rate exceeds what the "
            "server sustains, so latencies grow with the run length"
        )


@app.command()
def schema() -> None:
    """Print the JSON Schema of a scenario file."""
    out.print_json(json.dumps(scenario_schema()))


# ---------------------------------------------------------------------------------------------
# Further commands (costs, bench, predict, fit, advise, validate, sweep, plot, compare, serve) are
# added below, one delimited block per area.
# ---------------------------------------------------------------------------------------------


# --- reports / serve commands (issue 10: report import, fit, compare, serve) ---------------------

ReportArgs = Annotated[
    list[Path], typer.Argument(help="GuideLLM (JSON/YAML) or vLLM bench serve (JSON) report(s)")
]
OptScenario = Annotated[
    Path | None, typer.Option("--scenario", help="scenario YAML (server, k, alpha, costs)")
]


def _scenario_or_default(path: Path | None, sets: list[str] | None) -> Scenario:
    return load_scenario(path, parse_set_options(sets))


def _ms(v: float) -> str:
    return _fmt(v * 1e3)


def _pct(v: float) -> str:
    return f"{v * 100:+.1f}%" if math.isfinite(v) else "-"


@app.command()
def fit(
    reports: ReportArgs,
    scenario: OptScenario = None,
    set_: SetOpt = None,
    alpha: Annotated[
        float | None, typer.Option("--alpha", help="acceptance the server ran with")
    ] = None,
    k: Annotated[int | None, typer.Option("--k", help="draft length the server ran with")] = None,
    metric: Annotated[str, typer.Option("--metric", help="mean latency to fit")] = "e2e_mean",
    linear: Annotated[
        bool, typer.Option("--linear/--no-linear", help="also fit linear step costs")
    ] = True,
    out_path: Annotated[
        Path | None, typer.Option("--out", help="write a scenario YAML that uses the fitted costs")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print results as JSON")] = False,
) -> None:
    """Fit the dense model L = C1/(1 - rate*C2), and linear step costs, to a serving report."""
    from sdsim.reports import (
        costs_from_dense,
        fit_dense,
        fit_linear_costs,
        fitted_scenario,
        load_reports,
        report_to_measurements,
    )

    if alpha is not None and not 0.0 <= alpha <= 1.0:
        raise ScenarioError("--alpha", f"must lie in [0, 1] (got {alpha})")
    if k is not None and k < 0:
        raise ScenarioError("--k", f"must be >= 0 (got {k})")
    over: dict[str, Any] = parse_set_options(set_)
    if alpha is not None:
        over["acceptance.alpha"] = alpha
    if k is not None:
        over["spec.k"] = k
    scn = load_scenario(scenario, over)
    if out_path is not None:
        _check_writable(out_path.parent if str(out_path.parent) else Path("."))
    rep = load_reports(reports)
    meas = report_to_measurements(rep, scenario=scn)
    dense = fit_dense(meas, metric=metric)
    lin = None
    lin_note = ""
    if linear:
        try:
            lin = fit_linear_costs(rep, scn)
        except ScenarioError as exc:
            lin_note = exc.message
    costs = (
        lin.costs
        if lin is not None
        else costs_from_dense(dense, scn, float(meas["output_tokens"].mean()))
    )
    result: dict[str, Any] = {
        "dense": {
            "metric": dense.metric,
            "c1": dense.c1,
            "c1_se": dense.c1_se,
            "c2": dense.c2,
            "c2_se": dense.c2_se,
            "r2": dense.r2,
            "saturation_rate": dense.saturation_rate,
            "table": dense.table.to_dict(orient="records"),
        },
        "linear": None
        if lin is None
        else {
            "verify_fixed_s": lin.verify_fixed_s,
            "verify_fixed_se": lin.verify_fixed_se,
            "verify_per_token_s": lin.verify_per_token_s,
            "verify_per_token_se": lin.verify_per_token_se,
            "r2": lin.r2,
            "requests": lin.requests,
            "clipped": lin.clipped,
        },
        "costs": costs.model_dump(mode="json"),
    }
    if out_path is not None:
        fitted = fitted_scenario(scn, costs, name=f"{scn.name}-fitted")
        out_path.parent.mkdir(parents=True, exist_ok=True)
        src = ", ".join(str(r) for r in reports)
        out_path.write_text(f"# fitted by `sdsim fit` from {src}\n" + fitted.to_yaml())
        result["scenario"] = str(out_path)
    if json_out:
        out.print_json(json.dumps(result, default=str))
        return
    t = Table(title=f"dense fit of {metric}: L = C1 / (1 - rate * C2)")
    for c in ("coefficient", "value", "std. error"):
        t.add_column(c, justify="right" if c != "coefficient" else "left")
    t.add_row("C1 (ms)", _ms(dense.c1), _ms(dense.c1_se))
    t.add_row("C2 (ms)", _ms(dense.c2), _ms(dense.c2_se))
    t.add_row("saturation (req/s)", _fmt(dense.saturation_rate), "")
    t.add_row("R²", _fmt(dense.r2), "")
    out.print(t)
    t2 = Table(title="predicted vs measured")
    for c in ("benchmark", "strategy", "rate (req/s)", "measured (ms)", "predicted (ms)", "error"):
        t2.add_column(c, justify="right")
    for r in dense.table.to_dict(orient="records"):
        t2.add_row(
            str(r["benchmark"]) + ("" if r["used"] else " (not fitted)"),
            str(r["strategy"]),
            _fmt(float(r["rate"])),
            _ms(float(r["measured"])),
            _ms(float(r["predicted"])),
            _pct(float(r["rel_error"])),
        )
    out.print(t2)
    if lin is not None:
        t3 = Table(title=f"linear step costs from {lin.requests} requests (R² {_fmt(lin.r2)})")
        for c in ("field", "value", "std. error"):
            t3.add_column(c, justify="right" if c != "field" else "left")
        t3.add_row("verify_fixed_s", _fmt(lin.verify_fixed_s), _fmt(lin.verify_fixed_se))
        t3.add_row(
            "verify_per_token_s", _fmt(lin.verify_per_token_s), _fmt(lin.verify_per_token_se)
        )
        out.print(t3)
        if lin.clipped:
            err.print("[yellow]warning:[/] a fitted step cost hit its lower bound 0")
    elif linear:
        err.print(f"note: linear step costs not fitted ({lin_note}); derived from C1, C2 instead")
    if out_path is not None:
        out.print(f"wrote {out_path}")


@app.command()
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
    from sdsim.reports import compare_report, comparison_figure, load_report

    scn = _scenario_or_default(scenario, set_)
    out_dir = out_dir if out_dir is not None else Path("out/compare")
    _check_writable(out_dir)
    load_report(report)  # fail early on a bad file
    res = compare_report(report, scn, seed=seed, analytic=analytic)
    for note in res.notes:
        err.print(f"note: {note}", markup=False, highlight=False)
    tab = res.table
    if tab.empty:
        raise ScenarioError("report", "no benchmark could be replayed")
    t = Table(title=f"{report.name}: measured vs simulated vs analytic (ms)")
    for c in ("bench", "rate", "metric", "stat", "measured", "simulated", "err", "analytic", "err"):
        t.add_column(c, justify="right")
    for r in tab.to_dict(orient="records"):
        t.add_row(
            str(r["benchmark"]),
            _fmt(float(r["rate"])),
            str(r["metric"]),
            str(r["stat"]),
            _ms(float(r["measured"])),
            _ms(float(r["simulated"])),
            _pct(float(r["sim_rel_error"])),
            _ms(float(r["analytic"])),
            _pct(float(r["analytic_rel_error"])),
        )
    out.print(t)
    out_dir.mkdir(parents=True, exist_ok=True)
    tab.to_csv(out_dir / "comparison.csv", index=False)
    comparison_figure(tab, out_dir / "comparison.png", title=f"{report.name} vs {scn.name}")
    out.print(f"wrote {out_dir}/comparison.csv, comparison.png")


@app.command()
def serve(
    scenario: ScenarioArg,
    set_: SetOpt = None,
    seed: SeedOpt = None,
    host: Annotated[str, typer.Option("--host", help="address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port")] = 8000,
    time_scale: Annotated[
        float, typer.Option("--time-scale", help="wall seconds per simulated second")
    ] = 1.0,
    model: Annotated[
        str | None, typer.Option("--model", help="model name to report (default: scenario target)")
    ] = None,
    default_max_tokens: Annotated[
        int, typer.Option("--default-max-tokens", help="output length when max_tokens is absent")
    ] = 256,
) -> None:
    """Serve the simulated engine over an OpenAI-compatible streaming HTTP API."""
    scn = _load(scenario, set_)
    if not (time_scale > 0 and math.isfinite(time_scale)):
        raise ScenarioError("--time-scale", f"must be a positive number (got {time_scale})")
    if not 0 <= port <= 65535:
        raise ScenarioError("--port", f"must be in 0..65535 (got {port})")
    if default_max_tokens < 1:
        raise ScenarioError("--default-max-tokens", "must be >= 1")
    import uvicorn

    from sdsim.serve import create_app

    application = create_app(
        scn, seed=seed, time_scale=time_scale, model=model, default_max_tokens=default_max_tokens
    )
    if host not in ("127.0.0.1", "localhost", "::1"):
        err.print(f"[yellow]warning:[/] binding {host}: reachable beyond this machine")
    err.print(
        f"sdsim serve: {scn.name} (k={scn.spec.k}) at http://{host}:{port}/v1, "
        f"time scale {time_scale:g}",
        highlight=False,
    )
    uvicorn.run(application, host=host, port=port, log_level="warning")


# --- end reports / serve commands ---------------------------------------------------------------


def _check_writable(path: Path) -> None:
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ScenarioError("--out", f"{probe} is not a directory")
    import os

    if not os.access(probe, os.W_OK):
        raise ScenarioError("--out", f"directory {probe} is not writable")


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the typer app, turning user errors into exit code 2 and one line."""
    handler: Callable[..., Any] = app
    try:
        handler(args=argv, standalone_mode=False)
    except ScenarioError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err.print("aborted", markup=False)
        sys.exit(130)
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.exceptions.ClickException):
            msg = exc.format_message().splitlines()[0] if exc.format_message() else str(exc)
            err.print(f"error: {msg}", markup=False, highlight=False, soft_wrap=True)
            sys.exit(exc.exit_code)
        raise


if __name__ == "__main__":  # pragma: no cover
    main()
