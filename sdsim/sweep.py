"""Sweeps: a base scenario × a grid of dotted overrides × replications, run on any executor.

A sweep file (YAML) names a base scenario, fixed overrides (``set``), a ``grid`` (the cartesian
product of its fields' value lists), ``zip`` groups (lists of equal length that vary together, each
group one axis of the product), ``replications`` and the ``metrics`` its summary keeps::

    base: ../llama70b-tp4-a100.yaml
    set: {workload.num_requests: 600}
    grid: {spec.k: [0, 2, 4], workload.rate: [0.5, 1, 2]}
    zip: [{acceptance.alpha: [0.6, 0.8], name: [low, high]}]
    replications: 3
    common_random_numbers: [spec.k]
    metrics: [e2e_mean, e2e_p99]

Every run (point × replication) is one task. Its seed is a pure function of the point's resolved
base seed, a stable hash of its overrides (minus ``common_random_numbers`` fields, so that points
differing only in those share their random numbers) and the replication index, never of execution
order, so every executor gives the same numbers bit for bit.

Each finished run is written at once, atomically, as one parquet file under ``DIR/results/``
(named by the run's key), so a sweep killed mid-way loses at most the runs in flight and re-running
it skips every run already there. A failing run is recorded with its error and the sweep goes on.
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_METRICS",
    "KNOWN_METRICS",
    "Point",
    "RunTask",
    "SweepPlan",
    "SweepProgress",
    "SweepResult",
    "SweepSpec",
    "derive_seed",
    "execute_run",
    "finish_sweep",
    "load_sweep",
    "plan_sweep",
    "resume_state",
    "run_sweep",
]

import hashlib
import itertools
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sdsim._version import __version__
from sdsim.costs.build import build_cost_model
from sdsim.errors import ScenarioError, format_validation_error
from sdsim.executors import run_tasks
from sdsim.inputs import load_yaml
from sdsim.metrics import SUMMARY_KEYS
from sdsim.outputs import DirectoryLock, atomic_write, atomic_write_text, resolve_output
from sdsim.provenance import provenance, sidecar_path
from sdsim.scenario import Scenario, load_scenario, scenario_from_dict, scenario_hash
from sdsim.simulation import simulate
from sdsim.slo import SLO_KEYS, slo_bounds
from sdsim.steadystate import run_columns
from sdsim.sweep_store import (
    LOCK_FILE,
    META_FILE,
    RESULTS_DIR,
    canonical_json,
    column_value,
    pyarrow_modules,
    read_result,
    runs_frame,
    stamped,
    write_row,
    write_sidecar,
)
from sdsim.sweep_summary import summarize_runs

# Summary scalars a sweep may keep: the docs/design.md keys plus the simulator's diagnostics.
KNOWN_METRICS: tuple[str, ...] = (
    *(k for k in SUMMARY_KEYS if k != "seed"),
    "measured",
    "queue_delay_mean",
    "draft_acceptance_rate",
    "busy_fraction",
    "waiting_mean",
    "arrival_rate_obs",
    "queue_growth_rps",
    "steps",
    "duration_s",
    "kv_util_mean",
    "prefix_hit_rate",
    "prefill_saved_fraction",
    "prefill_tokens_requested",
    "prefill_tokens_computed",
    "prefix_evictions",
    *(f"slo_{what}_{k}" for k in SLO_KEYS for what in ("attainment", "margin")),
)

DEFAULT_METRICS: tuple[str, ...] = (
    "e2e_mean",
    "e2e_p99",
    "ttft_mean",
    "ttft_p99",
    "tpot_mean",
    "throughput_rps",
    "batch_mean",
    "tokens_per_step_mean",
    "stable",
)



class SweepSpec(BaseModel):
    """A sweep file, validated (unknown keys refused)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = ""
    description: str = ""
    base: str = Field(description="base scenario YAML, relative to the sweep file")
    set: dict[str, Any] = Field(default_factory=dict, description="fixed dotted overrides")
    grid: dict[str, list[Any]] = Field(
        default_factory=dict, description="dotted field -> values (cartesian product)"
    )
    zip: list[dict[str, list[Any]]] = Field(
        default_factory=list, description="groups of equal-length lists that vary together"
    )
    replications: int = Field(default=1, ge=1, le=10_000)
    metrics: list[str] = Field(default_factory=lambda: list(DEFAULT_METRICS), min_length=1)
    common_random_numbers: list[str] = Field(
        default_factory=list,
        description="swept fields left out of the seed: points differing only in them share "
        "random numbers (e.g. spec.k, for paired speedups)",
    )

    @field_validator("zip", mode="before")
    @classmethod
    def _one_group(cls, v: Any) -> Any:
        # `zip: {a: [..], b: [..]}` is one group; a list of mappings is several.
        return [v] if isinstance(v, dict) else v

    @field_validator("grid")
    @classmethod
    def _grid_values(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in v.items():
            if not values:
                raise ValueError(f"{key}: needs at least one value")
        return v

    @field_validator("zip")
    @classmethod
    def _zip_lengths(cls, v: list[dict[str, list[Any]]]) -> list[dict[str, list[Any]]]:
        for i, group in enumerate(v):
            if not group:
                raise ValueError(f"group {i} is empty")
            lengths = {key: len(values) for key, values in group.items()}
            if len(set(lengths.values())) != 1 or 0 in lengths.values():
                raise ValueError(
                    f"group {i}: lists must be non-empty and of equal length {lengths}"
                )
        return v

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, v: list[str]) -> list[str]:
        unknown = [m for m in v if m not in KNOWN_METRICS]
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}; allowed: {', '.join(KNOWN_METRICS)}")
        return v

    def axes(self) -> list[dict[str, list[Any]]]:
        """The product's axes: one per grid field, one per zip group."""
        return [{k: v} for k, v in self.grid.items()] + [dict(g) for g in self.zip]

    def swept_fields(self) -> list[str]:
        """Swept dotted names in file order (grid first, then zip groups)."""
        return [k for axis in self.axes() for k in axis]


