"""`sdsim sweep` (run a grid of scenarios, resumable) and `sdsim plot` (draw its figures)."""

from __future__ import annotations

__all__ = ["SweepBar", "plot", "print_sweep_summary", "sweep"]

import math
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from sdsim.cli.app import SetOpt, check_writable, err, fmt, out
from sdsim.scenario import parse_set_options
from sdsim.sweep import load_sweep, plan_sweep, run_sweep


class SweepBar:
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


def print_sweep_summary(summary: Any, fields: list[str], metrics: list[str]) -> None:
    """The first 60 points of a sweep summary: estimate and 95% CI of four metrics."""
    table = Table(title="sweep summary: estimate [95% CI]", header_style="bold")
    for f in fields:
        table.add_column(f.rsplit(".", 1)[-1])
    table.add_column("runs", justify="right")
    shown = [m for m in metrics if m in summary.columns][:4]
    scales = {m: 1e3 if m.startswith(("e2e_", "ttft_", "tpot_")) else 1.0 for m in shown}
    for m in shown:
        table.add_column(m + (" ms" if scales[m] != 1.0 else ""), justify="right")
    for _, row in summary.head(60).iterrows():
        cells = [fmt(row[f]) for f in fields]
        cells.append(f"{row['runs']}" + (f" ({row['failed']} failed)" if row["failed"] else ""))
        for m in shown:
            mean = float(row[m]) * scales[m]
            lo, hi = (float(row[f"{m}_ci_{b}"]) * scales[m] for b in ("low", "high"))
            ok = math.isfinite(lo) and math.isfinite(hi) and hi > lo
            cell = fmt(mean) + (f" [{lo:.3g}, {hi:.3g}]" if ok else "")
            if f"{m}_analytic" in row.index:
                cell += f" (model {fmt(float(row[f'{m}_analytic']) * scales[m])})"
            cells.append(cell)
        table.add_row(*cells)
    out.print(table)
    if len(summary) > 60:
        out.print(f"... {len(summary) - 60} more points in summary.csv")


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
    spec = load_sweep(sweep_file)
    plan = plan_sweep(
        spec, sweep_file, extra_set=parse_set_options(set_), replications=replications
    )
    check_writable(out_dir)
    n_workers = workers if workers is not None else (os.cpu_count() or 1)
    if dask is not None and workers is None:
        n_workers = 2 if dask == "local" else 1
    bar = SweepBar(f"sweep {plan.name}")
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
        print_sweep_summary(res.summary, plan.fields, list(plan.spec.metrics))
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
    from sdsim.plots import plot_sweep  # deferred: matplotlib takes a noticeable time to import

    if plot_dir is not None:
        check_writable(plot_dir)
    files = plot_sweep(
        sweep_dir, metrics=metric, x=x, facet=facet, speedup_vs=speedup_vs, plot_dir=plot_dir
    )
    for f in files:
        out.print(f"wrote {f}", soft_wrap=True)
