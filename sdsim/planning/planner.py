"""`plan`: the cheapest configuration that serves a rate within latency SLOs.

1. **Screen** (analytic, :mod:`~sdsim.planning.screen`): every configuration of the search space
   gets a status from the closed-form model; per group (configurations that differ only in
   replicas) the fewest replicas that meet the SLOs, its *frontier*.
2. **Rank** the groups' frontiers by the objective: cost per million output tokens (GPUs x
   GPU-hour price / output tokens per hour; at a fixed rate the same order as the hourly bill),
   or GPUs; ties go to the larger smallest SLO margin.
3. **Confirm** (simulation, :mod:`~sdsim.planning.confirm`), best-ranked groups first:
   replicated runs walking each group's replica count from the model's frontier (down while
   the SLOs hold, up while they do not) until the simulation's own frontier is bracketed (its
   count meets the SLOs, the one below does not). The simulated cost replaces the model's. Any
   group the model prices below the best confirmed cost is confirmed too, in the order of its
   expected cost (the model's frontier moved by the corrections the simulation made so far),
   so a group the model mis-prices cannot win, or lose, on the model's word alone; except that
   when two or more confirmed groups on the same GPU and tp all needed more replicas than the
   model said, a group there whose frontier moved by the smallest such correction cannot beat
   the best is left unsimulated, and its verdict says why. At most ``max_confirm`` groups are
   simulated; those left over that the model prices below the choice are reported.

The chosen configuration is the cheapest confirmed frontier.
"""

from __future__ import annotations

__all__ = ["PlanResult", "plan"]

import hashlib
import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from sdsim.errors import ScenarioError
from sdsim.executors import run_tasks
from sdsim.planning.confirm import SimVerdict, config_key, simulate_configs
from sdsim.planning.prices import DEFAULT_PRICES, cost_per_million_tokens, gpu_name
from sdsim.planning.screen import ScreenTask, screen_chunk
from sdsim.planning.space import REPLICAS, Group, SearchSpace
from sdsim.scenario import Scenario
from sdsim.slo import slo_bounds

OBJECTIVES = ("cost", "gpus")
# groups per executor task: big enough that a task outweighs its dispatch, small enough to share
CHUNK_GROUPS = 16


@dataclass
class PlanResult:
    """What :func:`plan` found.

    Attributes
    ----------
    rate
        Total arrival rate planned for, req/s.
    bounds
        SLO metric -> bound, seconds.
    screen
        One row per configuration of the space: the searched fields, ``replicas``, ``gpus``,
        ``gpu``, ``status`` (invalid / saturated / misses / meets), ``evaluated``, ``reason``,
        the model's statistics where priced, ``cost_per_mtok``.
    candidates
        One :class:`Candidate` per group with a model frontier, best first (simulated
        frontiers where confirmed); :meth:`table` flattens them.
    best
        The chosen :class:`Candidate`, ``None`` when no configuration meets the SLOs.
    best_scenario
        The base scenario with the chosen overrides (and the rate and SLOs) applied.
    verdicts
        Every simulated configuration's :class:`~sdsim.planning.confirm.SimVerdict`.
    evaluations
        Model predictions the screen made (the rest of the space was decided by saturation
        or monotonicity).
    fields
        The searched fields.
    unconfirmed
        Groups the model ranks cheaper than the chosen one that were not simulated because
        ``max_confirm`` groups already were (raise it to settle them).
    """

    rate: float
    bounds: dict[str, float]
    screen: pd.DataFrame
    candidates: list[Candidate]
    best: Candidate | None
    best_scenario: Scenario | None
    verdicts: dict[str, SimVerdict] = field(default_factory=dict)
    evaluations: int = 0
    fields: list[str] = field(default_factory=list)
    unconfirmed: list[Candidate] = field(default_factory=list)

    def table(self) -> pd.DataFrame:
        """The ranked candidates as a table (what ``candidates.csv`` holds)."""
        return pd.DataFrame([c.row(self.bounds, self.fields) for c in self.candidates])

    def to_json(self) -> dict[str, Any]:
        """``{"best": {"overrides", "gpus", "metrics"}, "candidates": [...], ...}`` (what
        ``sdsim plan --json`` prints)."""
        counts = self.screen["status"].value_counts().to_dict() if len(self.screen) else {}
        return _jsonable(
            {
                "best": self.best.to_json(self.bounds) if self.best is not None else None,
                "candidates": [c.to_json(self.bounds) for c in self.candidates],
                "unconfirmed_cheaper_by_model": [c.to_json(self.bounds) for c in self.unconfirmed],
                "rate": self.rate,
                "slo": self.bounds,
                "screen": {
                    "configurations": len(self.screen),
                    "model_evaluations": self.evaluations,
                    **{str(k): int(v) for k, v in counts.items()},
                },
            }
        )


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, str):  # numpy scalars
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    return obj


