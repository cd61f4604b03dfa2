"""`sdsim run` (simulate a scenario) and `sdsim schema` (the scenario file's JSON Schema)."""

from __future__ import annotations

__all__ = ["run", "schema"]

import json
from collections.abc import Callable
from functools import partial
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
from sdsim.cli.tables import alpha_text
from sdsim.labels import REQUEST_UNITS, STEP_UNITS
from sdsim.memory import kv_capacity
from sdsim.outputs import output_dir, sidecar_file, write_run
from sdsim.provenance import yaml_header
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
    check_records(scn, keep_records=not summary_only)
    names = ["summary.json", "scenario.yaml"]
    if not summary_only:
        names = [
            "requests.csv",
            "requests.csv.meta.json",
            "steps.csv",
            "steps.csv.meta.json",
            *names,
        ]
    dest = output_dir(out_dir, names) if out_dir is not None else None
    prog = LazyProgress(f"simulating {scn.name}")
    try:
        res = simulate(scn, seed=seed, progress=prog, keep_records=not summary_only)
    finally:
        prog.close()
    if dest is not None:
        run_seed = int(res.summary["seed"])
        # the resolved scenario reproduces the run: it carries the seed actually used
        ran = scn if seed is None else scn.with_overrides({"seed": int(seed)})
        head = yaml_header(run_seed, "the resolved scenario of this run")
        files: dict[str, Callable[[Path], Any]] = {}
        if not summary_only:
            for name, frame, units in (
                ("requests.csv", res.requests, REQUEST_UNITS),
                ("steps.csv", res.steps, STEP_UNITS),
            ):
                files[name] = partial(_to_csv, frame)
                side, write_side = sidecar_file(name, run_seed, scenario=scn.name, units=units)
                files[side] = write_side
        files["summary.json"] = lambda p: p.write_text(summary_json(res.summary))
        files["scenario.yaml"] = lambda p: p.write_text(head + ran.to_yaml())
        write_run(dest, files, "run")
    if json_out:
        out.print_json(summary_json(res.summary))
    else:
        print_summary(
            res.summary,
            f"{scn.name} (simulated): k={scn.spec.k}, {alpha_text(scn.acceptance)}, rate "
            f"{scn.workload.rate:g} req/s",
            notes=["mean and quantiles over the measured requests (warm-up excluded)"],
        )
        out.print(f"KV cache: {kv_capacity(scn).describe()}", highlight=False)
        if out_dir is not None:
            shown = "summary.json, scenario.yaml"
            if not summary_only:
                shown = "requests.csv, steps.csv (+ .meta.json), " + shown
            out.print(f"wrote {out_dir}/{shown}")
    for note in summary_notes(res.summary):
        err.print(note, markup=False, highlight=False, soft_wrap=True)


def _to_csv(frame: Any, path: Path) -> None:
    frame.to_csv(path, index=False)


def schema() -> None:
    """Print the JSON Schema of a scenario file."""
    out.print_json(json.dumps(scenario_schema()))
