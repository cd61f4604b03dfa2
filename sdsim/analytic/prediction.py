"""`predict(scenario)`: the closed-form model's answer for one scenario, keyed like a simulation.

Puts the pieces together: the request's work law (:mod:`~sdsim.analytic.work`), the real step
curve of the cost model (:mod:`~sdsim.analytic.stepcurve`), the operating point with its GPS
birth-death law, saturation rate and KV demand (:mod:`~sdsim.analytic.operating`), the local
stage coefficients (:mod:`~sdsim.analytic.coefficients`), the mean-field formula
(:mod:`~sdsim.analytic.meanfield`) and the tagged-request quantiles
(:mod:`~sdsim.analytic.tails`). ``Prediction.summary`` uses the simulation summary's keys, so
the two compare key by key.

What the engine does beyond one replica with a fixed k is mapped as follows:

* replicas: every router sends each replica ``rate / replicas`` on average; the gaps a replica
  sees have squared CV ``c^2 / N`` (round-robin and least-outstanding, which keeps replicas as
  even as round-robin) or ``1 - 1/N + c^2 / N`` (random thinning, and prefix-affinity, which
  splits by a hash of the prefix), which only the admission-wait term uses;
* ``spec.policy: adaptive``: predicted with the k the policy chooses at the predicted mean
  decode batch (the argmax of ``batch x E[X](alpha_hat, k) / t_k(batch)``, ``alpha_hat`` the
  truncated-geometric estimate the policy converges to), iterated to a fixed point;
* per-step CPU overhead: inside every priced step (``costs.overhead_s``), so in ``t(n)``;
* ``server.api_delay_s``: added to every TTFT and e2e statistic (an infinite-server delay ahead of
  the queue); Little's law counts it in ``in_system_mean``;
* a finite KV cache (``server.num_gpu_blocks``): ``kv_saturation_rate`` is where the mean KV
  demand reaches the capacity; from there on preemption by recomputation governs the latency
  and the prediction is marked ``outside_model`` (``saturation_rate`` is the smaller of the two).
"""

from __future__ import annotations

__all__ = [
    "LoadPredictor",
    "Prediction",
    "adaptive_k",
    "capacity",
    "gps_law",
    "mean_e2e_gps",
    "predict",
    "predict_grid",
]

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

import numpy as np

