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


# --- costs commands ------------------------------------------------------------------------


def _batches(max_batch: int) -> list[int]:
    out, b = [], 1
    while b < max_batch:
        out.append(b)
        b *= 2
    return [*out, max_batch]


@app.command()
def costs(
    scenario: ScenarioArg,
    set_: SetOpt = None,
    context: Annotated[
        int | None,
        typer.Option("--context", help="mean KV tokens per request (default: prompt + output/2)"),
    ] = None,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="save a plot of step time vs batch")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the table as JSON")] = False,
) -> None:
    """Step time vs decode batch (k = 0 and the scenario's k) and one prefill chunk."""
    from sdsim import step_time
    from sdsim.costs.step import build_cost_model

    scn = _load(scenario, set_)
    if context is not None and context < 0:
        raise ScenarioError("--context", "must be >= 0")
    wl = scn.workload
    ctx = int(wl.prompt_tokens.mean + wl.output_tokens.mean / 2) if context is None else context
    k = scn.spec.k
    chunk = int(min(scn.server.max_num_batched_tokens, max(wl.prompt_tokens.mean, 1)))
    rows: list[dict[str, Any]] = []
    for b in _batches(scn.server.max_num_seqs):
        plain = step_time(scn, b, ctx, k=0)
        spec = step_time(scn, b, ctx, k=k)
        rows.append(
            {
                "batch": b,
                "plain_ms": plain.total * 1e3,
                "spec_ms": spec.total * 1e3,
                "draft_ms": spec.draft * 1e3,
                "verify_ms": spec.verify * 1e3,
                "overhead_ms": spec.overhead * 1e3,
                "plain_tok_s": b / plain.total,
            }
        )
    pf = step_time(scn, 0, 0, prefill_tokens=chunk, k=k)
    model = build_cost_model(scn)
    lin = model.linearize(k, scn.server.max_num_seqs, ctx)
    if json_out:
        out.print_json(
            json.dumps(
                {
                    "source": scn.costs.resolved_source,
                    "context": ctx,
                    "k": k,
                    "rows": rows,
                    "prefill_chunk": {"tokens": chunk, "ms": pf.total * 1e3},
                    "linear": lin.__dict__,
                }
            )
        )
    else:
        hw = scn.hardware if isinstance(scn.hardware, str) else scn.hardware.name
        table = Table(
            title=f"{scn.name}: {scn.target} on {hw} x{scn.server.tp} "
            f"({scn.costs.resolved_source}), KV {ctx} tokens/request",
            header_style="bold",
        )
        for col in ("batch", "k=0 (ms)", f"k={k} (ms)", "draft", "verify", "overhead", "k=0 tok/s"):
            table.add_column(col, justify="right")
        for r in rows:
            table.add_row(
                str(r["batch"]),
                f"{r['plain_ms']:.3f}",
                f"{r['spec_ms']:.3f}",
                f"{r['draft_ms']:.3f}",
                f"{r['verify_ms']:.3f}",
                f"{r['overhead_ms']:.3f}",
                f"{r['plain_tok_s']:.0f}",
            )
        out.print(table)
        out.print(
            f"prefill chunk of {chunk} tokens (k={k}): {pf.total * 1e3:.3f} ms "
            f"(prefill {pf.prefill * 1e3:.3f}, overhead {pf.overhead * 1e3:.3f})"
        )
        out.print(
            f"linearized (k={k}): verify {lin.v_fixed * 1e3:.3f} ms + "
            f"{lin.v_token * 1e6:.3f} us/token + {lin.v_kv * 1e9:.3f} ns/KV token; "
            f"draft pass {lin.d_fixed * 1e3:.3f} ms + "
            f"{lin.d_token * 1e6:.3f} us/seq + {lin.d_kv * 1e9:.3f} ns/KV token; "
            f"fit error {lin.fit_error:.1%}"
        )
    if plot is not None:
        _check_writable(plot.parent if str(plot.parent) else Path("."))
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        bs = [r["batch"] for r in rows]
        ax.plot(bs, [r["plain_ms"] for r in rows], "o-", label="k=0")
        ax.plot(bs, [r["spec_ms"] for r in rows], "s-", label=f"k={k}")
        ax.axhline(pf.total * 1e3, ls="--", color="grey", label=f"prefill {chunk} tok")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("decoding requests in the step")
        ax.set_ylabel("step time (ms)")
        ax.set_title(f"{scn.target} on {hw} ({scn.costs.resolved_source})")
        ax.legend()
        fig.tight_layout()
        fig.savefig(plot)
        plt.close(fig)
        if not json_out:
            out.print(f"wrote {plot}")


@app.command()
def bench(
    model: Annotated[
        list[str],
        typer.Option("--model", help="registry name or config.json path (repeatable)"),
    ],
    out_dir: Annotated[Path, typer.Option("--out", help="profile bundle directory to write")],
    backend: Annotated[str, typer.Option("--backend", help="numpy or torch")] = "numpy",
    device: Annotated[
        str | None, typer.Option("--device", help="cpu, cuda, cuda:N (torch backend)")
    ] = None,
    dtype: Annotated[
        str | None, typer.Option("--dtype", help="torch dtype (default bfloat16)")
    ] = None,
    quick: Annotated[bool, typer.Option("--quick", help="reduced grid (CPU-friendly)")] = False,
    repeats: Annotated[int | None, typer.Option("--repeats", min=1)] = None,
    warmup: Annotated[int | None, typer.Option("--warmup", min=0)] = None,
    tokens: Annotated[
        str | None, typer.Option("--tokens", help="comma-separated token grid override")
    ] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Measure a model's operator shapes on this machine and write a profile bundle."""
    from dataclasses import replace

    from sdsim.bench import FULL_GRID, QUICK_GRID, make_backend, run_bench
    from sdsim.costs.profile import write_bundle
    from sdsim.models import resolve_model

    specs = [resolve_model(m, "--model") for m in model]
    grid = QUICK_GRID if quick else FULL_GRID
    if repeats is not None:
        grid = replace(grid, repeats=repeats)
    if warmup is not None:
        grid = replace(grid, warmup=warmup)
    if tokens:
        try:
            tk = tuple(sorted({int(x) for x in tokens.split(",") if x.strip()}))
        except ValueError:
            raise ScenarioError("--tokens", f"expected integers, got {tokens!r}") from None
        if not tk or tk[0] < 1:
            raise ScenarioError("--tokens", "token counts must be >= 1")
        grid = replace(grid, tokens=tk)
    _check_writable(out_dir)
    be = make_backend(backend, device, dtype, seed)
    bar = Progress(
        TextColumn("[bold]bench"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.description}"),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )
    with bar:
        task = bar.add_task("", total=None)

        def prog(done: int, total: int, label: str) -> None:
            bar.update(task, completed=done, total=total, description=label)

        bundle = run_bench(specs, be, grid, progress=prog)
    write_bundle(bundle, out_dir)
    out.print(
        f"wrote {out_dir} ({len(bundle.dense)} dense + {len(bundle.attention)} attention points, "
        f"{bundle.meta['device']}, {bundle.meta['backend']} {bundle.meta['dtype']})"
    )


# --- end costs commands --------------------------------------------------------------------


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
