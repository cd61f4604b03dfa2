"""`predict(scenario)`: the closed-form model's answer for one scenario, keyed like a simulation.

Puts the pieces together: the request's work law (:mod:`~sdsim.analytic.work`), the stage
coefficients (:mod:`~sdsim.analytic.coefficients`), the mean-field formula
(:mod:`~sdsim.analytic.meanfield`), the GPS birth-death law with the concurrency cap
(:mod:`~sdsim.analytic.gps`) and the tagged-request quantiles (:mod:`~sdsim.analytic.tails`).
``Prediction.summary`` uses the simulation summary's keys, so the two compare key by key.
"""

from __future__ import annotations

__all__ = ["Prediction", "capacity", "gps_law", "mean_e2e_gps", "predict"]

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from sdsim.analytic.coefficients import Coefficients, derive_coefficients
from sdsim.analytic.gps import BirthDeath, birth_death
from sdsim.analytic.meanfield import (
    break_even_rate,
    mean_latency,
    speedup,
)
from sdsim.analytic.tails import latency_distribution
from sdsim.analytic.work import RequestWork, request_work
from sdsim.costs.step import StepCostModel, StepShape, build_cost_model
from sdsim.errors import ScenarioError
from sdsim.scenario import Scenario

LATENCY_KEYS = tuple(
    f"{m}_{s}" for m in ("e2e", "ttft", "tpot") for s in ("mean", "p50", "p90", "p99")
)


@dataclass
class Prediction:
    """What the analytic model predicts for one scenario.

    Attributes
    ----------
    summary
        Same keys as ``SimResult.summary``: ``{e2e,ttft,tpot}_{mean,p50,p90,p99}``,
        ``throughput_rps``, ``throughput_tps``, ``tokens_per_step_mean``, ``batch_mean``,
        ``in_system_mean``, ``stable``; plus ``e2e_mean_meanfield``, ``e2e_mean_gps``,
        ``p_wait``, ``queue_delay_mean``.
    c1, c2
        Mean-field coefficients (seconds).
    stages
        The six stage coefficients ``c1p, c1v, c1d, c2p, c2v, c2d``.
    saturation_rate
        Largest sustainable arrival rate (req/s, all replicas): the smaller of the token-work
        limit ``1 / (c_p + b E[S])`` and the concurrency-cap limit.
    speedup
        Mean-field speedup of this k over k = 0 at the scenario's rate (1.0 when k = 0).
    break_even_rate
        Rate at which SD stops helping (NaN when it helps, or hurts, at every load).
    best_k
        rate -> draft length with the lowest predicted mean e2e (birth-death model).
    coefficients
        The full :class:`~sdsim.analytic.coefficients.Coefficients`.
    """

    summary: dict[str, Any]
    c1: float
    c2: float
    stages: dict[str, float]
    saturation_rate: float
    speedup: float
    break_even_rate: float
    best_k: dict[float, int | None] = field(default_factory=dict)
    coefficients: Coefficients | None = None
    scenario: Scenario | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain data (what `sdsim predict --json` prints)."""
        return {
            "summary": self.summary,
            "c1": self.c1,
            "c2": self.c2,
            "stages": self.stages,
            "saturation_rate": self.saturation_rate,
            "speedup": self.speedup,
            "break_even_rate": self.break_even_rate,
            "best_k": {f"{r:g}": k for r, k in self.best_k.items()},
            "steps_per_request": self.coefficients.steps if self.coefficients else math.nan,
            "concurrency_cap": self.coefficients.n_max if self.coefficients else None,
        }


def _arrival_scv(scn: Scenario) -> float:
    w = scn.workload
    if w.arrival == "poisson":
        return 1.0
    if w.arrival == "gamma":
        return float(w.cv**2)
    if w.arrival == "constant":
        return 0.0
    return 1.0  # trace: unknown, treated as Poisson


def capacity(co: Coefficients) -> float:
    """Largest sustainable rate of one replica (req/s).

    Without a cap a request brings ``c_p + b E[S]`` seconds of marginal work; with the batch full
    at ``n_max`` requests each holding a slot for ``E[S] + P`` steps, throughput is
    ``n_max / ((E[S] + P)(a + b n_dec) + n_max c_p)``.
    """
    work_limit = 1.0 / (co.c_p + co.b * co.steps) if co.c_p + co.b * co.steps > 0 else math.inf
    life = co.steps + co.prefill_steps
    n_dec = co.n_max * co.steps / life
    cap_limit = co.n_max / (life * (co.a + co.b * n_dec) + co.n_max * co.c_p)
    return min(work_limit, cap_limit)


def _step_time_fn(model: StepCostModel, co: Coefficients, rate: float) -> Any:
    """t(n): seconds per step with n requests in the batch, prefill work spread as a time tax."""
    frac = co.steps / (co.steps + co.prefill_steps)
    tax = 1.0 - rate * co.c_p
    cache: dict[int, float] = {}

    def dec(nd: int) -> float:
        if nd not in cache:
            cache[nd] = model.step(StepShape(nd, round(nd * co.ctx), co.k)).total
        return cache[nd]

    def fn(n: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        nd = n * frac
        lo = np.floor(nd).astype(np.int64)
        out = np.empty_like(nd)
        for i, (x, f) in enumerate(zip(nd, lo, strict=True)):
            t0 = dec(max(int(f), 1))
            t1 = dec(max(int(f) + 1, 1))
            out[i] = t0 + (t1 - t0) * (x - f) if f >= 1 else dec(1) * max(x, 1e-9)
        return out / tax

    return fn


def gps_law(
    scn: Scenario, co: Coefficients, rate: float, model: StepCostModel | None = None
) -> BirthDeath:
    """Birth-death law of the number in system of one replica at ``rate`` (req/s per replica)."""
    m = model if model is not None else build_cost_model(scn)
    if rate * co.c_p >= 1.0:
        return BirthDeath(np.zeros(0), rate, co.n_max, False)
    nu = co.steps + co.prefill_steps
    return birth_death(rate, nu, _step_time_fn(m, co, rate), co.n_max)


def mean_e2e_gps(law: BirthDeath, co: Coefficients) -> float:
    """Birth-death mean e2e: Little's ``E[N] / lambda`` plus the own prefill and half a step."""
    if not law.stable:
        return math.inf
    return law.mean_sojourn + co.c_p + 0.5 * (co.a + co.b * law.mean)