def _hash(obj: Any) -> str:
    return hashlib.sha256(
        json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    ).hexdigest()[:16]


# --------------------------------------------------------------------------- screening


def _run_screen(
    base: Scenario,
    space: SearchSpace,
    bounds: dict[str, float],
    *,
    workers: int,
    dask: str | None,
    out_dir: Path | None,
    progress: Callable[[int, int], None] | None,
) -> list[dict[str, Any]]:
    """Screen every group (in chunks, on the executor; chunks already on disk are read)."""
    groups = list(space.groups())
    data = base.to_dict()
    chunks: list[ScreenTask] = []
    for i in range(0, len(groups), CHUNK_GROUPS):
        part = groups[i : i + CHUNK_GROUPS]
        gl = [(g.key, g.overrides) for g in part]
        key = _hash({"base": data, "groups": gl, "replicas": space.replicas, "slo": bounds})
        chunks.append(ScreenTask(data, gl, space.replicas, bounds, key))
    store = out_dir / "screen" if out_dir is not None else None
    rows: list[dict[str, Any]] = []
    todo: list[ScreenTask] = []
    for c in chunks:
        f = store / f"{c.key}.json" if store is not None else None
        if f is not None and f.is_file():
            rows.extend(json.loads(f.read_text()))
        else:
            todo.append(c)
    done = len(chunks) - len(todo)
    total = len(chunks)
    if progress is not None:
        progress(done, total)

    def record(task: ScreenTask, got: list[dict[str, Any]]) -> None:
        nonlocal done
        rows.extend(got)
        if store is not None:
            store.mkdir(parents=True, exist_ok=True)
            tmp = store / f".{task.key}.{os.getpid()}.tmp"
            tmp.write_text(json.dumps(got, default=str))
            os.replace(tmp, store / f"{task.key}.json")
        done += 1
        if progress is not None:
            progress(done, total)

    for task, fut in run_tasks(screen_chunk, todo, workers=workers, dask=dask):
        record(task, fut.result())
    return rows


def _screen_frame(
    rows: list[dict[str, Any]],
    space: SearchSpace,
    groups: dict[str, Group],
    prices: Mapping[str, float],
    base: Scenario,
) -> pd.DataFrame:
    """Rows to a frame with the searched fields as columns, GPUs and the model's cost."""
    tp_of: dict[str, int] = {}
    gpu_of: dict[str, str] = {}
    for key, g in groups.items():
        tp = g.overrides.get("server.tp", base.server.tp)
        hw = g.overrides.get("hardware", base.hardware)
        tp_of[key] = int(tp)
        gpu_of[key] = (
            hw.strip().lower().replace("_", "-")
            if isinstance(hw, str)
            else (
                gpu_name(base.model_copy(update={"hardware": base.hardware}))
                if not isinstance(hw, dict)
                else str(hw.get("name", "custom"))
            )
        )
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    for f in space.group_fields:
        df[f] = [_cell(ov.get(f)) for ov in df["overrides"]]
    df["tp"] = df["group"].map(tp_of)
    df["gpu"] = df["group"].map(gpu_of)
    df["gpus"] = df["replicas"] * df["tp"]
    price = df["gpu"].map(lambda g: prices.get(g, math.nan))
    if "output_tps" not in df:
        df["output_tps"] = math.nan
    df["cost_per_mtok"] = [
        cost_per_million_tokens(int(n), float(p), float(t)) if s == "meets" else math.nan
        for n, p, t, s in zip(df["gpus"], price, df["output_tps"], df["status"], strict=True)
    ]
    order = {g.key: g.index for g in groups.values()}
    df["group_index"] = df["group"].map(order)
    return df.sort_values(["group_index", "replicas"], kind="stable").reset_index(drop=True)


