"""What the explorer's panels plot, computed from the analytic model and the step-cost model.

Four panels, all from the same scenario:

* latency vs rate: :func:`sdsim.predict_grid` over rates from 2% to 99% of the saturation rate
  (denser near it, where the hockey stick bends), mean and p50/p90/p99 of e2e, TTFT and TPOT;
* speedup vs rate: the same grid's mean-field speedup of the scenario's k over k = 0, and the
  break-even rate where it falls through 1;
* step time vs decode batch: :func:`sdsim.costs.step_times` of the scenario's cost model at the
  mean KV length of a running request, split into draft, verify and CPU overhead, beside k = 0;
* the batch-size law at the chosen rate: the birth-death law of the number in system
  (:func:`sdsim.analytic.prediction.gps_law`) seen through the concurrency cap.

The curve of a scenario does not depend on its rate (for a fixed draft length), so it is cached by
everything else: moving the rate slider only recomputes the point.
"""

from __future__ import annotations

__all__ = [
    "RATE_FRACTIONS",
    "ViewCache",
    "batch_law",
    "break_even",
    "curve",
    "curve_key",
    "jsonable",
    "model_view",
    "step_breakdown",
]

import json
import math
import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from sdsim.analytic.prediction import gps_law, predict, predict_grid
from sdsim.costs.build import build_cost_model
from sdsim.costs.step import step_times
from sdsim.scenario import Scenario

# Fractions of the saturation rate the latency and speedup curves are drawn at: evenly spaced at
# light load, denser towards saturation where L = C1 / (1 - lambda C2) turns up.
RATE_FRACTIONS = (
    0.02, 0.15, 0.3, 0.45, 0.6, 0.7, 0.8, 0.87, 0.92, 0.95, 0.97, 0.985, 0.995,
)
# decode batches the step-time panel is drawn at (log spaced from 1 to max_num_seqs)
STEP_POINTS = 40
LATENCY_KEYS = tuple(
    f"{m}_{s}" for m in ("e2e", "ttft", "tpot") for s in ("mean", "p50", "p90", "p99")
)
POINT_KEYS = (
    *LATENCY_KEYS,
    "throughput_rps",
    "throughput_tps",
    "tokens_per_step_mean",
    "batch_mean",
    "in_system_mean",
    "p_wait",
    "k_effective",
    "kv_demand_mean",
    "p_kv_full",
    "stable",
)


