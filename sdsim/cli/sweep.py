"""`sdsim sweep` (run a grid of scenarios, resumable) and `sdsim plot` (draw its figures)."""

from __future__ import annotations

__all__ = ["SweepBar", "plot", "print_sweep_summary", "sweep"]

import math
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from sdsim.cli.app import SetOpt, check_writable, err, fmt, out
from sdsim.cli.tables import Column, render_table
from sdsim.labels import METRICS, short_field, sig3, time_unit
from sdsim.scenario import parse_set_options
from sdsim.sweep import load_sweep, plan_sweep, run_sweep
from sdsim.sweep_store import read_runs


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


def _mean_ci_cells(summary: Any, m: str, n: int) -> tuple[str, list[str]]:
    """Cells ``estimate [low, high]`` (the 95% CI, asymmetric: latency CIs are built on the log
    scale, shares are Wilson intervals) and ``| model`` when the sweep has the analytic value, of
    one metric over the first ``n`` points, latencies in one unit chosen for the column."""
    lab = METRICS.get(m)
    rows = summary.head(n)
    factor = 1.0
    unit = lab.unit if lab else ""
    if lab is not None and lab.unit == "s":
        unit, factor = time_unit(rows[m].to_numpy(dtype=float))
    cells = []
    for _, row in rows.iterrows():
        est = float(row[m]) * factor
        lo, hi = (float(row[f"{m}_ci_{b}"]) * factor for b in ("low", "high"))
        ok = math.isfinite(lo) and math.isfinite(hi) and hi > lo
        cell = _num(est) + (f" [{_num(lo)}, {_num(hi)}]" if ok else "")
        if f"{m}_analytic" in row.index:
            cell += f" | {_num(float(row[f'{m}_analytic']) * factor)}"
        cells.append(cell)
    return unit, cells


def _num(v: float) -> str:
    return sig3(v) if math.isfinite(v) else fmt(v)


def print_sweep_summary(summary: Any, fields: list[str], metrics: list[str]) -> None:
    """The first 60 points of a sweep summary: estimate and 95% CI of four metrics (and the
    analytic model's value after ``|`` when the sweep has it)."""
    n = 60
    shown = [m for m in metrics if m in summary.columns][:4]
    columns = [Column(short_field(f), "label" if i == 0 else "text")
               for i, f in enumerate(fields)]
    if not columns:
        columns = [Column("point", "label")]
    columns.append(Column("runs", "text"))
    body: list[list[Any]] = []
    head = summary.head(n)
    for _, row in head.iterrows():
        cells: list[Any] = [fmt(row[f]) for f in fields] or [str(row["point"])]
        cells.append(f"{row['runs']}" + (f" ({row['failed']} failed)" if row["failed"] else ""))
        body.append(cells)
    for m in shown:
        unit, mcells = _mean_ci_cells(summary, m, n)
        name = METRICS[m].name if m in METRICS else m
        columns.append(Column(f"{name} ({unit})" if unit else name, "text"))
        for row_cells, c in zip(body, mcells, strict=True):
            row_cells.append(c)
    has_model = any(f"{m}_analytic" in summary.columns for m in shown)
    render_table(
        "sweep summary: estimate [95% CI]" + (" | analytic model" if has_model else ""),
        columns,
        body,
        notes=[f"... {len(summary) - n} more points in summary.csv"] if len(summary) > n else [],
    )


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
    check_writable(out_dir)
    spec = load_sweep(sweep_file)
    plan = plan_sweep(
        spec, sweep_file, extra_set=parse_set_options(set_), replications=replications
    )
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
    if res.redone:
        shown = "; ".join(f"{k}: {why}" for k, why in res.redone[:5])
        more = f" and {len(res.redone) - 5} more" if len(res.redone) > 5 else ""
        err.print(
            f"note: redid {len(res.redone)} run(s) whose result file could not be trusted "
            f"({shown}{more})",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
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
    target: Annotated[
        list[str] | None,
        typer.Option(
            "--target",
            help="a target line METRIC=VALUE on that metric's figure; latencies in seconds "
            "or with a unit: e2e_p99=10, ttft_p99=500ms (repeatable)",
        ),
    ] = None,
) -> None:
    """Draw a sweep's figures (metric vs swept field with CI bands, heatmaps, speedup)."""
    # deferred: matplotlib takes a noticeable time to import
    from sdsim.plots import parse_targets, plot_sweep

    goals = parse_targets(target)
    if plot_dir is not None:
        check_writable(plot_dir)
    damaged: list[tuple[Path, str]] = []
    read_runs(sweep_dir, damaged)
    if damaged:
        err.print(
            f"warning: left out {len(damaged)} result file(s) that cannot be trusted "
            f"({damaged[0][0].name}: {damaged[0][1]}{', ...' if len(damaged) > 1 else ''}); "
            "re-run the sweep to redo them",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    files = plot_sweep(
        sweep_dir,
        metrics=metric,
        x=x,
        facet=facet,
        speedup_vs=speedup_vs,
        plot_dir=plot_dir,
        targets=goals,
    )
    for f in files:
        out.print(f"wrote {f}", soft_wrap=True)