def _cell(v: Any) -> Any:
    if v is None or isinstance(v, bool | int | float | str):
        return v
    return json.dumps(v, sort_keys=True, separators=(",", ":"))


# --------------------------------------------------------------------------- the plan


def _check_prices(space: SearchSpace, base: Scenario, prices: Mapping[str, float]) -> None:
    hws = space.fields.get("hardware", [base.hardware])
    for hw in hws:
        name = (
            hw.strip().lower().replace("_", "-")
            if isinstance(hw, str)
            else (hw.name if hasattr(hw, "name") else str(dict(hw).get("name", "custom")))
        )
        if name not in prices:
            raise ScenarioError(
                "--price",
                f"no GPU-hour price for {name!r}; give --price {name}=USD_PER_GPU_HOUR "
                f"(known: {', '.join(sorted(prices))})",
            )


def plan(
    base: Scenario,
    rate: float,
    search: dict[str, list[Any]],
    slo: Mapping[str, float] | None = None,
    *,
    prices: Mapping[str, float] | None = None,
    objective: str = "cost",
    confirm: int = 3,
    replications: int = 3,
    max_confirm: int = 12,
    workers: int = 1,
    dask: str | None = None,
    out_dir: str | Path | None = None,
    screen_progress: Callable[[int, int], None] | None = None,
    sim_progress: Callable[[Any], None] | None = None,
) -> PlanResult:
    """Find the cheapest configuration of ``search`` that serves ``rate`` within the SLOs.

    Parameters
    ----------
    base
        The scenario the search overrides (workload, models, costs, ...).
    rate
        Total arrival rate, req/s (replaces ``workload.rate``).
    search
        Dotted field -> values (:func:`~sdsim.planning.space.parse_search_options`);
        ``server.replicas`` is the load axis.
    slo
        SLO metric -> bound (seconds); merged over the scenario's ``slo`` section.
    prices
        GPU name -> USD per GPU-hour (default :data:`~sdsim.planning.prices.DEFAULT_PRICES`).
    objective
        ``cost`` (USD per million output tokens) or ``gpus``.
    confirm
        Groups simulated at least (best-ranked first); 0 skips simulation (the model's
        choice).
    replications
        Simulated runs per configuration.
    max_confirm
        Most groups simulated in all.
    workers, dask
        Executor for the screen and the simulations (:func:`sdsim.executors.open_executor`).
    out_dir
        Keeps the screen's chunks and the simulations (resumed when present).
    screen_progress, sim_progress
        Progress callbacks: ``(chunks done, chunks)`` and the sweep's
        :class:`~sdsim.sweep.SweepProgress`.

    Raises
    ------
    ScenarioError
        No SLO, a bad rate, objective, field or value, a GPU without a price.
    """
    if not (math.isfinite(rate) and rate > 0):
        raise ScenarioError("--rate", f"must be a positive number of requests/s, got {rate}")
    if objective not in OBJECTIVES:
        raise ScenarioError("--objective", f"must be one of {', '.join(OBJECTIVES)}")
    if confirm < 0 or replications < 1 or max_confirm < confirm:
        raise ScenarioError(
            "--confirm", "needs confirm >= 0, replications >= 1, max_confirm >= confirm"
        )
    scn = base.with_overrides(
        {"workload.rate": float(rate), **{f"slo.{k}": v for k, v in (slo or {}).items()}}
    )
    bounds = slo_bounds(scn.slo)
    if not bounds:
        raise ScenarioError("--slo", "plan needs at least one SLO (--slo METRIC=SECONDS)")
    table = dict(prices if prices is not None else DEFAULT_PRICES)
    space = SearchSpace.from_options(scn, search)
    if objective == "cost":
        _check_prices(space, scn, table)
    out = Path(out_dir) if out_dir is not None else None
    groups = {g.key: g for g in space.groups()}
    rows = _run_screen(
        scn, space, bounds, workers=workers, dask=dask, out_dir=out, progress=screen_progress
    )
    screen = _screen_frame(rows, space, groups, table, scn)
    evaluations = int(screen["evaluated"].sum()) if len(screen) else 0
    cands = _frontiers(screen, bounds, table)
    _rank(cands, bounds, objective)
    verdicts: dict[str, SimVerdict] = {}
    unconfirmed: list[Candidate] = []
    if confirm > 0 and cands:
        unconfirmed = _confirm(
            scn,
            cands,
            screen,
            bounds,
            objective,
            confirm,
            max_confirm,
            replications,
            workers,
            dask,
            out,
            sim_progress,
            verdicts,
        )
    best, best_scn = _best(scn, cands, bounds, confirm > 0)
    return PlanResult(
        rate=float(rate),
        bounds=bounds,
        screen=screen,
        candidates=cands,
        best=best,
        best_scenario=best_scn,
        verdicts=verdicts,
        evaluations=evaluations,
        fields=list(space.fields),
        unconfirmed=unconfirmed,
    )


