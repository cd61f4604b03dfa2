"""`sdsim run` (simulate a scenario) and `sdsim schema` (the scenario file's JSON Schema)."""

from __future__ import annotations

__all__ = ["run", "schema"]

import json
from pathlib import Path
from typing import Annotated

import typer

from sdsim.cli.app import (
    LazyProgress,
    ScenarioArg,
    SeedOpt,
    SetOpt,
    check_writable,
    err,
    fmt,
    load,
    out,
    print_summary,
)
from sdsim.cli.tables import alpha_text
from sdsim.labels import REQUEST_UNITS, STEP_UNITS
from sdsim.memory import kv_capacity
from sdsim.provenance import sidecar, yaml_header
from sdsim.scenario import scenario_schema
from sdsim.simulation import simulate


def run(
    scenario: ScenarioArg,
    set_: SetOpt = None,
    seed: SeedOpt = None,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="write requests.csv, steps.csv (each with a .meta.json sidecar: sdsim version, "
            "seed, units), summary.json, scenario.yaml",
        ),
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
    scn = load(scenario, set_)
    if out_dir is not None:
        check_writable(out_dir)
    prog = LazyProgress(f"simulating {scn.name}")
    try:
        res = simulate(scn, seed=seed, progress=prog, keep_records=not summary_only)
    finally:
        prog.close()
    written = "summary.json, scenario.yaml"
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        run_seed = int(res.summary["seed"])
        if not summary_only:
            for name, frame, units in (
                ("requests.csv", res.requests, REQUEST_UNITS),
                ("steps.csv", res.steps, STEP_UNITS),
            ):
                frame.to_csv(out_dir / name, index=False)
                sidecar(out_dir / name, run_seed, scenario=scn.name, units=units)
            written = "requests.csv, steps.csv (+ .meta.json), " + written
        (out_dir / "summary.json").write_text(json.dumps(res.summary, indent=2, default=str) + "\n")
        # the resolved scenario reproduces the run: it carries the seed actually used
        ran = scn if seed is None else scn.with_overrides({"seed": int(seed)})
        head = yaml_header(run_seed, "the resolved scenario of this run")
        (out_dir / "scenario.yaml").write_text(head + ran.to_yaml())
    if json_out:
        out.print_json(json.dumps(res.summary, default=str))
    else:
        print_summary(
            res.summary,
            f"{scn.name} (simulated): k={scn.spec.k}, {alpha_text(scn.acceptance)}, rate "
            f"{scn.workload.rate:g} req/s",
            notes=["mean and quantiles over the measured requests (warm-up excluded)"],
        )
        out.print(f"KV cache: {kv_capacity(scn).describe()}", highlight=False)
        if out_dir is not None:
            out.print(f"wrote {out_dir}/{written}")
    if not res.summary["stable"]:
        err.print(
            f"[yellow]warning:[/] run is not stable ({res.summary['stop_reason']}; queue growth "
            f"{fmt(res.summary['queue_growth_rps'])} req/s): the arrival rate exceeds what the "
            "server sustains, so latencies grow with the run length"
        )


def schema() -> None:
    """Print the JSON Schema of a scenario file."""
    out.print_json(json.dumps(scenario_schema()))