from sdsim.acceptance import expected_tokens_per_step
from sdsim.analytic.arrivals import arrival_view
from sdsim.analytic.coefficients import Coefficients
from sdsim.analytic.gps import BirthDeath
from sdsim.analytic.hitpoint import resolve_hit_rate
from sdsim.analytic.meanfield import (
    break_even_rate,
    mean_latency,
    speedup,
)
from sdsim.analytic.mixtures import LatencyLaw
from sdsim.analytic.operating import (
    OperatingPoint,
    build_curve,
    chunk_laws,
    gps_law_from_curve,
    kv_blocks_per_request,
    kv_saturation_rate,
    local_lines,
    local_steps,
    operating_point,
    step_saturation_rate,
)
from sdsim.analytic.prefix import kv_demand
from sdsim.analytic.stepcurve import StepCurve
from sdsim.analytic.tails import latency_distribution
from sdsim.analytic.trust import (
    KV_PRESSURE,
    arrivals_outside,
    budget_caveat,
    caveats,
    limiting_resource,
)
from sdsim.analytic.work import RequestWork, request_work
from sdsim.costs.build import build_cost_model
from sdsim.costs.step import StepCostModel
from sdsim.errors import ScenarioError
from sdsim.memory import num_gpu_blocks
from sdsim.scenario import BetaAlpha, Scenario
from sdsim.slo import slo_bounds, slo_stats_from_laws

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
        ``p_wait``, ``queue_delay_mean``, ``k_effective``, ``api_delay_s``,
        ``kv_demand_mean`` (blocks, per replica), ``p_kv_full`` (probability that the requests
        in the engine need more blocks than the cache holds: the onset of preemption),
        ``kv_saturated``, and ``prefix_hit_rate`` with ``prefix_hit_source`` (given, predicted,
        off: :mod:`~sdsim.analytic.hitpoint`) and ``prefix_char_time_s`` (the cache's
        characteristic time when predicted).
    c1, c2
        Mean-field coefficients (seconds).
    stages
        The six stage coefficients ``c1p, c1v, c1d, c2p, c2v, c2d``.
    saturation_rate
        Largest sustainable arrival rate (req/s, all replicas): the smaller of the step-curve
        limit (``gpu_saturation_rate``) and the KV limit (``kv_saturation_rate``).
    speedup
        Mean-field speedup of this k over k = 0 at the scenario's rate (1.0 when k = 0).
    break_even_rate
        Rate at which SD stops helping (NaN when it helps, or hurts, at every load).
    best_k
        rate -> draft length with the lowest predicted mean e2e (birth-death model).
    coefficients
        The full :class:`~sdsim.analytic.coefficients.Coefficients` (local lines at this rate).
    gpu_saturation_rate
        Rate (req/s, all replicas) at which the real step curve saturates the replicas.
    kv_saturation_rate
        Rate (req/s, all replicas) at which the mean KV demand reaches ``num_gpu_blocks``
        (``inf`` for an unlimited cache).
    saturation_limit
        What sets ``saturation_rate``: ``"KV cache"`` (the KV limit comes first), ``"admission
        cap"`` (the batch is held at ``max_num_seqs`` or the token budget while a step there is
        still mostly fixed cost, so a larger cap would carry more) or ``"GPU"`` (step time grows
        with the batch at the cap: the GPU itself, or prefill filling it).
    outside_model
        Why this prediction is outside what the model covers (``None`` when it is inside).
    caveats
        Inside the model, but where it is known to err by more than the validation tolerances:
        the statistic, the measured error and why (:func:`~sdsim.analytic.trust.caveats`).
    latency_laws
        The tail model's laws of ``e2e``, ``ttft`` and ``tpot`` (exact ``cdf`` and
        ``quantiles``; empty when quantiles were not computed or the point is unstable).
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
    gpu_saturation_rate: float = math.nan
    kv_saturation_rate: float = math.inf
    saturation_limit: str = "GPU"
    outside_model: str | None = None
    latency_laws: dict[str, LatencyLaw] = field(default_factory=dict, repr=False)
    caveats: list[str] = field(default_factory=list)

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
            "linearization": self.coefficients.linearization if self.coefficients else None,
            "linearization_error": self.coefficients.fit_error if self.coefficients else None,
            "gpu_saturation_rate": self.gpu_saturation_rate,
            "kv_saturation_rate": self.kv_saturation_rate,
            "saturation_limit": self.saturation_limit,
            "outside_model": self.outside_model,
            "caveats": self.caveats,
        }


def _k_search_max(scn: Scenario) -> int:
    """Largest draft length a k search may try: spec.k_max, and no more positions than a
    per-position acceptance list defines."""
    a = scn.acceptance.alpha
    top = max(scn.spec.k_max, scn.spec.k)
    return min(top, len(a)) if isinstance(a, list) else top


def capacity(co: Coefficients) -> float:
    """Largest sustainable rate of one replica from the *local lines* alone (req/s).

    Without a cap a request brings ``c_p + b E[S]`` seconds of marginal work; with the batch full
    at ``n_max`` requests each holding a slot for ``E[S] + P`` steps, throughput is
    ``n_max / ((E[S] + P)(a + b n_dec) + n_max c_p)``. The lines are a tangent at one operating
    point, so this is exact for linear costs only; :func:`predict` takes the saturation rate from
    the real step curve (:func:`~sdsim.analytic.operating.step_saturation_rate`).
    """
    work_limit = 1.0 / (co.c_p + co.b * co.steps) if co.c_p + co.b * co.steps > 0 else math.inf
    life = co.steps + co.prefill_steps
    n_dec = co.n_max * co.steps / life
    cap_limit = co.n_max / (life * (co.a + co.b * n_dec) + co.n_max * co.c_p)
    return min(work_limit, cap_limit)


def gps_law(
    scn: Scenario, co: Coefficients, rate: float, model: StepCostModel | None = None
) -> BirthDeath:
    """Birth-death law of the number in system of one replica at ``rate`` (req/s per replica),
    with the real step curve ``t(n)`` of the scenario's cost model at draft length ``co.k``."""
    work = request_work(scn, co.k)
    curve = build_curve(scn, co.k, work, model)
    return gps_law_from_curve(curve, work, rate, arrival_view(scn, rate, float(curve.mixed[1, 1])))


