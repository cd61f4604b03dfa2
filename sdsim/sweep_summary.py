"""A sweep's runs summarised: one row per point, with intervals that respect each metric's
range, and speedups over a baseline twin.

:func:`summarize_runs` pools a point's replications (latency statistics from each run's
steady-state estimate and its batch-means standard error, :mod:`sdsim.steadystate`; the
stable fraction with a Wilson interval; other metrics over the replications), and
:func:`speedup_table` pairs each point with its baseline twin.
"""

from __future__ import annotations

__all__ = ["speedup_table", "summarize_runs"]

import math
from typing import Any

import numpy as np
import pandas as pd

from sdsim.errors import ScenarioError
from sdsim.metrics import t_confidence_interval
from sdsim.steadystate import log_t_interval, pool_runs, wilson_interval
from sdsim.sweep_store import canonical_json, column_value


def _numeric(series: pd.Series) -> np.ndarray:
    return pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64)


def _interval(m: str, ok: pd.DataFrame, confidence: float) -> tuple[float, float, float]:
    """Point estimate and CI of one metric over a point's successful runs (see
    :func:`summarize_runs`)."""
    if f"{m}_ss" in ok.columns and len(ok):
        mean, lo, hi = pool_runs(
            _numeric(ok[f"{m}_ss"]), _numeric(ok[f"{m}_ss_se"]), _numeric(ok[f"{m}_ss_batches"]),
            confidence,
        )
        if math.isfinite(lo) or len(ok) < 2:
            return mean, lo, hi
    vals = _numeric(ok[m]) if m in ok.columns and len(ok) else np.zeros(0)
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return (math.nan, math.nan, math.nan)
    mean = float(vals.mean())
    if m == "stable":
        lo, hi = wilson_interval(round(float(vals.sum())), int(vals.size), confidence)
        return mean, lo, hi
    if vals.size < 2:
        return mean, math.nan, math.nan
    se = float(vals.std(ddof=1)) / math.sqrt(vals.size)
    if m.startswith("slo_attainment"):  # a fraction: the t-interval, kept inside [0, 1]
        _, lo, hi = t_confidence_interval(vals, confidence)
        return mean, max(lo, 0.0), min(hi, 1.0)
    if np.all(vals > 0):
        lo, hi = log_t_interval(mean, se, int(vals.size) - 1, confidence)
        return mean, lo, hi
    return t_confidence_interval(vals, confidence)