def _min_margin(margins: Mapping[str, float]) -> float:
    vals = [float(v) for v in margins.values() if not math.isnan(float(v))]
    return min(vals) if vals else math.nan


@dataclass
class Candidate:
    """One group's frontier: the model's, and the simulation's once confirmed.

    Attributes
    ----------
    group, overrides, gpu, tp
        The group (its key, its overrides without replicas, its GPU name, its tensor
        parallelism).
    replicas_model, model
        The model's frontier and its statistics there (``{metric}``,
        ``slo_margin_{metric}`` per SLO, ``goodput_rps``).
    output_tps
        Output tokens per second offered at the planned rate (rate x mean output).
    price
        USD per GPU-hour (NaN when unknown).
    replicas, sim
        The simulation's frontier and its statistics there (``{metric}`` as ``(mean, low,
        high)``, ``one_fewer`` the statistics one replica count below); ``None`` / empty
        until confirmed.
    verdict
        ``not simulated``, ``confirmed``, ``needs N replicas (model optimistic)``, ``N
        replicas suffice (model pessimistic)`` or ``no replica count meets the SLOs``.
    """

    group: str
    overrides: dict[str, Any]
    gpu: str
    tp: int
    replicas_model: int
    model: dict[str, float]
    output_tps: float
    price: float
    replicas: int | None = None
    sim: dict[str, Any] = field(default_factory=dict)
    verdict: str = "not simulated"
    rank: int = 0

    @property
    def gpus_model(self) -> int:
        """GPUs of the model's frontier."""
        return self.replicas_model * self.tp

    @property
    def gpus(self) -> int:
        """GPUs of the simulated frontier when known, else the model's."""
        return (self.replicas if self.replicas is not None else self.replicas_model) * self.tp

    def cost_at(self, gpus: float) -> float:
        """USD per million output tokens with ``gpus`` GPUs at the planned rate."""
        return cost_per_million_tokens(gpus, self.price, self.output_tps)

    @property
    def cost(self) -> float:
        """Cost of :attr:`gpus`."""
        return self.cost_at(self.gpus)

    def min_margin(self, bounds: Mapping[str, float]) -> float:
        """The smallest SLO margin: simulated when confirmed, else the model's."""
        src = self.sim if self.replicas is not None else self.model
        return _min_margin({k: src[f"slo_margin_{k}"] for k in bounds})

    def row(self, bounds: Mapping[str, float], fields: list[str]) -> dict[str, Any]:
        """A flat table row (what ``candidates.csv`` holds)."""
        out: dict[str, Any] = {"rank": self.rank}
        out.update({f: _cell(self.overrides.get(f)) for f in fields if f != REPLICAS})
        out.update(
            gpu=self.gpu,
            tp=self.tp,
            replicas_model=self.replicas_model,
            gpus_model=self.gpus_model,
            cost_model=self.cost_at(self.gpus_model),
            replicas=self.replicas,
            gpus=self.gpus,
            cost_per_mtok=self.cost,
            verdict=self.verdict,
        )
        gpg = self.model.get("goodput_rps", math.nan) / self.gpus_model
        out["model_goodput_per_gpu"] = gpg
        for k in bounds:
            out[f"model_{k}"] = self.model[k]
            out[f"model_slo_margin_{k}"] = self.model[f"slo_margin_{k}"]
        if self.replicas is not None:
            for k in bounds:
                mean, lo, hi = self.sim[k]
                out[f"sim_{k}"], out[f"sim_{k}_ci_low"], out[f"sim_{k}_ci_high"] = mean, lo, hi
                out[f"sim_slo_margin_{k}"] = self.sim[f"slo_margin_{k}"]
                out[f"sim_one_fewer_{k}"] = self.sim.get("one_fewer", {}).get(k, math.nan)
            out["sim_goodput_per_gpu"] = self.sim["goodput_rps"][0] / self.gpus
            out["sim_confident"] = self.sim["confident"]
            out["sim_one_fewer_meets"] = self.sim.get("one_fewer_meets")
        return out

    def to_json(self, bounds: Mapping[str, float]) -> dict[str, Any]:
        """``{"overrides": ..., "gpus": N, "metrics": {...}}`` (the plan's JSON shape)."""
        ov = {**self.overrides, REPLICAS: self.replicas or self.replicas_model}
        metrics: dict[str, Any] = {}
        for k in bounds:
            metrics[f"model_{k}"] = self.model[k]
            if self.replicas is not None:
                mean, lo, hi = self.sim[k]
                metrics[k] = mean
                metrics[f"{k}_ci"] = [lo, hi]
                metrics[f"slo_margin_{k}"] = self.sim[f"slo_margin_{k}"]
            else:
                metrics[f"slo_margin_{k}"] = self.model[f"slo_margin_{k}"]
        simulated = self.replicas is not None
        good = self.sim["goodput_rps"][0] if simulated else self.model.get("goodput_rps", math.nan)
        metrics["goodput_per_gpu"] = good / self.gpus
        metrics["cost_per_mtok"] = self.cost
        metrics["source"] = "simulation" if simulated else "model"
        return {
            "rank": self.rank,
            "overrides": ov,
            "gpus": self.gpus,
            "gpu": self.gpu,
            "verdict": self.verdict,
            "metrics": metrics,
        }