def mean_e2e_gps(law: BirthDeath, co: Coefficients) -> float:
    """Birth-death mean e2e: Little's ``E[N] / lambda`` plus the own prefill and half a step."""
    if not law.stable:
        return math.inf
    return law.mean_sojourn + co.c_p + 0.5 * (co.a + co.b * law.mean)


def _alpha_hat(scn: Scenario, k: int) -> float:
    """The i.i.d. acceptance the adaptive policy's estimator converges to at draft length k.

    The policy's MLE is accepted / (accepted + rejections); in the long run that is
    ``E[accepted] / (E[accepted] + P(a rejection within k))`` under the scenario's acceptance law
    (exactly alpha for a constant alpha).
    """
    a = scn.acceptance.alpha
    kk = max(k, 1)
    if isinstance(a, BetaAlpha):
        from scipy import stats

        nodes = stats.beta(a.a, a.b).ppf((np.arange(12) + 0.5) / 12)
        alphas: list[list[float]] = [[float(x)] * kk for x in nodes]
    elif isinstance(a, list):
        alphas = [[float(x) for x in a[:kk]] + [float(a[-1])] * max(0, kk - len(a))]
    else:
        alphas = [[float(a)] * kk]
    acc = rej = 0.0
    for pos in alphas:
        surv = np.cumprod(pos)
        acc += float(surv.sum())
        rej += 1.0 - float(surv[-1])
    return acc / (acc + rej) if acc + rej > 0 else 0.0


