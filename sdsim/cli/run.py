"""`sdsim run` (simulate a scenario) and `sdsim schema` (the scenario file's JSON Schema)."""

from __future__ import annotations

__all__ = ["run", "schema"]

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from sdsim.cli.app import (
    LazyProgress,
    ScenarioArg,
    SeedOpt,
    SetOpt,
    check_records,
    err,
    load,
    out,
    print_summary,
    summary_json,
    summary_notes,
)
from sdsim.memory import kv_capacity
from sdsim.outputs import output_dir, write_run
from sdsim.scenario import scenario_schema
from sdsim.simulation import simulate


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
    scn = load(scenario, set_)
    check_records(scn, keep_records=not summary_only)
    names = ["summary.json", "scenario.yaml"]
    if not summary_only:
        names = ["requests.csv", "steps.csv", *names]
    dest = output_dir(out_dir, names) if out_dir is not None else None
    prog = LazyProgress(f"simulating {scn.name}")
    try:
        res = simulate(scn, seed=seed, progress=prog, keep_records=not summary_only)
    finally:
        prog.close()
    if dest is not None:
        # the resolved scenario reproduces the run: it carries the seed actually used
        ran = scn if seed is None else scn.with_overrides({"seed": int(seed)})
        files: dict[str, Callable[[Path], Any]] = {}
        if not summary_only:
            files["requests.csv"] = lambda p: res.requests.to_csv(p, index=False)
            files["steps.csv"] = lambda p: res.steps.to_csv(p, index=False)
        files["summary.json"] = lambda p: p.write_text(summary_json(res.summary))
        files["scenario.yaml"] = lambda p: p.write_text(ran.to_yaml())
        write_run(dest, files, "run")
    if json_out:
        out.print_json(summary_json(res.summary))
    else:
        print_summary(res.summary, f"{scn.name}: k={scn.spec.k}, rate={scn.workload.rate:g} req/s")
        out.print(f"KV cache: {kv_capacity(scn).describe()}", highlight=False, soft_wrap=True)
        if out_dir is not None:
            out.print(f"wrote {out_dir}/{', '.join(names)}", soft_wrap=True)
    for note in summary_notes(res.summary):
        err.print(note, markup=False, highlight=False, soft_wrap=True)


def schema() -> None:
    """Print the JSON Schema of a scenario file."""
    out.print_json(json.dumps(scenario_schema()))
