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
from typing import Annotated, Any, cast

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
        "kv_blocks_total",
        "kv_peak_blocks",
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
    summary_only: Annotated[
        bool,
        typer.Option(
            "--summary-only",
            help="keep running sums and quantile sketches instead of every record (flat memory "
            "for million-request runs; quantiles within 0.5%); --out then writes summary.json "
            "and scenario.yaml only",
        ),
    ] = False,
) -> None:
    """Simulate a scenario and print its latency summary."""
    from sdsim.simulation import simulate

    scn = _load(scenario, set_)
    if out_dir is not None:
        _check_writable(out_dir)
    prog = _LazyProgress(f"simulating {scn.name}")
    try:
        res = simulate(scn, seed=seed, progress=prog, keep_records=not summary_only)
    finally:
        prog.close()
    written = "summary.json, scenario.yaml"
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        if not summary_only:
            res.requests.to_csv(out_dir / "requests.csv", index=False)
            res.steps.to_csv(out_dir / "steps.csv", index=False)
            written = "requests.csv, steps.csv, " + written
        (out_dir / "summary.json").write_text(json.dumps(res.summary, indent=2, default=str) + "\n")
        # the resolved scenario reproduces the run: it carries the seed actually used
        ran = scn if seed is None else scn.with_overrides({"seed": int(seed)})
        (out_dir / "scenario.yaml").write_text(ran.to_yaml())
    if json_out:
        out.print_json(json.dumps(res.summary, default=str))
    else:
        print_summary(res.summary, f"{scn.name}: k={scn.spec.k}, rate={scn.workload.rate:g} req/s")
        from sdsim.memory import kv_capacity

        out.print(f"KV cache: {kv_capacity(scn).describe()}", highlight=False, soft_wrap=True)
        if out_dir is not None:
            out.print(f"wrote {out_dir}/{written}")
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
    if plot is not None:
        _check_writable(plot.parent if str(plot.parent) else Path("."), "--plot")
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
    from sdsim.memory import kv_capacity

    cap = kv_capacity(scn)
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
                    "kv_capacity": cap.to_dict(),
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
        fits = (
            "" if cap.tokens is None else f"; ~{cap.tokens // max(ctx, 1)} requests of {ctx} tokens"
        )
        out.print(f"KV cache: {cap.describe()}{fits}", highlight=False, soft_wrap=True)
    if plot is not None:
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
# --- analytic commands (predict, fit, advise, validate) ---------------------------------------


def _parse_rates(text: list[str] | None, option: str = "--rates") -> list[float] | None:
    """Rates from ``--rates 10,20 --rates 30`` (comma or space separated, req/s)."""
    if not text:
        return None
    vals: list[float] = []
    for chunk in text:
        for tok in chunk.replace(",", " ").split():
            try:
                v = float(tok)
            except ValueError:
                raise ScenarioError(option, f"not a number: {tok!r}") from None
            if not (v > 0 and math.isfinite(v)):
                raise ScenarioError(option, f"rates must be positive (got {tok})")
            vals.append(v)
    if not vals:
        raise ScenarioError(option, "no rates given")
    return vals


RatesOpt = Annotated[
    list[str] | None,
    typer.Option("--rates", help="arrival rates in req/s, comma separated (repeatable)"),
]


def _ms(v: Any) -> str:
    return _fmt(float(v) * 1e3) if isinstance(v, (int, float)) else str(v)


@app.command()
def predict(
    scenario: ScenarioArg,
    set_: SetOpt = None,
    rates: RatesOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the prediction as JSON")] = False,
) -> None:
    """Predict latency (mean, p50/p90/p99), saturation, speedup and best k without simulating."""
    from sdsim.analytic import predict as _predict

    scn = _load(scenario, set_)
    p = _predict(scn, rates=_parse_rates(rates))
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
        t.add_row(name, _fmt(v))
    out.print(t)
    bk = Table(title="best k by rate (analytic)")
    bk.add_column("rate (req/s)", justify="right")
    bk.add_column("best k", justify="right")
    for r, k in p.best_k.items():
        bk.add_row(_fmt(r), "saturated" if k is None else str(k))
    out.print(bk)
    if not p.summary["stable"]:
        err.print(
            f"[yellow]warning:[/] rate {scn.workload.rate:g} req/s is at or past the predicted "
            f"saturation ({_fmt(p.saturation_rate)} req/s): latency grows without bound"
        )
    elif p.outside_model:
        err.print(f"[yellow]warning:[/] outside the model: {p.outside_model}")