def summarize_runs(
    runs: pd.DataFrame,
    meta: dict[str, Any],
    analytic: pd.DataFrame | None = None,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Aggregate replications: one row per point with an estimate, std and CI per metric.

    The intervals respect each metric's range (:mod:`sdsim.steadystate`): a latency statistic
    is each run's steady-state estimate (MSER-5 warm-up cut) averaged over the runs, its CI
    from the runs' within-run batch-means standard errors on the log scale (so it is positive
    and meaningful from one replication on); ``stable`` is the fraction of stable runs with a
    Wilson interval (inside [0, 1]); other positive metrics get a log-scale t-interval over
    the replications, the rest a plain one.

    Columns: ``point``, ``point_key``, the swept fields, ``runs`` (successful), ``failed``, and for
    each metric ``M``: ``M`` (the estimate), ``M_std`` (sample std over replications of the
    summary's value), ``M_ci_low``, ``M_ci_high``, plus ``M_analytic`` when ``analytic`` has it.
    """
    rows: list[dict[str, Any]] = []
    ok_mask = runs["error"].isna() if len(runs) else pd.Series(dtype=bool)
    for p in meta["points"]:
        row: dict[str, Any] = {"point": p["point"], "point_key": p["point_key"]}
        for f in meta["fields"]:
            row[f] = column_value(p["overrides"].get(f))
        sel = runs[runs["point_key"] == p["point_key"]] if len(runs) else runs
        ok = sel[ok_mask.loc[sel.index]] if len(sel) else sel
        row["runs"] = len(ok)
        row["failed"] = len(sel) - len(ok)
        for m in meta["metrics"]:
            vals = _numeric(ok[m]) if m in ok.columns and len(ok) else np.zeros(0)
            mean, lo, hi = _interval(m, ok, confidence)
            finite = vals[np.isfinite(vals)]
            row[m] = mean
            row[f"{m}_std"] = float(finite.std(ddof=1)) if finite.size > 1 else math.nan
            row[f"{m}_ci_low"] = lo
            row[f"{m}_ci_high"] = hi
        rows.append(row)
    out = pd.DataFrame(rows)
    if analytic is not None and len(analytic) and len(out):
        cols = [c for c in analytic.columns if c.endswith("_analytic") or c == "analytic_error"]
        out = out.merge(analytic[["point_key", *cols]], on="point_key", how="left")
    return out


def _ratio_interval(ratios: np.ndarray, confidence: float) -> tuple[float, float, float]:
    r = ratios[np.isfinite(ratios) & (ratios > 0)]
    if r.size == 0:
        return (math.nan, math.nan, math.nan)
    mean, lo, hi = t_confidence_interval(np.log(r), confidence)
    return (math.exp(mean), math.exp(lo), math.exp(hi)) if r.size > 1 else (math.exp(mean),) * 3


def speedup_table(
    runs: pd.DataFrame,
    meta: dict[str, Any],
    baseline: dict[str, Any],
    metric: str = "e2e_mean",
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Speedup of every point over its baseline twin: ``metric(baseline) / metric(point)``.

    The baseline twin of a point has the same values of every swept field except those in
    ``baseline`` (e.g. ``{"spec.k": 0}``), which take the baseline's values. Replications are paired
    by index (with ``common_random_numbers`` on the baseline field they share their random
    numbers), the ratio is taken per replication and summarised by its geometric mean and a
    t-interval on the log ratios (positive, as a ratio is).

    Returns
    -------
    pandas.DataFrame
        One row per non-baseline point: swept fields, ``speedup``, ``speedup_ci_low``,
        ``speedup_ci_high``, ``pairs``.

    Raises
    ------
    ScenarioError
        A baseline field that is not swept or a value the grid does not hold.
    """
    fields = list(meta["fields"])
    for f, v in baseline.items():
        if f not in fields:
            raise ScenarioError("--speedup-vs", f"{f!r} is not a swept field (swept: {fields})")
        values = {canonical_json(p["overrides"].get(f)) for p in meta["points"]}
        if canonical_json(v) not in values:
            raise ScenarioError("--speedup-vs", f"{f}={v!r} is not a value of the grid")
    if metric not in runs.columns:
        raise ScenarioError("--metric", f"{metric!r} is not in the sweep results")
    others = [f for f in fields if f not in baseline]

    def ident(ov: dict[str, Any]) -> str:
        return canonical_json({f: ov.get(f) for f in others})

    ok = runs[runs["error"].isna()] if len(runs) else runs
    by_point = (
        {key: grp.set_index("replication")[metric] for key, grp in ok.groupby("point_key")}
        if len(ok)
        else {}
    )
    def is_baseline(ov: dict[str, Any]) -> bool:
        return all(canonical_json(ov.get(f)) == canonical_json(v) for f, v in baseline.items())

    base_of: dict[str, str] = {}
    for p in meta["points"]:
        if is_baseline(p["overrides"]):
            base_of[ident(p["overrides"])] = p["point_key"]
    rows = []
    for p in meta["points"]:
        ov = p["overrides"]
        if is_baseline(ov):
            continue
        bkey = base_of.get(ident(ov))
        row: dict[str, Any] = {"point": p["point"], "point_key": p["point_key"]}
        row.update({f: column_value(ov.get(f)) for f in fields})
        ratios = np.zeros(0)
        if bkey is not None and bkey in by_point and p["point_key"] in by_point:
            b, s = by_point[bkey], by_point[p["point_key"]]
            common = b.index.intersection(s.index)
            ratios = _numeric(b.loc[common]) / _numeric(s.loc[common])
        mean, lo, hi = _ratio_interval(ratios, confidence)
        row.update(speedup=mean, speedup_ci_low=lo, speedup_ci_high=hi, pairs=int(ratios.size))
        rows.append(row)
    return pd.DataFrame(rows)