def _frontiers(
    screen: pd.DataFrame, bounds: dict[str, float], prices: Mapping[str, float]
) -> list[Candidate]:
    """Per group its model frontier (fewest replicas meeting the SLOs)."""
    if screen.empty:
        return []
    meets = screen[screen["status"] == "meets"]
    first = meets.sort_values("replicas").groupby("group", sort=False).head(1)
    out = []
    for rec in first.to_dict("records"):
        model = {k: float(rec[k]) for k in bounds}
        model.update({f"slo_margin_{k}": float(rec[f"slo_margin_{k}"]) for k in bounds})
        model["goodput_rps"] = float(rec.get("goodput_rps", math.nan))
        out.append(
            Candidate(
                group=str(rec["group"]),
                overrides=dict(rec["overrides"]),
                gpu=str(rec["gpu"]),
                tp=int(rec["tp"]),
                replicas_model=int(rec["replicas"]),
                model=model,
                output_tps=float(rec["output_tps"]),
                price=float(prices.get(str(rec["gpu"]), math.nan)),
            )
        )
    return out


def _rank(cands: list[Candidate], bounds: Mapping[str, float], objective: str) -> None:
    """Order in place: groups with a simulated frontier first, then those only the model
    priced, then those the simulation ruled out; within each by the objective, then the larger
    smallest margin. Writes ``rank``."""

    def key(c: Candidate) -> tuple[int, float, float, float]:
        o1, o2 = (c.cost, float(c.gpus)) if objective == "cost" else (float(c.gpus), c.cost)
        m = c.min_margin(bounds)
        tier = 2 if c.verdict == _NONE else (0 if c.replicas is not None else 1)
        return (tier, o1, o2, -m if not math.isnan(m) else math.inf)

    cands.sort(key=key)
    for i, c in enumerate(cands, 1):
        c.rank = i


