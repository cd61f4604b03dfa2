"""Speculative decoding under load, measured the paper's way: mean latency across the load range,
the dense form ``L = C1 / (1 - lambda C2)`` fitted per configuration, and what the fits say.

:func:`load_table` runs (or predicts) every (acceptance, draft length) configuration of a scenario
at rates spread over its own load range (fractions of its predicted saturation), with common
random numbers across draft lengths (the same seed: the arrivals and lengths do not depend on k).
:func:`fit_load` fits ``C1`` and ``C2`` to each configuration's mean latencies
(:func:`sdsim.analytic.fitting.fit_measurements`, dense form) and derives, for each acceptance:

* ``C1R = C1(k) / C1(0)`` (what SD does for a lone request) and ``C2R = C2(k) / C2(0)`` (what each
  request in flight costs the others, relative to plain decoding). The speedup at rate
  ``lambda`` is ``(1 / C1R) (1 - lambda C2(k)) / (1 - lambda C2(0))``: it falls with load when
  ``C2R > 1`` and then crosses 1 at the **break-even** rate
  ``lambda* = (C1(k) - C1(0)) / (C1(k) C2(0) - C1(0) C2(k))``, below both saturations
  ``1 / C2``; with ``C2R < 1`` it grows with load (plain decoding saturates first). (An offline
  benchmark's throughput speedup at a large batch is about ``1 / C2R``.)
* the speedup ``L0(lambda) / Lk(lambda)`` at given fractions of plain decoding's saturation;
* the best k (lowest fitted latency) at low and at high load.
"""

from __future__ import annotations

__all__ = ["fit_load", "load_table", "speedup_at"]

import math
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from sdsim.analytic.fitting import fit_measurements
from sdsim.analytic.prediction import predict
from sdsim.costs.calibration import write_calibration
from sdsim.errors import ScenarioError
from sdsim.simulation import simulate as simulate_run

FRACTIONS = (0.1, 0.25, 0.4, 0.55, 0.7, 0.8)


def load_table(
    scn: Any,
    k_values: Sequence[int],
    alphas: Sequence[float],
    fractions: Sequence[float] = FRACTIONS,
    simulate: bool = True,
    seed: int = 0,
    calibration: Any = None,
) -> pd.DataFrame:
    """Mean e2e latency of every (alpha, k) at rates across its load range.

    Parameters
    ----------
    scn
        The scenario (its workload lengths, server, costs).
    k_values, alphas
        Draft lengths (include 0, the baseline) and acceptance rates.
    fractions
        Rates as fractions of each configuration's predicted saturation.
    simulate
        Simulate (``e2e_mean`` of one seeded run, ``workload.num_requests`` requests) or take
        the analytic model's mean.
    seed
        The runs' seed (one for all k and rates: common random numbers).
    calibration
        A :class:`sdsim.costs.calibration.Calibration` to price with instead of the scenario's
        (ablations); written to a temporary file the scenario's ``costs.calibration`` names.

    Returns
    -------
    pandas.DataFrame
        ``alpha, k, fraction, rate, saturation, e2e_mean, stable, prompt_tokens, output_tokens``.
    """
    if 0 not in k_values:
        raise ScenarioError("k_values", "must include 0 (the plain-decoding baseline)")
    with tempfile.TemporaryDirectory() as tmp:
        base = scn
        if calibration is not None:
            path = write_calibration(calibration, Path(tmp) / "calibration.yaml")
            base = scn.with_overrides({"costs.calibration": str(path)})
        rows = []
        wl = base.workload
        for a in alphas:
            for k in k_values:
                s = base.with_overrides({"acceptance.alpha": float(a), "spec.k": int(k)})
                sat = float(predict(s, rates=[], quantiles=False).saturation_rate)
                for f in fractions:
                    rate = f * sat
                    r = s.with_overrides({"workload.rate": rate})
                    if simulate:
                        summ = simulate_run(r, seed=seed).summary
                        # runs too short to judge (stable None) are kept; overloads are not
                        e2e, stable = float(summ["e2e_mean"]), summ["stable"] is not False
                    else:
                        p = predict(r, rates=[], quantiles=False).summary
                        e2e = float(p["e2e_mean"])
                        stable = math.isfinite(e2e)
                    rows.append({"alpha": float(a), "k": int(k), "fraction": f, "rate": rate,
                                 "saturation": sat, "e2e_mean": e2e, "stable": stable,
                                 "prompt_tokens": wl.prompt_tokens.mean,
                                 "output_tokens": wl.output_tokens.mean})
    return pd.DataFrame(rows)