def adaptive_k(
    scn: Scenario,
    rate: float,
    curves: dict[int, StepCurve] | None = None,
    model: StepCostModel | None = None,
) -> int:
    """The draft length the adaptive policy settles on at ``rate`` req/s per replica.

    Starting from ``spec.k``: predict the mean decode batch with the current k, let the policy
    choose at that batch (``argmax_k min(n, budget // (k+1)) E[X](alpha_hat, k) / t_k(n)``),
    repeat until the choice stops changing (at most 8 rounds; a 2-cycle takes the smaller k).
    """
    m = model if model is not None else build_cost_model(scn)
    cs: dict[int, StepCurve] = curves if curves is not None else {}
    works: dict[int, RequestWork] = {}
    budget = scn.server.max_num_batched_tokens
    ks = np.arange(_k_search_max(scn) + 1)

    def curve(kk: int) -> StepCurve:
        if kk not in cs:
            works[kk] = request_work(scn, kk)
            cs[kk] = build_curve(scn, kk, works[kk], m)
        return cs[kk]

    k = min(scn.spec.k, scn.spec.k_max)
    seen: list[int] = []
    for _ in range(8):
        c = curve(k)
        if k not in works:
            works[k] = request_work(scn, k)
        op = operating_point(scn, k, rate, work=works[k], model=m, curve=c)
        n_op = op.coefficients.n_op
        alpha = _alpha_hat(scn, k)
        best, best_score = k, -math.inf
        for kk in ks.tolist():
            ck = curve(int(kk))
            nb = min(n_op, budget // (kk + 1), float(ck.n_max))
            if nb <= 0:
                continue
            t = float(np.interp(nb, np.arange(ck.decode.shape[0]), ck.decode))
            score = nb * expected_tokens_per_step(alpha, int(kk)) / t
            if score > best_score * (1 + 1e-12):
                best, best_score = int(kk), score
        if best == k:
            return k
        if best in seen:
            return min(best, k)
        seen.append(k)
        k = best
    return k


@dataclass
class _Shared:
    """What predictions of one scenario shape share: the cost model, and per (draft length,
    acceptance law) the work law, the step curve and the two saturation rates, none of which
    depends on the arrival rate. At k = 0 every step emits one token whatever alpha is, so the
    work law and curve are keyed by k alone there."""

    model: StepCostModel
    works: dict[tuple[int, str], RequestWork] = field(default_factory=dict)
    curves: dict[tuple[int, str], StepCurve] = field(default_factory=dict)
    sats: dict[tuple[int, str], float] = field(default_factory=dict)
    kv_sats: dict[tuple[int, str], float] = field(default_factory=dict)
    # k = 0 operating points by rate per replica: every point of a grid at that rate reads the
    # same one as its speedup's baseline (the same inputs, so the same floats as computing it)
    plain: dict[tuple[float, float | None], OperatingPoint] = field(default_factory=dict)
    # KV blocks per replica by whether a drafter is loaded (the one thing of the grid's
    # overrides the capacity reads: spec.k > 0)
    kv_caps: dict[bool, int | None] = field(default_factory=dict)


def _law_key(scn: Scenario, k: int) -> tuple[int, str]:
    # the prefix-cache hit rate changes the prefill work: a predicted one varies with the rate
    hit = f"|h={scn.analytic.prefix_hit_rate}" if scn.server.prefix_caching else ""
    return (k, (scn.acceptance.model_dump_json() if k > 0 else "") + hit)


def _pieces(
    scn: Scenario, k: int, shared: _Shared
) -> tuple[tuple[int, str], RequestWork, StepCurve]:
    """The work law, step curve and saturation rate of ``(k, acceptance law)``, from ``shared``
    or computed into it."""
    lk = _law_key(scn, k)
    if lk not in shared.works:
        shared.works[lk] = request_work(scn, k)
    w = shared.works[lk]
    if lk not in shared.curves:
        shared.curves[lk] = build_curve(scn, k, w, shared.model)
    c = shared.curves[lk]
    if lk not in shared.sats:
        shared.sats[lk] = step_saturation_rate(c, w)
    return lk, w, c


def _prime(scn: Scenario, k: int, shared: _Shared, rates: Sequence[float]) -> None:
    """Solve the chunk laws the points at ``rates`` (req/s, all replicas) will read from the
    curve of ``(k, acceptance law)`` in one batch (the same floats as one point at a time)."""
    lk, w, c = _pieces(scn, k, shared)
    sat = shared.sats[lk]
    reps = scn.server.replicas
    lams = [float(r) / reps for r in rates]
    items = {(lam, True) if 0 < lam < sat else (min(lam, sat), False) for lam in lams}
    chunk_laws(c, w, sorted(items))


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
    _check_rate_driven(scenario)
    return _predict(scenario, rates, k_values, quantiles, _Shared(build_cost_model(scenario)))


def _shifted_cdfs(
    laws: dict[str, LatencyLaw], api: float
) -> dict[str, Callable[[float], float]]:
    """Each law's CDF as a function of the reported latency (the API delay is added to e2e and
    TTFT after the laws)."""

    def one(law: LatencyLaw, shift: float) -> Callable[[float], float]:
        return lambda x: float(law.cdf(np.asarray([x - shift]))[0])

    return {m: one(law, api if m in ("e2e", "ttft") else 0.0) for m, law in laws.items()}


class LoadPredictor:
    """:func:`predict` of one scenario at many loads (rate, replicas), sharing what does not
    depend on the load: the cost model, the work law, the step curve and the saturation rates.

    The speedup over k = 0 is not computed (``speedup`` and ``break_even_rate`` are NaN,
    ``best_k`` is empty); everything else equals ``predict(scenario.with_overrides(
    {"workload.rate": rate, "server.replicas": replicas}), rates=[], k_values=[k])``.

    Parameters
    ----------
    scenario
        The scenario whose load varies (rate-driven arrivals).
    """

    def __init__(self, scenario: Scenario) -> None:
        _check_rate_driven(scenario)
        self.scenario = scenario
        self._shared = _Shared(build_cost_model(scenario))

    def __call__(self, rate: float, replicas: int, *, quantiles: bool = True) -> Prediction:
        """The prediction at ``rate`` req/s over ``replicas`` replicas (both validated as the
        scenario fields ``workload.rate`` and ``server.replicas``)."""
        base = self.scenario
        if not (0 < rate <= 1e6) or not math.isfinite(rate):
            raise ScenarioError("workload.rate", f"must be in (0, 1e6], got {rate}")
        if not 1 <= int(replicas) <= 4096:
            raise ScenarioError("server.replicas", f"must be in [1, 4096], got {replicas}")
        scn = base.model_copy(
            update={
                "workload": base.workload.model_copy(update={"rate": float(rate)}),
                "server": base.server.model_copy(update={"replicas": int(replicas)}),
            }
        )
        return _predict(scn, [], [], quantiles, self._shared, baseline=False)


def _check_rate_driven(scn: Scenario) -> None:
    if scn.workload.arrival in ("trace", "replay"):
        raise ScenarioError(
            "workload.arrival", "predict needs a rate-driven arrival process, not a trace"
        )


def _predict(
    scn: Scenario,
    rates: Sequence[float] | None,
    k_values: Sequence[int] | None,
    quantiles: bool,
    shared: _Shared,
    baseline: bool = True,
) -> Prediction:
    """:func:`predict` with the rate-independent pieces taken from (and added to) ``shared``;
    ``baseline=False`` skips the k = 0 point the speedup compares with (speedup NaN)."""
    model = shared.model
    reps = scn.server.replicas
    lam = scn.workload.rate / reps  # every router gives each replica rate / replicas on average
    ops: dict[tuple[int, float], OperatingPoint] = {}

    def point(s: Scenario) -> OperatingPoint:
        lk, w, c = _pieces(s, s.spec.k, shared)
        return operating_point(
            s, s.spec.k, lam, work=w, model=model, curve=c, saturation_rate=shared.sats[lk]
        )

    scn, hit = resolve_hit_rate(scn, lam, point)  # prefix cache: given, predicted or off

    def op_for(kk: int, r: float) -> OperatingPoint:
        key = (kk, float(r))
        if key not in ops:
            pk = (float(r), scn.analytic.prefix_hit_rate)
            if kk == 0 and pk in shared.plain:
                ops[key] = shared.plain[pk]
                return ops[key]
            lk, w, c = _pieces(scn, kk, shared)
            ops[key] = operating_point(
                scn, kk, float(r), work=w, model=model, curve=c, saturation_rate=shared.sats[lk]
            )
            if kk == 0:
                shared.plain[pk] = ops[key]
        return ops[key]

    if scn.spec.policy == "fixed":
        k = scn.spec.k
    else:
        # adaptive_k keys its curves by k alone: hand it (and take back) this acceptance law's
        cs = {kk: c for (kk, ak), c in shared.curves.items() if ak == _law_key(scn, kk)[1]}
        k = adaptive_k(scn, lam, cs, model)
        for kk, c in cs.items():
            shared.curves.setdefault(_law_key(scn, kk), c)
    op = op_for(k, lam)
    co = op.coefficients
    law = op.law
    gpu_sat = op.saturation_rate * reps
    lk = _law_key(scn, k)
    if lk not in shared.kv_sats:
        shared.kv_sats[lk] = kv_saturation_rate(scn, op.curve, op.work, op.saturation_rate)
    kv_sat = shared.kv_sats[lk] * reps
    sat = min(gpu_sat, kv_sat)
    stable = lam * reps < gpu_sat and law.stable
    summary: dict[str, Any] = {}
    laws: dict[str, LatencyLaw] = {}
    if quantiles and stable:
        view = op.arrivals
        steps = [local_steps(op, r if view.states > 1 else None) for r in view.rates]
        tm = latency_distribution(co, op.work, law, view, local_lines(op), steps)
        summary.update(tm.stats)
        laws = tm.laws
        p_wait, mean_wait = tm.p_wait, tm.mean_wait
    else:
        for key in LATENCY_KEYS:
            summary[key] = math.nan if stable else math.inf
        p_wait = law.p_wait if law.stable else 1.0
        mean_wait = math.nan
        if stable:
            summary["e2e_mean"] = mean_e2e_gps(law, co)
    api = float(scn.server.api_delay_s)
    if api > 0:
        for key in LATENCY_KEYS:
            if key.startswith(("e2e_", "ttft_")):
                summary[key] = summary[key] + api
    mf = float(mean_latency(co.c1, co.c2, lam)) + api
    summary["e2e_mean_meanfield"] = mf
    summary["e2e_mean_gps"] = mean_e2e_gps(law, co) + api
    summary["throughput_rps"] = lam * reps if stable else sat
    summary["throughput_tps"] = summary["throughput_rps"] * co.output
    summary["tokens_per_step_mean"] = co.tokens_per_step
    # Little's law over all replicas (the API delay stage included)
    summary["in_system_mean"] = lam * reps * summary["e2e_mean"] if stable else math.inf
    summary["batch_mean"] = (
        float((np.minimum(np.arange(law.pmf.shape[0]), co.n_max) * law.pmf).sum())
        if law.stable
        else float(co.n_max)
    )
    summary["p_wait"] = p_wait
    summary["queue_delay_mean"] = mean_wait
    summary["stable"] = bool(stable)
    summary["little_residual"] = 0.0
    summary["k_effective"] = k
    summary["api_delay_s"] = api
    summary["prefix_hit_rate"] = hit.value
    summary["prefix_hit_source"] = hit.source
    summary["prefix_char_time_s"] = hit.state.char_time if hit.state is not None else math.nan
    blocks = kv_blocks_per_request(scn, op.curve)
    summary["kv_demand_mean"] = float(kv_demand(scn, summary["batch_mean"], blocks))
    outside: str | None = None
    summary["p_kv_full"] = 0.0
    speculating = scn.spec.k > 0 or scn.spec.policy == "adaptive"  # (as memory.kv_capacity)
    if speculating not in shared.kv_caps:
        # the engine's capacity: given, derived or unlimited
        shared.kv_caps[speculating] = num_gpu_blocks(scn)
    kv_cap = shared.kv_caps[speculating]
    if kv_cap is not None:
        if law.stable:
            n_eng = np.minimum(np.arange(law.pmf.shape[0]), co.n_max)
            summary["p_kv_full"] = float(law.pmf[kv_demand(scn, n_eng, blocks) > kv_cap].sum())
        else:
            summary["p_kv_full"] = 1.0
        summary["kv_saturated"] = bool(lam * reps >= kv_sat)
        if summary["kv_saturated"]:
            outside = (
                f"KV cache saturated: mean demand {summary['kv_demand_mean']:.0f} of "
                f"{kv_cap} blocks at or past {kv_sat:.3g} req/s "
                "(preemption by recomputation is not in the model)"
            )
        elif stable and summary["p_kv_full"] > KV_PRESSURE:
            outside = (
                f"KV pressure: the requests in the engine need more than the {kv_cap} KV blocks "
                f"{summary['p_kv_full']:.1%} of the time (preemption by recomputation, and the "
                "rare collapses it can set off near the KV limit, are not in the model)"
            )
    else:
        summary["kv_saturated"] = False
    if not stable and outside is None:
        outside = f"past the saturation rate {gpu_sat:.3g} req/s"
    arrivals = arrivals_outside(op.arrivals, gpu_sat / reps)
    if arrivals is not None:
        outside = arrivals if outside is None else f"{outside}; {arrivals}"

    summary.update(slo_stats_from_laws(slo_bounds(scn.slo), _shifted_cdfs(laws, api), summary))

    if k > 0 and baseline:
        op0 = op_for(0, lam)
        co0 = op0.coefficients
        c1r = co.c1 / co0.c1
        c2r = co.c2 / co0.c2
        sp = float(speedup(c1r, c2r, lam * co0.c2)) if lam * co0.c2 < 1 else math.nan
        be = break_even_rate(c1r, c2r, co0.c2) * reps
    elif k > 0:
        sp, be = math.nan, math.nan
    else:
        sp, be = 1.0, math.nan

    ks = sorted(set(k_values) if k_values is not None else {*range(_k_search_max(scn) + 1), k})
    if rates is None:
        sat0 = op_for(0, lam).saturation_rate * reps
        rates = [scn.workload.rate, *(f * sat0 for f in (0.1, 0.25, 0.5, 0.75, 0.9))]
    best: dict[float, int | None] = {}
    for r in rates:
        lat = []
        lr = float(r) / reps
        for kk in ks:
            ok = op_for(kk, lr)
            lat.append(mean_e2e_gps(ok.law, ok.coefficients) if ok.law.stable else math.inf)
        i = int(np.argmin(lat))
        best[float(r)] = ks[i] if math.isfinite(lat[i]) else None
    return Prediction(
        summary=summary,
        c1=co.c1,
        c2=co.c2,
        stages=co.stages,
        saturation_rate=sat,
        speedup=sp,
        break_even_rate=be,
        best_k=best,
        coefficients=co,
        scenario=scn,
        gpu_saturation_rate=gpu_sat,
        kv_saturation_rate=kv_sat,
        saturation_limit=limiting_resource(op.curve, op.work, gpu_sat / reps, kv_sat / reps),
        outside_model=outside,
        latency_laws=laws,
        caveats=caveats(
            op.curve.chunk_cost_cv2,
            lam * reps / gpu_sat,
            p_wait,
            budget_caveat(op.curve, lam, float(summary["batch_mean"])),
        )
        if stable and outside is None
        else [],
    )


def predict_grid(
    scenario: Scenario,
    rates: Sequence[float],
    ks: Sequence[int],
    alphas: Sequence[float] | None = None,
    *,
    quantiles: bool = True,
) -> pd.DataFrame:
    """:func:`predict` over every (rate, k, alpha) of a grid, sharing what does not depend on
    the rate.

    The cost model is built once; the work law, step curve and saturation rates once per
    (k, alpha) (once in all for k = 0, the speedup's baseline). Each row equals
    ``predict(scenario.with_overrides({"workload.rate": r, "spec.k": k,
    "acceptance.alpha": a}), rates=[], k_values=[k], quantiles=quantiles)``.

    Parameters
    ----------
    scenario
        The scenario the grid varies (its rate, ``spec.k`` and ``acceptance.alpha`` are
        replaced per point).
    rates
        Arrival rates (req/s, all replicas).
    ks
        Draft lengths.
    alphas
        Constant per-token acceptance probabilities; ``None`` keeps the scenario's own acceptance
        law (constant, per position or per-request beta) at every point.
    quantiles
        Compute the tail model (p50/p90/p99); False gives means only, about 100x faster.

    Returns
    -------
    pandas.DataFrame
        One row per point, ordered rate-major then k then alpha: ``rate``, ``k``, ``alpha``
        (the law's mean when ``alphas`` is ``None``), the prediction's summary keys,
        ``saturation_rate``, ``speedup``, ``outside_model``.
    """
    import pandas as pd

    _check_rate_driven(scenario)
    shared = _Shared(build_cost_model(scenario))
    rows: dict[tuple[int, int, int], dict[str, Any]] = {}
    # each rate validated once: a point's scenario is its (k, alpha) scenario with that rate's
    # workload (no cross-field check ties the rate to k or alpha, and the two overrides touch
    # different blocks), the same fields as with_overrides of all three would give
    workloads = [scenario.with_overrides({"workload.rate": float(r)}).workload for r in rates]
    # (k, alpha) outermost so one curve serves every rate; rows are put back in grid order
    laws: list[float | None] = [None] if alphas is None else [float(a) for a in alphas]
    for ik, k in enumerate(ks):
        for ia, a in enumerate(laws):
            over: dict[str, Any] = {"spec.k": int(k)}
            if a is not None:
                over["acceptance.alpha"] = a
            base = scenario.with_overrides(over)
            if base.spec.policy == "fixed" and base.workload.arrival not in ("trace", "replay"):
                _prime(base, int(k), shared, rates)
                if int(k) > 0:
                    _prime(base, 0, shared, rates)
            for ir, r in enumerate(rates):
                scn = base.model_copy(update={"workload": workloads[ir]})
                p = _predict(scn, [], [int(k)], quantiles, shared)
                rows[(ir, ik, ia)] = {
                    "rate": float(r),
                    "k": int(k),
                    "alpha": base.acceptance.mean_alpha if a is None else a,
                    **p.summary,
                    "saturation_rate": p.saturation_rate,
                    "speedup": p.speedup,
                    "outside_model": p.outside_model,
                }
            if int(k) > 0:
                # no later pair reads this curve's chunk laws (k = 0's serve every pair): free
                # them (recomputed, the same floats, if the grid repeats this pair); a predicted
                # hit rate keys its curves by the hit rate of each rate instead
                pair = shared.curves.get(_law_key(base, int(k)))
                if pair is not None:
                    pair.forget_laws()
    return pd.DataFrame([rows[key] for key in sorted(rows)])