# --------------------------------------------------------------------------- confirmation

# replica counts above the model's frontier the walk tries before it gives a group up
MAX_STEPS_UP = 3
_NONE = "no replica count meets the SLOs"


def _confirm(
    scn: Scenario,
    cands: list[Candidate],
    screen: pd.DataFrame,
    bounds: dict[str, float],
    objective: str,
    confirm: int,
    max_confirm: int,
    replications: int,
    workers: int,
    dask: str | None,
    out: Path | None,
    progress: Callable[[Any], None] | None,
    verdicts: dict[str, SimVerdict],
) -> list[Candidate]:
    """Simulate group frontiers until the cheapest confirmed one is known (see the module
    docstring); fills each confirmed candidate's simulation fields and re-ranks.

    Each group's walk starts at the model's frontier and moves one replica count at a time
    (down while the simulation meets the SLOs, up while it misses) until its own frontier is
    bracketed, or ``MAX_STEPS_UP`` counts above the model's all miss. Groups are confirmed in
    the order of their *expected* objective: the model's frontier shifted by the mean
    correction the simulation made to groups confirmed so far (of the same GPU and tp when
    there are any), so that a model that is optimistic for every group does not send the
    walk through every group the model ranks first.

    Returns
    -------
    list of Candidate
        Groups the model ranks cheaper than the chosen one that were left unconfirmed because
        ``max_confirm`` groups were simulated.
    """
    reps = sorted(int(n) for n in screen["replicas"].unique())
    status = {
        (str(g), int(n)): str(s)
        for g, n, s in zip(screen["group"], screen["replicas"], screen["status"], strict=True)
    }
    tested: dict[str, dict[int, bool]] = {}
    resolved: dict[str, int | None] = {}
    by_group = {c.group: c for c in cands}

    def cfg(c: Candidate, i: int) -> dict[str, Any]:
        return {**c.overrides, REPLICAS: reps[i]}

    def blocked(c: Candidate, i: int) -> bool:  # the model rules it out: no point simulating
        return status.get((c.group, reps[i])) in ("saturated", "invalid")

    def needed(c: Candidate) -> list[int]:
        t = tested.setdefault(c.group, {})
        f = reps.index(c.replicas_model)
        if not t:
            return [f]
        meeting = sorted(i for i, ok in t.items() if ok)
        if not meeting:
            top = max(t)
            if top + 1 < len(reps) and top + 1 - f <= MAX_STEPS_UP:
                return [top + 1]
            resolved[c.group] = None
            return []
        m = meeting[0]
        if m == 0 or t.get(m - 1) is False or blocked(c, m - 1):
            resolved[c.group] = m
            return []
        return [m - 1]

    def objective_of(c: Candidate, gpus: float) -> float:
        return c.cost_at(gpus) if objective == "cost" else gpus

    def expected(c: Candidate) -> float:
        """The objective at the model's frontier moved by the simulation's mean correction."""
        done = [d for d in cands if resolved.get(d.group) is not None]
        same = [d for d in done if (d.gpu, d.tp) == (c.gpu, c.tp)] or done
        if not same:
            return objective_of(c, c.gpus_model)
        shift = sum((d.replicas or 0) - d.replicas_model for d in same) / len(same)
        return objective_of(c, max(c.replicas_model + shift, 1) * c.tp)

    queue = [c.group for c in cands[:confirm]]
    while True:
        active = [by_group[g] for g in queue if g not in resolved]
        while active:
            want = {c.group: needed(c) for c in active}
            configs = [cfg(by_group[g], i) for g, idx in want.items() for i in idx]
            if configs:
                got = simulate_configs(
                    scn, configs, bounds, replications=replications, out_dir=out,
                    workers=workers, dask=dask, progress=progress,
                )
                verdicts.update(got)
                for g, idx in want.items():
                    for i in idx:
                        tested[g][i] = got[config_key(cfg(by_group[g], i))].meets
            active = [c for c in active if c.group not in resolved]
        for g in queue:
            c = by_group[g]
            if c.verdict == "not simulated":
                _fill_sim(c, resolved[g], reps, tested[g], verdicts, bounds, cfg)
        done = [c for c in cands if resolved.get(c.group) is not None]
        open_ = [c for c in cands if c.group not in resolved and not c.verdict.startswith(_BY)]
        if done:
            best = min(objective_of(c, c.gpus) for c in done)
            # the model may be optimistic, not (much) pessimistic: a group whose model frontier
            # costs at least the best confirmed one cannot beat it
            extra = [c for c in open_ if objective_of(c, c.gpus_model) < best]
            extra = [c for c in extra if not _settled_by_analogy(c, cands, resolved, best,
                                                                 objective_of)]
        else:  # nothing simulated so far meets the SLOs: try the next-ranked groups
            extra = open_
        if not extra:
            _rank(cands, bounds, objective)
            return []
        room = max_confirm - len(resolved)
        if room <= 0:
            _rank(cands, bounds, objective)
            return extra
        extra.sort(key=expected)
        # one group per (GPU, tp) a round: what the simulation learns about a kind of
        # deployment orders, or settles, its other groups before they are simulated
        picked: list[Candidate] = []
        for c in extra:
            if all((d.gpu, d.tp) != (c.gpu, c.tp) for d in picked):
                picked.append(c)
        queue += [c.group for c in picked[: min(room, max(confirm, 1))]]


