"""Capacity planning commands: `sdsim plan` (the cheapest configuration that serves a rate
within latency SLOs, or with --max-rate the highest rate one configuration sustains) and `sdsim
from-vllm` (a `vllm serve` command line as a scenario). The work is in :mod:`sdsim.planning` and
:mod:`sdsim.vllm_args`; these parse options, call them and print.
"""

from __future__ import annotations

__all__ = ["from_vllm", "plan"]

import json
import math
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from sdsim.cli.app import (
    LazyProgress,
    ScenarioArg,
    SetOpt,
    check_writable,
    err,
    fmt,
    out,
)
from sdsim.cli.sweep import SweepBar
from sdsim.cli.tables import Column, render_table
from sdsim.errors import ScenarioError
from sdsim.labels import METRICS, sig3, time_unit
from sdsim.planning import load_prices, parse_price_options, parse_search_options
from sdsim.planning import max_rate as find_max_rate
from sdsim.planning import plan as plan_capacity
from sdsim.provenance import provenance, sidecar, yaml_header
from sdsim.scenario import Scenario, load_scenario, parse_set_options
from sdsim.slo import parse_slo_options
from sdsim.vllm_args import parse_vllm_command


def _slo_header(metric: str, bound: float, unit: str, factor: float) -> str:
    """A column heading for one SLO, on two lines: ``e2e p99`` / ``≤ 20 s``."""
    lab = METRICS.get(metric)
    name = lab.name if lab is not None else metric
    return f"{name}\n≤ {bound * factor:g} {unit}"


def _slo_units(bounds: dict[str, float]) -> dict[str, tuple[str, float]]:
    """The time unit each SLO's column is shown in, chosen by its bound (s, ms or µs)."""
    return {k: time_unit([b]) for k, b in bounds.items()}


def _print_plan(res: Any, limit: int) -> None:
    """The ranked candidates: GPUs, cost, each SLO statistic (model -> simulated ± CI
    half-width), the smallest SLO margin, goodput per GPU and the simulation's verdict."""
    fields = [f for f in res.fields if f != "server.replicas"]
    units = _slo_units(res.bounds)
    columns = [
        Column("#", "label"),
        *(Column(f.rsplit(".", 1)[-1], "text") for f in fields),
        Column("GPUs", "text", "replicas x tp"),
        Column("cost", "text", "$/Mtok"),
        *(Column(_slo_header(k, b, *units[k]), "text") for k, b in res.bounds.items()),
        Column("margin", "text"),
        Column("goodput/GPU", "num", "req/s"),
        Column("verdict", "words"),
    ]
    rows = []
    for c in res.candidates[:limit]:
        sim = c.replicas is not None
        row: list[Any] = [str(c.rank), *(fmt(c.overrides.get(f)) for f in fields)]
        row += [f"{c.gpus} = {c.gpus // c.tp} x {c.tp}", f"{c.cost:.3f}"]
        for k in res.bounds:
            _, factor = units[k]
            cell = sig3(c.model[k] * factor)
            if sim:
                mean, lo, hi = c.sim[k]
                cell += f" -> {sig3(mean * factor)} ± {sig3((hi - lo) / 2 * factor)}"
            row.append(cell)
        good = c.sim["goodput_rps"][0] if sim else c.model.get("goodput_rps", math.nan)
        row += [f"{c.min_margin(res.bounds):+.0%}", good / c.gpus, c.verdict]
        rows.append(row)
    render_table(
        f"{res.rate:g} req/s: configurations meeting the SLOs, cheapest first",
        columns,
        rows,
        notes=["SLO columns: the closed-form model's statistic -> the simulated mean over runs ± "
               "its 95% CI half-width; margin: the smallest SLO margin"],
    )
    if len(res.candidates) > limit:
        out.print(f"... {len(res.candidates) - limit} more in candidates.csv")