def speedup_at(fits: pd.DataFrame, alpha: float, k: int, rate: float) -> float:
    """``L0 / Lk`` at ``rate`` from the fitted dense curves (NaN past either saturation)."""
    f0 = fits[(fits["alpha"] == alpha) & (fits["k"] == 0)].iloc[0]
    fk = fits[(fits["alpha"] == alpha) & (fits["k"] == k)].iloc[0]

    def lat(c1: float, c2: float) -> float:
        return c1 / (1.0 - rate * c2) if rate * c2 < 1.0 else math.inf

    l0, lk = lat(f0["C1"], f0["C2"]), lat(fk["C1"], fk["C2"])
    return l0 / lk if math.isfinite(l0) and math.isfinite(lk) else math.nan


def fit_load(table: pd.DataFrame, low: float = 0.1, high: float = 0.8) -> pd.DataFrame:
    """Dense fits per (alpha, k) and what they say (see the module docstring).

    Parameters
    ----------
    table
        From :func:`load_table` (unstable runs are left out of the fits).
    low, high
        Loads, as fractions of plain decoding's fitted saturation, at which the speedup and the
        best k are read.

    Returns
    -------
    pandas.DataFrame
        One row per (alpha, k): ``C1, C2, saturation, r2, C1R, C2R, break_even,
        break_even_fraction`` (of plain decoding's saturation), ``speedup_low, speedup_high``,
        and per alpha ``best_k_low, best_k_high``.
    """
    rows: list[dict[str, Any]] = []
    stable = table[table["stable"]]
    for a in sorted(set(stable["alpha"].astype(float))):
        for k in sorted(set(stable.loc[stable["alpha"] == a, "k"].astype(int))):
            g = stable[(stable["alpha"] == a) & (stable["k"] == k)]
            fit = fit_measurements(g, form="dense", folds=0)
            c1, c2 = fit.coefficients["C1"], fit.coefficients["C2"]
            rows.append({"alpha": a, "k": k, "C1": c1, "C2": c2,
                         "saturation": 1.0 / c2 if c2 > 0 else math.inf, "r2": fit.r2})
    fits = pd.DataFrame(rows)
    out: list[dict[str, Any]] = []
    for a in sorted({r["alpha"] for r in rows}):
        mine = [r for r in rows if r["alpha"] == a]
        base = next(r for r in mine if r["k"] == 0)
        sat0 = base["saturation"]
        lo_rate, hi_rate = low * sat0, high * sat0
        lat_lo: dict[int, float] = {}
        lat_hi: dict[int, float] = {}
        first = len(out)
        for r in mine:
            k = int(r["k"])
            den = r["C1"] * base["C2"] - base["C1"] * r["C2"]
            be = (r["C1"] - base["C1"]) / den if den != 0 else math.nan
            if not (0 < be < min(sat0, r["saturation"])):
                be = math.nan
            for rate, store in ((lo_rate, lat_lo), (hi_rate, lat_hi)):
                store[k] = r["C1"] / (1 - rate * r["C2"]) if rate * r["C2"] < 1 else math.inf
            out.append({**r, "C1R": r["C1"] / base["C1"], "C2R": r["C2"] / base["C2"],
                        "break_even": be, "break_even_fraction": be / sat0,
                        "speedup_low": speedup_at(fits, a, k, lo_rate),
                        "speedup_high": speedup_at(fits, a, k, hi_rate)})
        best_lo = min(lat_lo, key=lambda kk: lat_lo[kk])
        best_hi = min(lat_hi, key=lambda kk: lat_hi[kk])
        for r in out[first:]:
            r["best_k_low"], r["best_k_high"] = best_lo, best_hi
    return pd.DataFrame(out)
