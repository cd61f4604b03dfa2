"""Latency SLOs and goodput: what a scenario's ``slo`` section means for a run and a request.

An SLO ``M_S = X`` (``M`` in e2e, ttft, tpot; ``S`` in mean, p50, p90, p99; ``X`` seconds) says two
things, and both are reported:

* of the run: the statistic ``M_S`` (the summary key of the same name) is at most ``X``.
  ``slo_met`` is true when every SLO holds; ``slo_margin_M_S = (X - M_S) / X`` (negative when
  missed).
* of a request: its ``M`` is at most ``X``. ``slo_attainment_M_S`` is the fraction of measured
  requests within that bound (a request still unfinished at the end of the run misses every
  bound; a one-token request, which has no TPOT, meets a TPOT bound), ``slo_attainment`` the
  fraction within every bound, and ``goodput_rps = throughput_rps x slo_attainment``: requests
  per second that meet every SLO. Without SLOs every finished request counts.

The simulation's summaries (:func:`sdsim.metrics.summarize`, the streaming summary) count requests
with :class:`SloCounter`; the analytic model's take the fraction from its latency laws
(:func:`slo_stats_from_laws`).
"""

from __future__ import annotations

__all__ = [
    "SLO_KEYS",
    "SloCounter",
    "parse_slo_options",
    "slo_bounds",
    "slo_stats",
    "slo_stats_from_laws",
    "slo_summary_keys",
]

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from sdsim.errors import ScenarioError
from sdsim.scenario import SloSpec

SLO_KEYS: tuple[str, ...] = tuple(SloSpec.model_fields)


def slo_bounds(slo: SloSpec) -> dict[str, float]:
    """The SLOs that are set, ``{"ttft_p99": 0.5, ...}`` in :data:`SLO_KEYS` order."""
    return {k: float(v) for k in SLO_KEYS if (v := getattr(slo, k)) is not None}


def slo_summary_keys(bounds: Mapping[str, float]) -> list[str]:
    """The summary keys :func:`slo_stats` adds for these SLOs."""
    keys = ["goodput_rps", "slo_attainment", "slo_met"]
    for k in bounds:
        keys += [f"slo_attainment_{k}", f"slo_margin_{k}"]
    return keys


def _parse_seconds(text: str) -> float:
    t = text.strip().lower()
    scale = 1.0
    if t.endswith("ms"):
        t, scale = t[:-2], 1e-3
    elif t.endswith("s"):
        t = t[:-1]
    v = float(t) * scale
    if not math.isfinite(v) or v <= 0:
        raise ValueError(text)
    return v


def parse_slo_options(items: list[str] | None, option: str = "--slo") -> dict[str, float]:
    """Parse ``--slo METRIC=VALUE`` items (``ttft_p99=0.5``, ``e2e_p99=20s``, ``tpot_p90=80ms``).

    Returns
    -------
    dict
        Metric -> bound in seconds, in the order given (a metric given twice keeps the last).

    Raises
    ------
    ScenarioError
        An item without ``=``, an unknown metric (the message lists the allowed ones) or a bound
        that is not a positive number of seconds.
    """
    out: dict[str, float] = {}
    for item in items or []:
        if "=" not in item:
            raise ScenarioError(
                option, f"expected METRIC=SECONDS (e.g. ttft_p99=0.5), got {item!r}"
            )
        key, raw = (s.strip() for s in item.split("=", 1))
        if key not in SLO_KEYS:
            raise ScenarioError(
                option, f"unknown SLO metric {key!r}; allowed: {', '.join(SLO_KEYS)}"
            )
        try:
            out[key] = _parse_seconds(raw)
        except ValueError:
            raise ScenarioError(
                option, f"{key}: bound must be a positive number of seconds (or NNms), got {raw!r}"
            ) from None
    return out


