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
        "k_mean",
        "batch_mean",
        "in_system_mean",
        "little_residual",
        "preemptions",
        "kv_util_mean",
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