def jsonable(x: Any) -> Any:
    """Plain JSON data: numpy scalars and arrays to Python, NaN and infinities to ``None``."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return [jsonable(v) for v in x.tolist()]
    if isinstance(x, bool | np.bool_):
        return bool(x)
    if isinstance(x, int | np.integer):
        return int(x)
    if isinstance(x, float | np.floating):
        v = float(x)
        return v if math.isfinite(v) else None
    return x


def curve_key(scn: Scenario) -> str:
    """What the model curves of a scenario depend on: everything but its rate (kept for the
    adaptive policy, whose draft length follows the load) and what only a simulation reads."""
    d = scn.to_dict()
    for name in ("name", "description", "seed", "warmup_requests", "limits"):
        d.pop(name, None)
    d["workload"] = {k: v for k, v in d["workload"].items() if k != "num_requests"}
    if scn.spec.policy == "fixed":
        d["workload"].pop("rate")
    return json.dumps(d, sort_keys=True)


def curve(scn: Scenario, saturation_rate: float) -> dict[str, list[Any]]:
    """Latency statistics and speedup at :data:`RATE_FRACTIONS` of ``saturation_rate``.

    Returns
    -------
    dict
        ``rate`` (req/s), ``{e2e,ttft,tpot}_{mean,p50,p90,p99}`` (seconds) and ``speedup``, one
        value per rate (each point is :func:`sdsim.predict` of the scenario at that rate), and
        ``break_even_rate``: where that speedup falls through 1 (see :func:`break_even`).
    """
    rates = [f * saturation_rate for f in RATE_FRACTIONS]
    df = predict_grid(scn, rates, [scn.spec.k])
    out: dict[str, Any] = {"rate": [float(r) for r in df["rate"]]}
    for key in (*LATENCY_KEYS, "speedup"):
        out[key] = [float(v) for v in df[key]]
    out["break_even_rate"] = break_even(out["rate"], out["speedup"])
    return out


def break_even(rates: list[float], speedup: list[float]) -> float:
    """The rate at which a speedup curve first falls through 1, linearly interpolated between
    the two rates around the crossing; NaN when it never does (or starts below 1).

    Each point's speedup comes from the model's lines at that point's own load, so the crossing
    of the drawn curve is the model's break-even; ``Prediction.break_even_rate`` extrapolates
    the lines of one rate instead, and moves with the rate slider.
    """
    r = np.asarray(rates, dtype=np.float64)
    s = np.asarray(speedup, dtype=np.float64)
    ok = np.isfinite(s)
    r, s = r[ok], s[ok]
    if s.shape[0] < 2 or s[0] < 1:
        return math.nan
    below = np.nonzero(s < 1)[0]
    if below.shape[0] == 0:
        return math.nan
    i = int(below[0])
    return float(r[i - 1] + (s[i - 1] - 1) / (s[i - 1] - s[i]) * (r[i] - r[i - 1]))


def step_breakdown(scn: Scenario, k: int, model: Any = None) -> dict[str, Any]:
    """Step time vs decode batch at the mean KV length of a running request (prompt plus half
    the output, as ``sdsim costs``), split into its parts, beside plain decoding (seconds)."""
    cost = model if model is not None else build_cost_model(scn)
    wl = scn.workload
    ctx = int(wl.prompt_tokens.mean + wl.output_tokens.mean / 2)
    top = scn.server.max_num_seqs
    b = np.unique(np.round(np.geomspace(1, top, min(STEP_POINTS, top))).astype(np.int64))
    spec = step_times(cost, b, b * ctx, k)
    plain = step_times(cost, b, b * ctx, 0)
    return {
        "batch": b.tolist(),
        "context": ctx,
        "k": k,
        "total": spec.total.tolist(),
        "draft": spec.draft.tolist(),
        "verify": spec.verify.tolist(),
        "overhead": spec.overhead.tolist(),
        "plain": plain.total.tolist(),
    }


def batch_law(scn: Scenario, coefficients: Any, model: Any = None) -> dict[str, Any] | None:
    """The law of the engine's batch (requests holding a slot, ``min(N, max_num_seqs)``) of one
    replica at the scenario's rate; ``None`` past saturation (no stationary law)."""
    lam = scn.workload.rate / scn.server.replicas
    law = gps_law(scn, coefficients, lam, model)
    if not law.stable:
        return None
    cap = law.n_max
    pmf = law.pmf
    p = np.zeros(cap + 1)
    below = min(cap, pmf.shape[0])  # n < cap requests in system all hold a slot
    p[:below] = pmf[:below]
    p[cap] += float(pmf[cap:].sum())  # the rest wait behind a full batch
    # what is drawn stops where the law has no visible mass left
    keep = int(np.nonzero(p > 1e-7)[0].max()) + 1 if (p > 1e-7).any() else 1
    n = np.arange(p.shape[0])
    return {
        "batch": n[:keep].tolist(),
        "p": p[:keep].tolist(),
        "mean": float(n @ p),
        "cap": int(cap),
    }


def model_view(scn: Scenario, cache: ViewCache | None = None) -> dict[str, Any]:
    """Everything the page draws for a scenario (plain data, seconds and req/s).

    Returns
    -------
    dict
        ``key`` (:func:`curve_key`), ``point`` (the prediction at the scenario's rate: its
        summary, ``saturation_rate``, ``gpu_saturation_rate``, ``kv_saturation_rate``,
        ``speedup``, ``c1``, ``c2``, ``outside_model``), ``curve``
        (:func:`curve`), ``steps`` (:func:`step_breakdown`) and ``batch_law``
        (:func:`batch_law`).
    """
    pred = predict(scn, rates=[], k_values=[scn.spec.k])
    model = build_cost_model(scn)
    key = curve_key(scn)
    sat = pred.saturation_rate
    got = cache.get(key) if cache is not None else None
    if got is None:
        got = curve(scn, sat)
        if cache is not None:
            cache.put(key, got)
    k_eff = int(pred.summary["k_effective"])
    point = {k: pred.summary.get(k) for k in POINT_KEYS}
    point.update(
        {
            "saturation_rate": sat,
            "gpu_saturation_rate": pred.gpu_saturation_rate,
            "kv_saturation_rate": pred.kv_saturation_rate,
            "speedup": pred.speedup,
            "c1": pred.c1,
            "c2": pred.c2,
            "outside_model": pred.outside_model,
        }
    )
    law = batch_law(scn, pred.coefficients, model) if pred.coefficients is not None else None
    return {
        "key": key,
        "rate": scn.workload.rate,
        "point": point,
        "curve": got,
        "steps": step_breakdown(scn, k_eff, model),
        "batch_law": law,
    }


class ViewCache:
    """A small thread-safe LRU of model curves by :func:`curve_key`."""

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self._items: OrderedDict[str, dict[str, list[Any]]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> dict[str, list[Any]] | None:
        with self._lock:
            v = self._items.get(key)
            if v is not None:
                self._items.move_to_end(key)
            return v

    def put(self, key: str, value: dict[str, list[Any]]) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