def predict(
    scenario: Scenario,
    rates: Sequence[float] | None = None,
    *,
    k_values: Sequence[int] | None = None,
    quantiles: bool = True,
) -> Prediction:
    """Predict latency for a scenario without simulating it.

    Parameters
    ----------
    scenario
        The scenario (its ``workload.rate`` is the rate predicted at).
    rates
        Rates (req/s) for ``best_k``; default: the scenario's rate and 10, 25, 50, 75, 90% of the
        plain-decoding saturation rate.
    k_values
        Draft lengths ``best_k`` considers; default 0..``spec.k_max`` (and ``spec.k``).
    quantiles
        Compute the tail model (p50/p90/p99); False gives means only (faster, for sweeps).

    Returns
    -------
    Prediction
    """
    scn = scenario
    if scn.workload.arrival == "trace":
        raise ScenarioError(
            "workload.arrival", "predict needs a rate-driven arrival process, not a trace"
        )
    model = build_cost_model(scn)
    k = scn.spec.k
    reps = scn.server.replicas
    lam = scn.workload.rate / reps  # round-robin / balanced replicas: each sees rate / replicas
    works: dict[int, RequestWork] = {}
    coefs: dict[int, Coefficients] = {}

    def co_for(kk: int) -> Coefficients:
        if kk not in coefs:
            works[kk] = request_work(scn, kk)
            coefs[kk] = derive_coefficients(scn, kk, works[kk])
        return coefs[kk]

    co = co_for(k)
    co0 = co_for(0)
    sat = capacity(co) * reps
    stable = lam * reps < sat
    law = gps_law(scn, co, lam, model)
    summary: dict[str, Any] = {}
    if quantiles and stable and law.stable:
        tm = latency_distribution(co, works[k], law, lam, _arrival_scv(scn))
        summary.update(tm.stats)
        p_wait, mean_wait = tm.p_wait, tm.mean_wait
    else:
        for key in LATENCY_KEYS:
            summary[key] = math.nan if stable else math.inf
        p_wait = law.p_wait if law.stable else 1.0
        mean_wait = math.nan
        if stable and law.stable:
            summary["e2e_mean"] = mean_e2e_gps(law, co)
    mf = float(mean_latency(co.c1, co.c2, lam))
    summary["e2e_mean_meanfield"] = mf
    summary["e2e_mean_gps"] = mean_e2e_gps(law, co)
    summary["throughput_rps"] = lam * reps if stable else sat
    summary["throughput_tps"] = summary["throughput_rps"] * co.output
    summary["tokens_per_step_mean"] = co.tokens_per_step
    summary["in_system_mean"] = lam * summary["e2e_mean"] if stable else math.inf
    summary["batch_mean"] = (
        float((np.minimum(np.arange(law.pmf.shape[0]), co.n_max) * law.pmf).sum())
        if law.stable
        else float(co.n_max)
    )
    summary["p_wait"] = p_wait
    summary["queue_delay_mean"] = mean_wait
    summary["stable"] = bool(stable and law.stable)
    summary["little_residual"] = 0.0

    c1r = co.c1 / co0.c1
    c2r = co.c2 / co0.c2
    sp = float(speedup(c1r, c2r, lam * co0.c2)) if lam * co0.c2 < 1 else math.nan
    be = break_even_rate(c1r, c2r, co0.c2) * reps if k > 0 else math.nan

    ks = sorted(set(k_values) if k_values is not None else {*range(scn.spec.k_max + 1), k})
    if rates is None:
        sat0 = capacity(co0) * reps
        rates = [scn.workload.rate, *(f * sat0 for f in (0.1, 0.25, 0.5, 0.75, 0.9))]
    best: dict[float, int | None] = {}
    for r in rates:
        lat = []
        for kk in ks:
            ck = co_for(kk)
            lr = float(r) / reps
            if lr >= capacity(ck):
                lat.append(math.inf)
                continue
            lat.append(mean_e2e_gps(gps_law(scn, ck, lr, model), ck))
        i = int(np.argmin(lat))
        best[float(r)] = ks[i] if math.isfinite(lat[i]) else None
    return Prediction(
        summary=summary,
        c1=co.c1,
        c2=co.c2,
        stages=co.stages,
        saturation_rate=sat,
        speedup=1.0 if k == 0 else sp,
        break_even_rate=be,
        best_k=best,
        coefficients=co,
        scenario=scn,
    )