def _fit_measurements_csv(measurements: Path, form: str, json_out: bool) -> None:
    """Fit the dense (C1, C2) or six-coefficient SD form to a measurements table (`sdsim fit`)."""
    import pandas as pd

    from sdsim.analytic.fitting import fit_measurements

    if not measurements.exists():
        raise ScenarioError(str(measurements), "measurements file not found")
    try:
        df = pd.read_csv(measurements)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ScenarioError(
            str(measurements), f"cannot parse CSV: {exc.__class__.__name__}"
        ) from None
    res = fit_measurements(df, form=form)
    if json_out:
        out.print_json(json.dumps(res.to_dict()))
        return
    t = Table(title=f"{res.form} fit of {measurements.name} ({res.n} rows)")
    t.add_column("coefficient")
    t.add_column("value (ms)", justify="right")
    t.add_column("std. error (ms)", justify="right")
    for n, v in res.coefficients.items():
        t.add_row(n, _fmt(v * 1e3), _fmt(res.stderr[n] * 1e3))
    out.print(t)
    out.print(
        f"R² = {_fmt(res.r2)}; max |relative residual| = "
        f"{_fmt(float(abs(res.rel_residuals).max()))}; leave-some-out mean |relative error| = "
        f"{_fmt(res.loo_error)}"
    )


@app.command()
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
    from sdsim.analytic.prediction import predict as _predict

    scn = _load(scenario, set_)
    rlist = _parse_rates(rates) or [scn.workload.rate]
    ks = list(range(scn.spec.k_max + 1))
    t = Table(title=f"{scn.name}: best draft length by rate (alpha={scn.acceptance.mean_alpha:g})")
    for c in ("rate (req/s)", "best k", "e2e mean (ms)", "k=0 e2e (ms)", "speedup"):
        t.add_column(c, justify="right")
    if confirm:
        t.add_column("simulated best k (e2e ms)", justify="right")
    prog = _LazyProgress("confirming by simulation")
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
                row = [_fmt(r), "saturated", "-", "-", "-"]
                if confirm:
                    row.append("-")
                t.add_row(*row)
                continue
            kbest = min(finite, key=lambda kk: finite[kk])
            sp = lat[0] / lat[kbest] if math.isfinite(lat[0]) else math.inf
            row = [_fmt(r), str(kbest), _ms(lat[kbest]), _ms(lat[0]), _fmt(sp)]
            if confirm:
                from sdsim.simulation import simulate

                cands = sorted(finite, key=lambda kk: finite[kk])[:3]
                sim = {}
                for k in cands:
                    s = scn.with_overrides({"workload.rate": r, "spec.k": k})
                    sim[k] = float(simulate(s, seed=seed).summary["e2e_mean"])
                    done += 1
                    prog(done, total)
                ks_best = min(sim, key=lambda kk: sim[kk])
                row.append(f"{ks_best} ({_ms(sim[ks_best])})")
            t.add_row(*row)
    finally:
        prog.close()
    out.print(t)


