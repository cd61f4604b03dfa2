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


# --- sweep commands ---------------------------------------------------------------------------


class _SweepBar:
    """Progress of a sweep on stderr: a rich bar on a terminal, a line per ~10% otherwise."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.bar: Progress | None = None
        self.task: Any = None
        self.next_line = 0.0

    def __call__(self, p: Any) -> None:
        if err.is_terminal:
            if self.bar is None:
                self.bar = Progress(
                    TextColumn("[bold]{task.description}"),
                    BarColumn(),
                    TextColumn("{task.completed}/{task.total} runs"),
                    TextColumn("{task.fields[failed]} failed"),
                    TimeElapsedColumn(),
                    TextColumn("ETA"),
                    TimeRemainingColumn(),
                    console=err,
                    transient=False,
                )
                self.bar.start()
                desc = self.label + (f" ({p.skipped} done before)" if p.skipped else "")
                self.task = self.bar.add_task(desc, total=p.todo, failed=0)
            self.bar.update(self.task, completed=p.done + p.failed, failed=p.failed)
            return
        finished = p.done + p.failed
        if p.todo and (finished >= self.next_line or finished == p.todo) and finished:
            eta = "-" if math.isnan(p.eta_s) else f"{p.eta_s:.0f}s"
            err.print(
                f"{self.label}: {finished}/{p.todo} runs, {p.failed} failed, "
                f"{p.elapsed_s:.0f}s elapsed, ETA {eta}",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
            self.next_line = finished + max(1.0, p.todo / 10)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _print_sweep_summary(summary: Any, fields: list[str], metrics: list[str]) -> None:
    table = Table(title="sweep summary: mean ± 95% CI half-width", header_style="bold")
    for f in fields:
        table.add_column(f.rsplit(".", 1)[-1])
    table.add_column("runs", justify="right")
    shown = [m for m in metrics if m in summary.columns][:4]
    scales = {m: 1e3 if m.startswith(("e2e_", "ttft_", "tpot_")) else 1.0 for m in shown}
    for m in shown:
        table.add_column(m + (" ms" if scales[m] != 1.0 else ""), justify="right")
    for _, row in summary.head(60).iterrows():
        cells = [_fmt(row[f]) for f in fields]
        cells.append(f"{row['runs']}" + (f" ({row['failed']} failed)" if row["failed"] else ""))
        for m in shown:
            mean = float(row[m]) * scales[m]
            half = (float(row[f"{m}_ci_high"]) - float(row[f"{m}_ci_low"])) / 2 * scales[m]
            cell = _fmt(mean) + (f" ± {half:.2g}" if math.isfinite(half) and half > 0 else "")
            if f"{m}_analytic" in row.index:
                cell += f" (model {_fmt(float(row[f'{m}_analytic']) * scales[m])})"
            cells.append(cell)
        table.add_row(*cells)
    out.print(table)
    if len(summary) > 60:
        out.print(f"... {len(summary) - 60} more points in summary.csv")


@app.command()
def sweep(
    sweep_file: Annotated[Path, typer.Argument(help="sweep YAML file (base, grid, zip, ...)")],
    out_dir: Annotated[Path, typer.Option("--out", help="output directory (resumed if present)")],
    workers: Annotated[
        int | None,
        typer.Option("--workers", help="local worker processes (1 = in process; default: CPUs)"),
    ] = None,
    dask: Annotated[
        str | None,
        typer.Option("--dask", help="Dask scheduler address, or 'local' for a LocalCluster"),
    ] = None,
    with_analytic: Annotated[
        bool, typer.Option("--with-analytic", help="add the analytic prediction per point")
    ] = False,
    set_: SetOpt = None,
    replications: Annotated[
        int | None, typer.Option("--replications", help="replace the file's replications")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="no summary table")] = False,
) -> None:
    """Run a sweep (grid x replications); re-running the same command resumes it.

    Exit code 0 when every run succeeded, 1 when some failed (see DIR/failures.csv), 2 on bad
    input.
    """
    import os

    from sdsim.sweep import load_sweep, plan_sweep, run_sweep

    spec = load_sweep(sweep_file)
    plan = plan_sweep(
        spec, sweep_file, extra_set=parse_set_options(set_), replications=replications
    )
    _check_writable(out_dir)
    n_workers = workers if workers is not None else (os.cpu_count() or 1)
    if dask is not None and workers is None:
        n_workers = 2 if dask == "local" else 1
    bar = _SweepBar(f"sweep {plan.name}")
    try:
        res = run_sweep(
            plan, out_dir, workers=n_workers, dask=dask, with_analytic=with_analytic, progress=bar
        )
    except KeyboardInterrupt:
        bar.close()
        err.print(
            f"interrupted: finished runs are saved in {out_dir}; re-run to resume", soft_wrap=True
        )
        raise SystemExit(130) from None  # main() drops typer.Exit codes (standalone_mode=False)
    finally:
        bar.close()
    if not quiet:
        _print_sweep_summary(res.summary, plan.fields, list(spec.metrics))
    out.print(
        f"{plan.name}: {res.done} runs done, {res.failed} failed, {res.skipped} resumed from "
        f"disk, in {res.wall_s:.1f} s; wrote {out_dir}/results/, summary.csv, summary.parquet",
        soft_wrap=True,
    )
    if res.failed or (len(res.runs) and res.runs["error"].notna().any()):
        n_bad = int(res.runs["error"].notna().sum())
        err.print(
            f"[yellow]warning:[/] {n_bad} run(s) failed; see {out_dir}/failures.csv",
            soft_wrap=True,
        )
        raise SystemExit(1)


@app.command()
def plot(
    sweep_dir: Annotated[Path, typer.Argument(help="a directory written by `sdsim sweep`")],
    metric: Annotated[
        list[str] | None, typer.Option("--metric", help="metric to draw (repeatable)")
    ] = None,
    x: Annotated[str | None, typer.Option("--x", help="swept field on the x axis")] = None,
    facet: Annotated[
        str | None, typer.Option("--facet", help="swept field with one panel per value")
    ] = None,
    speedup_vs: Annotated[
        str | None,
        typer.Option("--speedup-vs", help="baseline FIELD=VALUE, e.g. spec.k=0: plot speedup"),
    ] = None,
    plot_dir: Annotated[
        Path | None, typer.Option("--out", help="where PNGs go (default DIR/plots)")
    ] = None,
) -> None:
    """Draw a sweep's figures (metric vs swept field with CI bands, heatmaps, speedup)."""
    from sdsim.plots import plot_sweep

    if plot_dir is not None:
        _check_writable(plot_dir)
    files = plot_sweep(
        sweep_dir, metrics=metric, x=x, facet=facet, speedup_vs=speedup_vs, plot_dir=plot_dir
    )
    for f in files:
        out.print(f"wrote {f}", soft_wrap=True)


# --- end sweep commands -----------------------------------------------------------------------


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