@dataclass(frozen=True)
class Point:
    """One grid point: its overrides and the scenario they resolve to."""

    index: int
    overrides: dict[str, Any]
    key: str
    scenario: Scenario
    scenario_hash: str


@dataclass(frozen=True)
class RunTask:
    """One run (point × replication): everything a worker needs, as plain picklable data."""

    run_key: str
    point: int
    point_key: str
    replication: int
    seed: int
    scenario_hash: str
    scenario: dict[str, Any]
    overrides: dict[str, Any]


@dataclass(frozen=True)
class SweepPlan:
    """A resolved sweep: its points and runs, in a fixed order."""

    spec: SweepSpec
    name: str
    base: Path
    fields: list[str]
    points: list[Point]
    tasks: list[RunTask]

    def select(self, point_keys: set[str]) -> SweepPlan:
        """The same sweep restricted to some points (e.g. a quick check of a large grid)."""
        return SweepPlan(
            spec=self.spec,
            name=self.name,
            base=self.base,
            fields=self.fields,
            points=[p for p in self.points if p.key in point_keys],
            tasks=[t for t in self.tasks if t.point_key in point_keys],
        )

    def meta(self) -> dict[str, Any]:
        """What ``DIR/sweep.json`` records (all ``sdsim plot`` needs)."""
        return {
            "name": self.name,
            "description": self.spec.description,
            # run seeds derive from the base seed (derive_seed); each run's is in its row
            **provenance(self.points[0].scenario.seed if self.points else None),
            "base": str(self.base),
            "fields": self.fields,
            "axes": [list(axis) for axis in self.spec.axes()],
            "metrics": list(self.spec.metrics),
            "replications": self.spec.replications,
            "common_random_numbers": list(self.spec.common_random_numbers),
            "points": [
                {
                    "point": p.index,
                    "point_key": p.key,
                    "scenario_hash": p.scenario_hash,
                    "overrides": {k: _json_safe(v) for k, v in p.overrides.items()},
                }
                for p in self.points
            ],
            "run_keys": [t.run_key for t in self.tasks],
        }


@dataclass(frozen=True)
class SweepProgress:
    """Where a running sweep stands (passed to the progress callback after every run)."""

    total: int
    skipped: int
    done: int
    failed: int
    elapsed_s: float

    @property
    def todo(self) -> int:
        """Runs this invocation had to do (total minus those already on disk)."""
        return self.total - self.skipped

    @property
    def eta_s(self) -> float:
        """Estimated seconds left, from this invocation's pace (NaN before the first run)."""
        finished = self.done + self.failed
        if finished == 0:
            return math.nan
        return self.elapsed_s / finished * (self.todo - finished)