def _run_level(bounds: Mapping[str, float], summary: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    met: bool | None = True
    for k, x in bounds.items():
        v = float(summary.get(k, math.nan))
        out[f"slo_margin_{k}"] = (x - v) / x if not math.isnan(v) else math.nan
        if math.isnan(v):
            met = None if met is not False else False
        elif v > x:
            met = False
    out["slo_met"] = met
    return out


class SloCounter:
    """Counts, batch by batch, the measured requests within each SLO bound and within all.

    Parameters
    ----------
    bounds
        From :func:`slo_bounds`.
    """

    def __init__(self, bounds: Mapping[str, float]) -> None:
        self.bounds = dict(bounds)
        self.within = dict.fromkeys(self.bounds, 0)
        self.within_all = 0

    def add(
        self,
        e2e: npt.ArrayLike,
        ttft: npt.ArrayLike,
        tpot: npt.ArrayLike,
    ) -> None:
        """Add finished measured requests' latencies (``tpot`` NaN for one-token outputs)."""
        cols = {
            "e2e": np.asarray(e2e, dtype=np.float64),
            "ttft": np.asarray(ttft, dtype=np.float64),
            "tpot": np.asarray(tpot, dtype=np.float64),
        }
        all_ok = np.ones(cols["e2e"].shape[0], dtype=bool)
        for k, x in self.bounds.items():
            v = cols[k.split("_", 1)[0]]
            ok = ~(v > x)  # NaN (no TPOT) is within
            self.within[k] += int(ok.sum())
            all_ok &= ok
        self.within_all += int(all_ok.sum())

    def stats(self, measured: int, summary: Mapping[str, Any]) -> dict[str, Any]:
        """The SLO keys of a summary, given the measured requests (finished or not) and the
        summary's statistics and ``throughput_rps``."""
        out: dict[str, Any] = {}
        frac = self.within_all / measured if measured else math.nan
        out["slo_attainment"] = frac
        out["goodput_rps"] = float(summary.get("throughput_rps", math.nan)) * frac
        for k in self.bounds:
            out[f"slo_attainment_{k}"] = self.within[k] / measured if measured else math.nan
        out.update(_run_level(self.bounds, summary))
        return out


def slo_stats(
    bounds: Mapping[str, float],
    e2e: npt.ArrayLike,
    ttft: npt.ArrayLike,
    tpot: npt.ArrayLike,
    measured: int,
    summary: Mapping[str, Any],
) -> dict[str, Any]:
    """:class:`SloCounter` in one call: the SLO keys of a summary from the finished measured
    requests' latencies."""
    c = SloCounter(bounds)
    c.add(e2e, ttft, tpot)
    return c.stats(measured, summary)


def slo_stats_from_laws(
    bounds: Mapping[str, float],
    cdfs: Mapping[str, Callable[[float], float]],
    summary: Mapping[str, Any],
) -> dict[str, Any]:
    """The SLO keys of an analytic prediction.

    Parameters
    ----------
    bounds
        From :func:`slo_bounds`.
    cdfs
        ``{"e2e": F, "ttft": F, "tpot": F}``: each latency's CDF (empty when the model gave no
        laws; an unstable point has every latency infinite).
    summary
        The prediction's summary (statistics, ``throughput_rps``, ``stable``).

    Notes
    -----
    Per-SLO attainment is the law's CDF at the bound. The fraction within every bound is taken
    as the smallest of them, which is exact when the latencies move together (a request that
    waits longer for its first token also ends later) and an upper bound otherwise.
    """
    out: dict[str, Any] = {}
    stable = bool(summary.get("stable", True))
    fracs: list[float] = []
    for k, x in bounds.items():
        m = k.split("_", 1)[0]
        if not stable:
            f = 0.0
        elif m in cdfs:
            f = float(np.clip(cdfs[m](x), 0.0, 1.0))
        else:
            f = math.nan
        out[f"slo_attainment_{k}"] = f
        fracs.append(f)
    if not stable:
        frac = 0.0
    elif any(math.isnan(f) for f in fracs):
        frac = math.nan
    else:
        frac = min(fracs, default=1.0)
    out["slo_attainment"] = frac
    out["goodput_rps"] = float(summary.get("throughput_rps", math.nan)) * frac
    out.update(_run_level(bounds, summary))
    return out