@app.command()
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
    from sdsim.analytic.validation import TOO_WIDE, validate_many, write_reports

    if jobs < 1:
        raise ScenarioError("--jobs", f"must be >= 1 (got {jobs})")
    if all_:
        if not scenario.is_dir():
            raise ScenarioError("--all", f"{scenario} is not a directory of scenarios")
        scns = [_load(p, set_) for p in sorted(scenario.glob("*.yaml"))]
        scns = [s for s in scns if s.workload.arrival not in ("trace", "replay")]
        if not scns:
            raise ScenarioError("--all", f"no rate-driven scenario in {scenario}")
        if rates:
            raise ScenarioError("--rates", "not with --all (each scenario takes its own loads)")
    else:
        scns = [_load(scenario, set_)]
    name = "all" if all_ else scns[0].name
    dest = out_dir if out_dir is not None else Path("out") / f"validate-{name}"
    _check_writable(dest)
    prog = _LazyProgress(f"validating {name} (requests)", delay_s=0.0)
    try:
        reports = validate_many(
            scns,
            None if all_ else [_parse_rates(rates)],
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
            f"{_fmt(rep.saturation_rate)} req/s; error ± the simulation's 95% CI)"
        )
        for c in ("rate", "% sat", "requests", "e2e mean", "e2e p99", "TTFT p99", "TPOT p99"):
            t.add_column(c, justify="right")
        t.add_column("verdict", justify="left")
        d = rep.table
        for _, v in rep.verdicts.iterrows():
            cells = []
            for m, st in (("e2e", "mean"), ("e2e", "p99"), ("ttft", "p99"), ("tpot", "p99")):
                row = d[(d["rate"] == v["rate"]) & (d["metric"] == m) & (d["statistic"] == st)]
                r = row.iloc[0]
                style = {"holds": "", "fails": "[red]"}.get(str(r["verdict"]), "[yellow]")
                cells.append(f"{style}{r['rel_error']:+.1%}±{r['ci_half_width']:.0%}")
            verdict = {"holds": "holds", TOO_WIDE: "CI too wide"}.get(str(v["verdict"]), "breaks")
            if v["outside_model"]:
                verdict = "outside model"
            t.add_row(
                _fmt(v["rate"]), f"{v['fraction']:.0%}", f"{int(v['requests']):,}", *cells, verdict
            )
        out.print(t)
        for _, v in rep.verdicts.iterrows():
            if v["verdict"] == TOO_WIDE:
                out.print(f"  {_fmt(v['rate'])} req/s: {TOO_WIDE}: {v['undecided']}")
            elif v["verdict"] != "holds":
                out.print(f"  {_fmt(v['rate'])} req/s: {v['reason']} ({v['failing']})")
    out.print(
        "tolerances: means 5% (e2e) / 10% (TTFT, TPOT); p50-p99 10% (e2e, TPOT) / 15% (TTFT). "
        "A statistic holds when its whole CI is within tolerance (plain), fails when all of it "
        f"is outside (red), else the CI is too wide to judge (yellow). Wrote "
        f"{', '.join(str(f) for f in files)}"
    )


# --- end analytic commands ---------------------------------------------------------------------
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
    table = Table(title="sweep summary: estimate [95% CI]", header_style="bold")
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
            lo, hi = (float(row[f"{m}_ci_{b}"]) * scales[m] for b in ("low", "high"))
            ok = math.isfinite(lo) and math.isfinite(hi) and hi > lo
            cell = _fmt(mean) + (f" [{lo:.3g}, {hi:.3g}]" if ok else "")
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


# --- reports / serve commands (issue 10: report import, fit, compare, serve) ---------------------

ReportArgs = Annotated[
    list[Path], typer.Argument(help="GuideLLM (JSON/YAML) or vLLM bench serve (JSON) report(s)")
]
OptScenario = Annotated[
    Path | None, typer.Option("--scenario", help="scenario YAML (server, k, alpha, costs)")
]


def _scenario_or_default(path: Path | None, sets: list[str] | None) -> Scenario:
    return load_scenario(path, parse_set_options(sets))


def _pct(v: float) -> str:
    return f"{v * 100:+.1f}%" if math.isfinite(v) else "-"


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


def _dense_json(d: Any) -> dict[str, Any]:
    return {
        "metric": d.metric,
        "c1": d.c1,
        "c1_se": d.c1_se,
        "c2": d.c2,
        "c2_se": d.c2_se,
        "r2": d.r2,
        "saturation_rate": d.saturation_rate,
        "table": d.table.to_dict(orient="records"),
    }