_BY = "not simulated: "


def _settled_by_analogy(
    c: Candidate,
    cands: list[Candidate],
    resolved: dict[str, int | None],
    best: float,
    objective_of: Callable[[Candidate, float], float],
) -> bool:
    """Whether at least two confirmed groups on the same GPU at the same tp all needed more
    replicas than the model said (or found none), by enough that ``c`` moved by the smallest
    of those corrections cannot beat ``best``; if so, say so in ``c.verdict``."""
    same = [d for d in cands if d.group in resolved and (d.gpu, d.tp) == (c.gpu, c.tp)]
    if len(same) < 2:
        return False
    shifts = [(d.replicas - d.replicas_model) if d.replicas is not None else math.inf for d in same]
    s = min(shifts)
    if s <= 0 or objective_of(c, (c.replicas_model + s) * c.tp) < best:
        return False
    more = "found no count" if math.isinf(s) else f"needed >= {s:g} more replicas than the model"
    c.verdict = f"{_BY}{len(same)} groups on {c.gpu} at tp {c.tp} {more}"
    return True


def _fill_sim(
    c: Candidate,
    m: int | None,
    reps: list[int],
    tested: dict[int, bool],
    verdicts: dict[str, SimVerdict],
    bounds: dict[str, float],
    cfg: Callable[[Candidate, int], dict[str, Any]],
) -> None:
    """Write the simulation's frontier ``reps[m]`` (``None``: none found) into ``c``."""
    if m is None:
        c.verdict = _NONE
        return
    v = verdicts[config_key(cfg(c, m))]
    n = reps[m]
    c.replicas = n
    sim: dict[str, Any] = {k: v.stats[k] for k in v.stats}
    for k, x in bounds.items():
        sim[f"slo_margin_{k}"] = v.margin(k, x)
    sim["confident"] = v.confident
    sim["runs"] = v.runs
    below = tested.get(m - 1) if m > 0 else None
    sim["one_fewer_meets"] = below
    if below is False:
        vb = verdicts[config_key(cfg(c, m - 1))]
        sim["one_fewer"] = {k: vb.stats[k][0] for k in bounds}
    c.sim = sim
    if n == c.replicas_model:
        c.verdict = "confirmed"
    elif n > c.replicas_model:
        c.verdict = f"needs {n} replicas (model optimistic)"
    else:
        c.verdict = f"{n} replicas suffice (model pessimistic)"


def _best(
    scn: Scenario, cands: list[Candidate], bounds: dict[str, float], simulated: bool
) -> tuple[Candidate | None, Scenario | None]:
    """The chosen configuration: the first ranked frontier the simulation confirmed (without
    simulation, the model's first)."""
    pick = [c for c in cands if c.replicas is not None] if simulated else cands
    if not pick:
        return None, None
    c = pick[0]
    return c, scn.with_overrides({**c.overrides, REPLICAS: c.gpus // c.tp})