@dataclass
class SweepResult:
    """What :func:`run_sweep` gives back."""

    out_dir: Path
    runs: pd.DataFrame
    summary: pd.DataFrame
    skipped: int
    done: int
    failed: int
    wall_s: float
    files: list[Path] = field(default_factory=list)
    redone: list[tuple[str, str]] = field(default_factory=list)


# --------------------------------------------------------------------------- loading, planning


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and validate a sweep YAML file.

    Raises
    ------
    ScenarioError
        Missing file, invalid YAML or an invalid sweep key (named).
    """
    p = Path(path)
    if not p.is_file():
        raise ScenarioError(str(path), "sweep file not found")
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(
            str(path), f"cannot read sweep file: {exc.__class__.__name__}"
        ) from None
    data = load_yaml(text, str(path))
    if not isinstance(data, dict):
        raise ScenarioError(str(path), "a sweep file must be a mapping (base, grid, ...)")
    try:
        return SweepSpec.model_validate(data)
    except ValidationError as exc:
        raise format_validation_error(exc, model=SweepSpec) from None


def _hash_words(text: str, n: int = 4) -> tuple[int, ...]:
    digest = hashlib.sha256(text.encode()).digest()
    return tuple(int.from_bytes(digest[4 * i : 4 * i + 4], "little") for i in range(n))


def derive_seed(base_seed: int, scenario_name: str, point: dict[str, Any], replication: int) -> int:
    """The seed of one run: a pure function of (scenario, point, replication).

    Parameters
    ----------
    base_seed
        The point's resolved scenario seed.
    scenario_name
        The base scenario's name (two sweeps over different scenarios get different streams).
    point
        The point's overrides that identify it (without common-random-number fields).
    replication
        Replication index.

    Returns
    -------
    int
        A seed in [0, 2**63), from ``numpy.random.SeedSequence(base_seed, spawn_key=(hash words of
        the canonical JSON of name and point..., replication))``.
    """
    words = _hash_words(canonical_json({"scenario": scenario_name, "point": point}))
    ss = np.random.SeedSequence(int(base_seed), spawn_key=(*words, int(replication)))
    return int(ss.generate_state(1, np.uint64)[0] >> np.uint64(1))


def _json_safe(v: Any) -> Any:
    return json.loads(canonical_json(v))


def _points(spec: SweepSpec) -> Iterator[dict[str, Any]]:
    axes = spec.axes()
    columns = [
        [dict(zip(axis, vals, strict=True)) for vals in zip(*axis.values(), strict=True)]
        for axis in axes
    ]
    for combo in itertools.product(*columns):
        point: dict[str, Any] = {}
        for part in combo:
            point.update(part)
        yield point


def plan_sweep(
    spec: SweepSpec,
    sweep_path: str | Path | None = None,
    *,
    extra_set: dict[str, Any] | None = None,
    replications: int | None = None,
) -> SweepPlan:
    """Resolve every point of a sweep into a validated scenario and every run into a task.

    Parameters
    ----------
    spec
        The sweep.
    sweep_path
        The sweep file (its directory anchors ``base``); ``None``: relative to the working dir.
    extra_set
        Further fixed overrides (the CLI's ``--set``), applied after ``spec.set``.
    replications
        Replaces ``spec.replications`` when given.

    Raises
    ------
    ScenarioError
        A swept field that does not exist or a value it does not allow (naming the field and the
        point), a step-cost model that cannot be built (missing or malformed profile bundle), a
        field both fixed and swept, or a bad ``common_random_numbers`` entry.
    """
    anchor = Path(sweep_path).resolve().parent if sweep_path is not None else Path.cwd()
    base = Path(spec.base)
    base = base if base.is_absolute() else anchor / base
    if not base.is_file():
        raise ScenarioError("base", f"base scenario not found: {base}")
    fixed = {**spec.set, **(extra_set or {})}
    fields = spec.swept_fields()
    seen: set[str] = set()
    for f in fields:
        if f in seen:
            raise ScenarioError(f, "is swept twice (in the grid and a zip group, or two groups)")
        seen.add(f)
        if f == "seed":
            raise ScenarioError("grid.seed", "do not sweep the seed; use replications: N")
        if f in fixed:
            raise ScenarioError(f, "is both fixed (set / --set) and swept; drop one")
    for f in spec.common_random_numbers:
        if f not in seen:
            raise ScenarioError(
                "common_random_numbers", f"{f!r} is not a swept field (swept: {fields})"
            )
    reps = spec.replications if replications is None else int(replications)
    if reps < 1:
        raise ScenarioError("replications", f"must be >= 1 (got {reps})")
    base_scn = load_scenario(base, fixed)
    checked_costs: set[str] = set()
    points: list[Point] = []
    tasks: list[RunTask] = []
    for i, ov in enumerate(_points(spec)):
        try:
            scn = load_scenario(base, {**fixed, **ov})
        except ScenarioError as exc:
            shown = canonical_json(ov)
            shown = shown if len(shown) <= 120 else shown[:117] + "..."
            raise ScenarioError(exc.field, f"{exc.message} (sweep point {i}: {shown})") from None
        _check_costs(scn, i, ov, checked_costs)
        h = scenario_hash(scn)
        key = hashlib.sha256(canonical_json(ov).encode()).hexdigest()[:16]
        points.append(Point(index=i, overrides=ov, key=key, scenario=scn, scenario_hash=h))
        seed_point = {k: v for k, v in ov.items() if k not in spec.common_random_numbers}
        data = scn.to_dict()
        for r in range(reps):
            seed = derive_seed(scn.seed, base_scn.name, seed_point, r)
            run_key = hashlib.sha256(f"{h}:{seed}:{r}".encode()).hexdigest()[:20]
            tasks.append(
                RunTask(
                    run_key=run_key,
                    point=i,
                    point_key=key,
                    replication=r,
                    seed=seed,
                    scenario_hash=h,
                    scenario=data,
                    overrides=ov,
                )
            )
    name = spec.name or (Path(sweep_path).stem if sweep_path is not None else base_scn.name)
    # points with SLOs report goodput and attainment per SLO whatever the file's metrics say
    slo_metrics = ["goodput_rps"] if any(slo_bounds(p.scenario.slo) for p in points) else []
    for p in points:
        slo_metrics += [f"slo_attainment_{k}" for k in slo_bounds(p.scenario.slo)]
    extra = [m for m in dict.fromkeys(slo_metrics) if m not in spec.metrics]
    if extra:
        spec = spec.model_copy(update={"metrics": [*spec.metrics, *extra]})
    return SweepPlan(spec=spec, name=name, base=base, fields=fields, points=points, tasks=tasks)


def _check_costs(scn: Scenario, i: int, ov: dict[str, Any], checked: set[str]) -> None:
    """Build each distinct step-cost model of the sweep once, before any run, so that a missing or
    malformed profile bundle is bad input (exit 2) instead of every run failing."""
    data = scn.to_dict()
    key = canonical_json({f: data[f] for f in ("hardware", "target", "drafter", "costs", "spec")}
                     | {"tp": scn.server.tp})
    if key in checked:
        return
    try:
        build_cost_model(scn)
    except ScenarioError as exc:
        shown = canonical_json(ov)
        shown = shown if len(shown) <= 120 else shown[:117] + "..."
        raise ScenarioError(exc.field, f"{exc.message} (sweep point {i}: {shown})") from None
    checked.add(key)


# --------------------------------------------------------------------------- one run


def execute_run(task: RunTask) -> dict[str, Any]:
    """Simulate one run and return its result row (never raises for a failing simulation).

    The row holds the run's identity (``run_key``, ``point``, ``point_key``, ``replication``,
    ``scenario_hash``, ``seed``), the swept fields as columns, every scalar of the summary, the
    steady-state statistics of :func:`sdsim.steadystate.run_columns` (MSER-5 warm-up cut,
    ``{metric}_ss`` with its batch-means standard error), ``error`` (``None`` on success, else
    ``"ExceptionType: message"``) and ``wall_s``.
    """
    t0 = time.perf_counter()
    row: dict[str, Any] = {
        "run_key": task.run_key,
        "point": task.point,
        "point_key": task.point_key,
        "replication": task.replication,
        "scenario_hash": task.scenario_hash,
        "seed": task.seed,
        "sdsim_version": __version__,
    }
    for k, v in task.overrides.items():
        row[k] = column_value(v)
    try:
        res = simulate(scenario_from_dict(task.scenario), seed=task.seed)
        for k, v in res.summary.items():
            if k in row:
                continue
            if isinstance(v, bool | int | float | str) or v is None:
                row[k] = v
        row.update(run_columns(res.requests))
        row["error"] = None
    except Exception as exc:  # a failing run is recorded, the sweep goes on
        row["error"] = " ".join(f"{type(exc).__name__}: {exc}".split())[:2000]
    row["wall_s"] = time.perf_counter() - t0
    return row


# --------------------------------------------------------------------------- analytic


def _analytic_predict() -> Callable[[Scenario], Any]:
    """The analytic model's :func:`~sdsim.analytic.prediction.predict`, or a ScenarioError saying
    why it cannot be used."""
    try:
        # imported on demand: the model loads scipy.stats (about a second), which a sweep without
        # --with-analytic never needs
        from sdsim.analytic.prediction import predict
    except ImportError as exc:
        raise ScenarioError(
            "--with-analytic",
            f"the analytic model (sdsim.analytic) is not available in this installation ({exc})",
        ) from None
    return predict


def analytic_table(plan: SweepPlan) -> pd.DataFrame:
    """The analytic prediction of every point's metrics (one row per point).

    Columns ``point_key``, ``M_analytic`` for every sweep metric the prediction's ``summary``
    holds, and ``analytic_error`` (``None`` unless the prediction failed for that point).
    """
    predict = _analytic_predict()
    rows = []
    for p in plan.points:
        row: dict[str, Any] = {"point_key": p.key, "analytic_error": None}
        try:
            summ = predict(p.scenario).summary
            for m in plan.spec.metrics:
                v = summ.get(m)
                row[f"{m}_analytic"] = float(v) if isinstance(v, int | float) else math.nan
        except Exception as exc:  # one point's model failure must not hide the others
            row["analytic_error"] = f"{type(exc).__name__}: {exc}"
            for m in plan.spec.metrics:
                row[f"{m}_analytic"] = math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def run_sweep(
    plan: SweepPlan,
    out_dir: str | Path,
    *,
    workers: int = 1,
    dask: str | None = None,
    with_analytic: bool = False,
    progress: Callable[[SweepProgress], None] | None = None,
) -> SweepResult:
    """Run (or resume) a sweep, writing each finished run at once under ``out_dir``.

    Parameters
    ----------
    plan
        From :func:`plan_sweep`.
    out_dir
        Output directory: ``results/`` (one parquet file per run), ``sweep.json`` (the plan),
        ``summary.parquet`` and ``summary.csv`` (replications aggregated), ``failures.csv``.
    workers
        Local worker processes; 1 runs in this process. With ``dask="local"`` the number of
        LocalCluster workers.
    dask
        ``None`` (local), ``"local"`` (start a LocalCluster) or a scheduler address.
    with_analytic
        Add the analytic prediction beside each metric (needs :mod:`sdsim.analytic`).
    progress
        Called after every finished run.

    Returns
    -------
    SweepResult

    Raises
    ------
    ScenarioError
        Bad worker count, unusable Dask address, analytic model unavailable.
    """
    if workers < 1:
        raise ScenarioError("--workers", f"must be >= 1 (got {workers})")
    if with_analytic:
        _analytic_predict()  # fail before any simulation
    out = resolve_output(out_dir, "--out")
    with DirectoryLock(out, LOCK_FILE):
        return _run_locked(plan, out, workers, dask, with_analytic, progress)


def resume_state(plan: SweepPlan, out: Path) -> tuple[set[str], list[tuple[str, str]]]:
    """Which of a plan's runs are finished on disk, after checking every result file there.

    A result file is trusted when :func:`~sdsim.sweep_store.read_result` accepts it (one row, its
    checksum, its run key) and its row is the plan's run (same point, scenario hash, seed,
    replication). Any other file of a planned run is deleted, so that the run is redone.

    Returns
    -------
    finished, redone
        Run keys finished without error; ``(run_key, reason)`` of the deleted files.
    """
    results = out / RESULTS_DIR
    finished: set[str] = set()
    redone: list[tuple[str, str]] = []
    for t in plan.tasks:
        f = results / f"{t.run_key}.parquet"
        if not f.exists():
            continue
        got = read_result(f)
        if isinstance(got, dict):
            ident = (got["point_key"], got["scenario_hash"], got["seed"], got["replication"])
            if ident != (t.point_key, t.scenario_hash, t.seed, t.replication):
                got = "belongs to another run"
        if isinstance(got, str):
            redone.append((t.run_key, got))
            f.unlink(missing_ok=True)
        elif got["error"] is None:
            finished.add(t.run_key)
    return finished, redone


def _run_locked(
    plan: SweepPlan,
    out: Path,
    workers: int,
    dask: str | None,
    with_analytic: bool,
    progress: Callable[[SweepProgress], None] | None,
) -> SweepResult:
    results = out / RESULTS_DIR
    results.mkdir(parents=True, exist_ok=True)
    for stale in results.glob(".*.tmp*"):  # partial writes of a killed run
        stale.unlink(missing_ok=True)
    atomic_write_text(out / META_FILE, json.dumps(plan.meta(), indent=1) + "\n")
    finished, redone = resume_state(plan, out)
    todo = [t for t in plan.tasks if t.run_key not in finished]
    skipped = len(plan.tasks) - len(todo)
    done = failed = 0
    t0 = time.perf_counter()

    def record(row: dict[str, Any]) -> None:
        nonlocal done, failed
        write_row(results, row)
        if row["error"] is None:
            done += 1
        else:
            failed += 1
        if progress is not None:
            progress(
                SweepProgress(len(plan.tasks), skipped, done, failed, time.perf_counter() - t0)
            )

    if progress is not None:
        progress(SweepProgress(len(plan.tasks), skipped, 0, 0, 0.0))
    for task, fut in run_tasks(execute_run, todo, workers=workers, dask=dask):
        try:
            row = fut.result()
        except Exception as exc:  # worker died, unpicklable result, ...
            row = _failed_row(task, exc)
        record(row)
    wall = time.perf_counter() - t0
    res = finish_sweep(plan, out, with_analytic, skipped, done, failed, wall)
    res.redone = redone
    return res


def _failed_row(task: RunTask, exc: BaseException) -> dict[str, Any]:
    row: dict[str, Any] = {
        "run_key": task.run_key,
        "point": task.point,
        "point_key": task.point_key,
        "replication": task.replication,
        "scenario_hash": task.scenario_hash,
        "seed": task.seed,
        "sdsim_version": __version__,
    }
    row.update({k: column_value(v) for k, v in task.overrides.items()})
    row["error"] = " ".join(f"{type(exc).__name__}: {exc}".split())[:2000]
    row["wall_s"] = math.nan
    return row


def finish_sweep(
    plan: SweepPlan,
    out: Path,
    with_analytic: bool,
    skipped: int,
    done: int,
    failed: int,
    wall_s: float,
) -> SweepResult:
    """Aggregate the plan's runs into ``summary.parquet``/``summary.csv`` (and failures.csv).

    The summary is built from the plan's own result files, each checked by
    :func:`~sdsim.sweep_store.read_result` (never from ``sweep.json`` read back, which describes
    whichever sweep wrote it last).
    """
    _, pq = pyarrow_modules()
    meta = plan.meta()
    rows = [read_result(out / RESULTS_DIR / f"{t.run_key}.parquet") for t in plan.tasks]
    runs = runs_frame([r for r in rows if isinstance(r, dict)])
    analytic = analytic_table(plan) if with_analytic else None
    if analytic is not None:
        import pyarrow as pa

        atable = stamped(pa.Table.from_pandas(analytic, preserve_index=False), meta.get("seed"))
        atomic_write(out / "analytic.parquet", lambda p: pq.write_table(atable, p))
    summary = summarize_runs(runs, meta, analytic)
    files = [out / "summary.parquet", out / "summary.csv"]
    import pyarrow as pa

    table = stamped(pa.Table.from_pandas(summary, preserve_index=False), meta.get("seed"))
    atomic_write(files[0], lambda p: pq.write_table(table, p))
    atomic_write_text(files[1], summary.to_csv(index=False))
    write_sidecar(files[1], meta.get("seed"), sweep=plan.name, seeds="per run in results/*.parquet")
    fail_path = out / "failures.csv"
    failures = runs[runs["error"].notna()] if len(runs) else runs
    if len(failures):
        cols = ["run_key", "point", "replication", "seed", *plan.fields, "error"]
        atomic_write_text(fail_path, failures[cols].to_csv(index=False))
        write_sidecar(fail_path, meta.get("seed"), sweep=plan.name, seeds="per run: column seed")
        files.append(fail_path)
    else:
        fail_path.unlink(missing_ok=True)
        sidecar_path(fail_path).unlink(missing_ok=True)
    return SweepResult(
        out_dir=out,
        runs=runs,
        summary=summary,
        skipped=skipped,
        done=done,
        failed=failed,
        wall_s=wall_s,
        files=files,
    )