@app.command()
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
    if form not in ("dense", "sd", "auto"):
        raise ScenarioError("--form", f"must be dense, sd or auto (got {form!r})")
    for a in alpha or []:
        if not 0.0 <= a <= 1.0:
            raise ScenarioError("--alpha", f"must lie in [0, 1] (got {a})")
    for kk in k or []:
        if kk < 0:
            raise ScenarioError("--k", f"must be >= 0 (got {kk})")
    if len(reports) == 1 and reports[0].suffix.lower() == ".csv":
        _fit_measurements_csv(reports[0], form, json_out)
        return
    import numpy as np

    from sdsim.reports import (
        costs_from_dense,
        fit_dense,
        fit_linear_costs,
        fit_sd,
        fitted_scenario,
        load_report,
        load_reports,
        report_to_measurements,
        several_configurations,
    )
    from sdsim.reports.formats import Report

    ks = _per_report(k, reports, "--k")
    alphas = _per_report(alpha, reports, "--alpha")
    over: dict[str, Any] = parse_set_options(set_)
    if alphas is not None:
        over["acceptance.alpha"] = alphas[0]
    if ks is not None:
        over["spec.k"] = ks[0]
    scn = load_scenario(scenario, over)
    if out_path is not None:
        _check_writable(out_path.parent if str(out_path.parent) else Path("."))
    rep = load_reports(reports)
    meas = report_to_measurements(rep, scenario=scn)
    if metric not in meas.columns or metric == "k" or metric == "alpha":
        raise ScenarioError("--metric", f"unknown measurement {metric!r}")
    if (ks is not None and len(set(ks)) > 1) or (alphas is not None and len(set(alphas)) > 1):
        counts = [len(load_report(p).benchmarks) for p in reports]
        if ks is not None:
            meas["k"] = np.repeat(np.asarray(ks, dtype=np.int64), counts)
        if alphas is not None:
            meas["alpha"] = np.repeat(np.asarray(alphas, dtype=np.float64), counts)
    several = several_configurations(meas)
    # the dense form: one (C1, C2) per configuration
    dense_fits: list[tuple[Any, Any, Any]] = []
    if form != "sd":
        for key, grp in meas.groupby(["k", "alpha"], sort=False, dropna=False):
            kk, aa = cast(tuple[Any, Any], key)
            try:
                dense_fits.append((kk, aa, fit_dense(grp, metric=metric)))
            except ScenarioError:
                if not several:
                    raise
    sd = None
    if form == "sd" or (form == "auto" and several):
        if metric != "e2e_mean":
            raise ScenarioError("--metric", "the SD form models the mean e2e latency only")
        sd = fit_sd(meas)
    if not dense_fits and sd is None:
        raise ScenarioError("report", "no configuration has >= 2 benchmarks to fit C1, C2")
    # linear step costs from the per-request timings of the scenario's own configuration
    mine = (meas["k"] == scn.spec.k) & np.isclose(meas["alpha"], scn.acceptance.mean_alpha)
    own = rep
    if several:
        ids = set(meas.loc[mine, "benchmark"])
        own = Report(
            requests=rep.requests[rep.requests["benchmark"].isin(ids)],
            benchmarks=rep.benchmarks[rep.benchmarks["benchmark"].isin(ids)],
            source=rep.source,
            path=rep.path,
        )
    lin = None
    lin_note = ""
    if linear:
        try:
            lin = fit_linear_costs(own, scn)
        except ScenarioError as exc:
            lin_note = exc.message
    first = dense_fits[0][2] if dense_fits else None
    base_dense = next((d for kk, _, d in dense_fits if kk == scn.spec.k), first)
    if lin is not None:
        costs = lin.costs
    elif base_dense is not None:
        costs = costs_from_dense(base_dense, scn, float(meas["output_tokens"].mean()))
    else:
        costs = scn.costs.linear
        lin_note = lin_note or "no dense fit for the scenario's configuration"
    result: dict[str, Any] = {
        "dense": None if base_dense is None else _dense_json(base_dense),
        "dense_by_configuration": [
            {"k": int(kk), "alpha": float(aa), **_dense_json(d)} for kk, aa, d in dense_fits
        ],
        "sd": None
        if sd is None
        else {**sd.result.to_dict(), "table": sd.table.to_dict(orient="records")},
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
    for kk, aa, dense in dense_fits:
        cfg = f" (k={int(kk)}, alpha={float(aa):g})" if several else ""
        t = Table(title=f"dense fit of {metric}{cfg}: L = C1 / (1 - rate * C2)")
        for c in ("coefficient", "value", "std. error"):
            t.add_column(c, justify="right" if c != "coefficient" else "left")
        t.add_row("C1 (ms)", _ms(dense.c1), _ms(dense.c1_se))
        t.add_row("C2 (ms)", _ms(dense.c2), _ms(dense.c2_se))
        t.add_row("saturation (req/s)", _fmt(dense.saturation_rate), "")
        t.add_row("R²", _fmt(dense.r2), "")
        out.print(t)
        t2 = Table(title="predicted vs measured")
        for c in ("benchmark", "strategy", "rate (req/s)", "measured (ms)", "predicted (ms)",
                  "error"):  # fmt: skip
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
    if sd is not None:
        res = sd.result
        t = Table(title=f"SD fit of e2e_mean over {res.n} benchmarks: six stage coefficients")
        for c in ("coefficient", "value (ms)", "std. error (ms)"):
            t.add_column(c, justify="right" if c != "coefficient" else "left")
        for n, v in res.coefficients.items():
            t.add_row(n, _fmt(v * 1e3), _fmt(res.stderr[n] * 1e3))
        out.print(t)
        t2 = Table(title="SD form: predicted vs measured")
        for c in ("benchmark", "k", "alpha", "rate (req/s)", "measured (ms)", "predicted (ms)",
                  "error"):  # fmt: skip
            t2.add_column(c, justify="right")
        for r in sd.table.to_dict(orient="records"):
            t2.add_row(
                str(r["benchmark"]),
                str(int(r["k"])),
                _fmt(float(r["alpha"])),
                _fmt(float(r["rate"])),
                _ms(float(r["measured"])),
                _ms(float(r["predicted"])),
                _pct(float(r["rel_error"])),
            )
        out.print(t2)
        out.print(
            f"R² = {_fmt(res.r2)}; leave-some-out mean |relative error| = {_fmt(res.loo_error)}"
        )
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


def _check_writable(path: Path, option: str = "--out") -> None:
    """Refuse (as bad input for ``option``) an output path that cannot be created or written."""
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ScenarioError(option, f"{probe} is not a directory (allowed: a writable directory)")
    import os

    if not os.access(probe, os.W_OK | os.X_OK):
        raise ScenarioError(option, f"directory {probe} is not writable")


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the typer app, turning user errors into exit code 2 and one line."""
    handler: Callable[..., Any] = app
    try:
        rc = handler(args=argv, standalone_mode=False)
    except ScenarioError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err.print("aborted", markup=False)
        sys.exit(130)
    except OSError as exc:  # an --out / --plot path the system refuses (read-only, not a dir)
        where = exc.filename if exc.filename is not None else "file"
        err.print(
            f"error: {where}: {exc.strerror or exc.__class__.__name__}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(2)
    except Exception as exc:
        # click usage errors (unknown option or command, missing argument, bad type). Recent typer
        # versions vendor click, so their exceptions are not `click.ClickException`: recognise
        # them by what both provide.
        usage = hasattr(exc, "format_message") and isinstance(getattr(exc, "exit_code", None), int)
        if not usage:
            raise
        text = str(cast(Any, exc).format_message()).strip()
        msg = text.splitlines()[0] if text else exc.__class__.__name__
        err.print(f"error: {msg}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(int(getattr(exc, "exit_code", 2)))
    # with standalone_mode=False click returns a command's `typer.Exit` code instead of exiting
    if isinstance(rc, int) and rc != 0:
        sys.exit(rc)


if __name__ == "__main__":  # pragma: no cover
    main()