def plan(
    scenario: ScenarioArg,
    rate: Annotated[
        float | None, typer.Option("--rate", help="total arrival rate to serve, req/s")
    ] = None,
    slo: Annotated[
        list[str] | None,
        typer.Option("--slo", help="METRIC=SECONDS, e.g. ttft_p99=0.5 (repeatable)"),
    ] = None,
    search: Annotated[
        list[str] | None,
        typer.Option(
            "--search", help="FIELD=VALUES, e.g. server.replicas=1..16, spec.k=0,2,4 (repeatable)"
        ),
    ] = None,
    set_: SetOpt = None,
    max_rate: Annotated[
        bool,
        typer.Option("--max-rate", help="the highest rate this configuration sustains instead"),
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="output directory (resumed if present)")
    ] = None,
    confirm: Annotated[
        int, typer.Option("--confirm", help="groups simulated at least (0: model only)")
    ] = 3,
    replications: Annotated[
        int, typer.Option("--replications", help="simulated runs per configuration")
    ] = 3,
    requests: Annotated[
        int | None, typer.Option("--requests", help="requests per simulated run")
    ] = None,
    price: Annotated[
        list[str] | None,
        typer.Option("--price", help="GPU=USD per GPU-hour, e.g. h100-sxm=2.5 (repeatable)"),
    ] = None,
    prices: Annotated[
        Path | None, typer.Option("--prices", help="YAML/JSON file of GPU -> USD per GPU-hour")
    ] = None,
    objective: Annotated[
        str, typer.Option("--objective", help="cost (USD per million output tokens) or gpus")
    ] = "cost",
    workers: Annotated[
        int, typer.Option("--workers", help="local worker processes for screen and runs")
    ] = 1,
    dask: Annotated[
        str | None,
        typer.Option("--dask", help="Dask scheduler address, or 'local' for a LocalCluster"),
    ] = None,
    show: Annotated[int, typer.Option("--show", help="candidates printed")] = 10,
) -> None:
    """Capacity plan: the cheapest configuration that serves --rate within the SLOs.

    Screens every configuration of the --search space with the analytic model, then confirms
    the best-ranked frontiers by replicated simulation. Writes DIR/screen.csv (every
    configuration), candidates.csv, plan.json, pareto.png and best.yaml (the chosen
    configuration as a scenario). With --max-rate: the highest rate the scenario's own
    configuration sustains within the SLOs (model bisection, confirmed by simulation).
    """
    bounds = parse_slo_options(slo)
    space = parse_search_options(search)
    sets = parse_set_options(set_)
    if requests is not None:
        if requests < 1:
            raise ScenarioError("--requests", f"must be >= 1 (got {requests})")
        sets["workload.num_requests"] = requests
    scn = load_scenario(scenario, sets)
    if workers < 1:
        raise ScenarioError("--workers", f"must be >= 1 (got {workers})")
    target = out_dir if out_dir is not None else Path("out") / f"plan-{scn.name}"
    check_writable(target)
    bar = SweepBar("simulating")
    if max_rate:
        if space:
            raise ScenarioError("--search", "--max-rate checks one configuration: use --set")
        _plan_max_rate(scn, bounds, rate, replications, confirm, workers, dask, target, bar,
                       json_out)
        return
    if rate is None:
        raise ScenarioError("--rate", "plan needs the rate to serve (or --max-rate)")
    if not space:
        raise ScenarioError("--search", "give at least one FIELD=VALUES to search")
    table = parse_price_options(price, load_prices(prices))
    # matplotlib loads only when a plan draws its figure
    from sdsim.planning.pareto import plot_pareto

    screen_bar = LazyProgress("screening (analytic)")
    t0 = time.perf_counter()
    try:
        res = plan_capacity(
            scn, rate, space, bounds, prices=table, objective=objective, confirm=confirm,
            replications=replications, max_confirm=max(12, confirm), workers=workers,
            dask=dask, out_dir=target, screen_progress=screen_bar, sim_progress=bar,
        )
    except KeyboardInterrupt:
        bar.close()
        err.print(f"interrupted: finished work is saved in {target}; re-run to resume")
        raise SystemExit(130) from None
    finally:
        screen_bar.close()
        bar.close()
    wall = time.perf_counter() - t0
    target.mkdir(parents=True, exist_ok=True)
    screen = res.screen.drop(columns=["overrides"], errors="ignore")
    screen.to_csv(target / "screen.csv", index=False)
    sidecar(target / "screen.csv", scn.seed, scenario=scn.name, what="analytic screen")
    res.table().to_csv(target / "candidates.csv", index=False)
    sidecar(target / "candidates.csv", scn.seed, scenario=scn.name)
    doc = {**res.to_json(), **provenance(scn.seed)}
    (target / "plan.json").write_text(json.dumps(doc, indent=1) + "\n")
    plot_pareto(res, target / "pareto.png")
    if res.best_scenario is not None:
        head = yaml_header(res.best_scenario.seed, "the configuration `sdsim plan` chose")
        (target / "best.yaml").write_text(head + res.best_scenario.to_yaml())
    if json_out:
        out.print_json(json.dumps(doc))
        return
    counts = res.screen["status"].value_counts().to_dict() if len(res.screen) else {}
    out.print(
        f"screened {len(res.screen)} configurations with {res.evaluations} model evaluations "
        f"({', '.join(f'{v} {k}' for k, v in counts.items())}); "
        f"{len(res.verdicts)} configurations simulated x {replications} runs; {wall:.1f} s",
    )
    _print_plan(res, show)
    if res.unconfirmed:
        err.print(
            f"[yellow]warning:[/] {len(res.unconfirmed)} configuration(s) the model prices "
            "below the chosen one were not simulated (at most max(12, --confirm) groups are); "
            "re-run with a larger --confirm to settle them (finished runs are reused)",
            soft_wrap=True,
        )
    if res.best is None:
        out.print("[red]no configuration of the search meets the SLOs[/]")
        raise SystemExit(1)
    b = res.best
    ov = ", ".join(
        f"{k}={v}" for k, v in {**b.overrides, "server.replicas": b.gpus // b.tp}.items()
    )
    out.print(
        f"chosen: {ov}: {b.gpus} x {b.gpu}, ${b.cost:.3f} per million output tokens "
        f"({'simulated' if b.replicas is not None else 'model only'}); wrote {target}/best.yaml, "
        "plan.json, candidates.csv, screen.csv, pareto.png",
    )


def _plan_max_rate(
    scn: Scenario,
    bounds: dict[str, float],
    rate: float | None,
    replications: int,
    confirm: int,
    workers: int,
    dask: str | None,
    target: Path,
    bar: Any,
    json_out: bool,
) -> None:
    if rate is not None:
        scn = scn.with_overrides({"workload.rate": rate})
    try:
        res = find_max_rate(
            scn, bounds, replications=replications, simulate=confirm > 0, workers=workers,
            dask=dask, out_dir=target, progress=bar,
        )
    finally:
        bar.close()
    target.mkdir(parents=True, exist_ok=True)
    doc = {**res.to_json(), **provenance(scn.seed)}
    (target / "max-rate.json").write_text(json.dumps(doc, indent=1) + "\n")
    if json_out:
        out.print_json(json.dumps(doc))
        return
    out.print(
        f"{scn.name}: model max rate {fmt(res.model_rate)} req/s within the SLOs "
        f"(saturation {fmt(res.saturation_rate)} req/s)",
    )
    if res.tried:
        units = _slo_units(res.bounds)
        rows = []
        for r, v in sorted(res.tried.items()):
            row: list[Any] = [fmt(r)]
            for k in res.bounds:
                mean, lo, hi = v.stats[k]
                _, factor = units[k]
                row.append(f"{sig3(mean * factor)} ± {sig3((hi - lo) / 2 * factor)}")
            row += [v.stats["goodput_rps"][0], fmt(v.meets)]
            rows.append(row)
        render_table(
            f"simulated ({replications} runs per rate; mean ± 95% CI half-width)",
            [Column("rate", "label", "req/s"),
             *(Column(_slo_header(k, b, *units[k]), "text") for k, b in res.bounds.items()),
             Column("goodput", "num", "req/s"), Column("meets the SLOs", "text")],
            rows,
        )
        out.print(
            f"simulated max rate: {fmt(res.sim_rate)} req/s meets the SLOs, "
            f"{fmt(res.sim_miss_rate)} req/s does not; wrote {target}/max-rate.json",
        )


def from_vllm(
    command: Annotated[str, typer.Argument(help='the launch command, e.g. "vllm serve MODEL ..."')],
    hardware: Annotated[
        str | None, typer.Option("--hardware", help="GPU the command runs on (registry name)")
    ] = None,
    base: Annotated[
        Path | None,
        typer.Option("--base", help="scenario to take the rest from (workload, acceptance, ...)"),
    ] = None,
    set_: SetOpt = None,
    out_path: Annotated[
        Path | None, typer.Option("--out", help="write the scenario YAML here")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the import as JSON")] = False,
) -> None:
    """A scenario from a `vllm serve` command line, every flag accounted for.

    Each flag is carried over, approximated, or listed as not modelled, ignored or unknown
    (never dropped silently).
    """
    imp = parse_vllm_command(command)
    base_scn = load_scenario(base, None) if base is not None else load_scenario(None, None)
    scn = imp.scenario(base_scn, hardware)
    sets = parse_set_options(set_)
    if sets:
        scn = scn.with_overrides(sets)
    if out_path is not None:
        check_writable(out_path.parent if str(out_path.parent) else Path("."))
        out_path.write_text(yaml_header(scn.seed, "from a vllm serve command") + scn.to_yaml())
    if json_out:
        out.print_json(json.dumps({**imp.to_dict(), "scenario": scn.to_dict()}))
        return
    _print_import(imp)
    for note in imp.notes:
        out.print(f"note: {note}", soft_wrap=True, markup=False)
    if hardware is None and base is None:
        out.print(
            "note: no --hardware: the GPU is the default scenario's "
            f"({scn.hardware if isinstance(scn.hardware, str) else scn.hardware.name})"
        )
    where = f"wrote {out_path}" if out_path is not None else "print it with --out FILE"
    out.print(f"scenario: target {scn.target}, tp {scn.server.tp}, k {scn.spec.k}; {where}")


# Prefix of the flags `from-vllm` lists per key of vLLM's JSON speculative config.
_SPEC = "--speculative-config "


def _print_import(imp: Any) -> None:
    """Every flag of the command and what sdsim made of it: the scenario field it sets, or
    approximated / not modelled / ignored / unknown with the reason in a numbered note (keys of
    ``--speculative-config`` indented under it)."""
    entries: list[tuple[str, str, str, str]] = [
        *((f, v, field, "") for f, v, field in imp.carried),
        *((f, v, "approximated", note) for f, v, note in imp.approximated),
        *((f, v, "not modelled", what) for f, v, what in imp.not_modelled),
        *((f, v, "ignored", why) for f, v, why in imp.ignored),
        *((f, v, "unknown: not used", "") for f, v in imp.unknown),
    ]
    plain = [e for e in entries if not e[0].startswith(_SPEC)]
    spec = [e for e in entries if e[0].startswith(_SPEC)]
    rows: list[list[Any]] = []
    notes: list[str] = []

    def add(label: str, flag: str, value: str | None, outcome: str, note: str) -> None:
        if note:
            notes.append(f"[{len(notes) + 1}] {flag}: {note}")
            outcome = f"{outcome} [{len(notes)}]"
        rows.append([label, "" if value is None else str(value), outcome])

    for flag, value, outcome, note in plain:
        add(flag, flag, value, outcome, note)
    if spec:
        rows.append([_SPEC.strip(), "JSON, by key:", ""])
        for flag, value, outcome, note in spec:
            add("  " + flag.removeprefix(_SPEC), flag, value, outcome, note)
    render_table(
        f"vllm serve {imp.model}: {len(entries)} flags",
        [Column("flag", "label"), Column("value", "words"),
         Column("in sdsim", "words", "scenario field, or why not")],
        rows,
        notes=notes,
    )
