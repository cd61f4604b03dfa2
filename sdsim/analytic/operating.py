"""The operating point of one replica: real step curve, GPS law, local lines, saturation, KV.

Everything the analytic model says about one (scenario, draft length, rate per replica) rests
on the cost model's own step time ``t(n)`` (:mod:`sdsim.analytic.stepcurve`):

* **GPS birth-death law** of the number in system ``N`` (:mod:`sdsim.analytic.gps`): each request
  spends ``nu = E[S] + P`` steps in the engine (``P`` prefill chunks, ``E[S]`` decode steps), a
  state with ``n`` in system has ``n E[S] / nu`` of them decoding, and a step there lasts
  ``t(n E[S] / nu)`` including the prefill chunks it carries;
* **saturation** from the real curve: the birth-death law exists while
  ``lambda nu t(n_max E[S] / nu) / n_max < 1`` (the ratio at the concurrency cap, where the
  tail of the law is geometric) and prefill alone leaves time to decode; found by bisection
  because ``t`` itself grows with lambda (more prefill chunks per step);
* **local lines** (:func:`~sdsim.analytic.coefficients.tangent_coefficients`): the tangent of the
  real curve averaged over the decode batches a request meets under that law;
* **KV cache**: a request in the engine holds on average ``(ctx + k) / block_size + 1/2`` blocks
  (its mean context plus the look-ahead slots, the last block half full), a shared system
  prompt held by several of them counted once; with ``E[min(N, n_max)]`` requests in the
  engine the mean demand reaches ``server.num_gpu_blocks`` at the KV
  saturation rate, past which preemption by recomputation (not in this model) takes over.
"""

from __future__ import annotations

__all__ = [
    "OperatingPoint",
    "chunk_laws",
    "derive_coefficients",
    "dispersion",
    "gps_law_from_curve",
    "kv_blocks_per_request",
    "kv_saturation_rate",
    "local_lines",
    "local_steps",
    "operating_point",
    "step_saturation_rate",
]

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from sdsim._jit import jit_eager
from sdsim.analytic.arrivals import ArrivalView, arrival_view
from sdsim.analytic.coefficients import (
    Coefficients,
    concurrency_cap,
    tangent_coefficients,
)
from sdsim.analytic.gps import BirthDeath, birth_death, modulated_birth_death, noisy
from sdsim.analytic.prefix import PROMPT_BINS, kv_demand, prefill_law, prompt_means
from sdsim.analytic.stepcurve import (
    LocalSteps,
    PromptLaw,
    StepCurve,
    build_step_curve,
    mean_context,
)
from sdsim.analytic.work import RequestWork, discretize_length, request_work
from sdsim.costs.build import build_cost_model
from sdsim.costs.step import StepCostModel
from sdsim.memory import num_gpu_blocks
from sdsim.scenario import Scenario

FloatArray = npt.NDArray[np.float64]



@dataclass
class OperatingPoint:
    """One replica at one draft length and arrival rate.

    Attributes
    ----------
    k, rate
        Draft length and arrival rate per replica (req/s).
    curve
        The real step times.
    work
        Decode-steps law of a request.
    law
        GPS birth-death law of the number in system (``stable`` False past saturation).
    coefficients
        Local lines and stage coefficients at this point.
    saturation_rate
        Largest sustainable rate of this replica from the real step curve (req/s).
    arrivals
        How the model sees the replica's arrivals (:mod:`sdsim.analytic.arrivals`).
    """

    k: int
    rate: float
    curve: StepCurve
    work: RequestWork
    law: BirthDeath
    coefficients: Coefficients
    saturation_rate: float
    arrivals: ArrivalView


def _decode_share(curve: StepCurve, work: RequestWork) -> tuple[float, float]:
    nu = work.mean_steps + curve.chunks_per_request
    return nu, work.mean_steps / nu


def gps_law_from_curve(
    curve: StepCurve, work: RequestWork, rate: float, arrivals: ArrivalView | None = None
) -> BirthDeath:
    """Law of the number in system of one replica at ``rate`` (req/s): the GPS birth-death law
    for arrivals in one state (Poisson by default; their index of dispersion enters
    :func:`dispersion`), the quasi-birth-death law of :func:`~sdsim.analytic.gps.
    modulated_birth_death` for two (bursts), each state's departures priced with the prefill
    chunks of its own arrival rate."""
    view = arrivals if arrivals is not None else ArrivalView(rate)
    p = curve.chunks_per_request
    if rate <= 0 or not curve.stable(rate * p):
        return BirthDeath(np.zeros(0), rate, curve.n_max, False)
    if view.states == 1:
        ((pq, t),) = chunk_laws(curve, work, [(rate, True)])
        return _gps_law(curve, work, rate, pq, t, view.ca2)
    births, deaths = [], []
    for lam in view.rates:
        # a state's prefill load at its own rate (capped just short of what prefill alone fills)
        lam_c = max(min(float(lam), _prefill_limit(curve) * (1 - 1e-9)), 1e-12)
        ((pq, t),) = chunk_laws(curve, work, [(lam_c, False)])
        mu = _departures(curve, work, lam_c, pq, t)
        f = dispersion(curve, work, lam_c, pq, t, view.ca2)
        # level n's birth pairs with level n + 1's death: both at n + 1's noise
        up, down = noisy(lam, mu, f)
        births.append(up)
        deaths.append(down)
    return modulated_birth_death(
        np.vstack(births), np.vstack(deaths), np.asarray(view.leave), rate
    )


def _step_scale(curve: StepCurve) -> float:
    """A step's length for the clumping of arrivals: a decode step with one request and one
    chunk of prefill (the order of the steps arrivals fall into)."""
    return float(curve.mixed[min(1, curve.n_max), 1])


def _prefill_limit(curve: StepCurve) -> float:
    """Arrival rate at which prefill alone fills the GPU (``inf`` without prefill cost)."""
    top = float((curve.mixed[:, -1] - curve.mixed[:, -2]).max())
    return 1.0 / (curve.chunks_per_request * top) if top > 0 else math.inf


def dispersion(
    curve: StepCurve,
    work: RequestWork,
    rate: float,
    pq: FloatArray,
    t: FloatArray,
    ca2: float = 1.0,
) -> FloatArray:
    """``F(n)``, ``n = 1..n_max``: the variance of the noise driving the number in system,
    relative to Poisson arrivals whose prefill costs nothing.

    An arrival's prefill makes the step it lands in longer by ``c_p`` (its chunks' cost at that
    batch), during which ``lambda c_p`` more requests arrive on average: a step-time branching
    process with ratio ``m = lambda c_p``, so that the arrivals a batch takes in come in
    clusters whose counts have index of dispersion ``1 / (1 - m)^2`` (Borel clusters; in time
    terms: every arrival also holds back the ``lambda c_p / (1 - lambda c_p)`` departures its
    prefill delays). With prompts of random length a chunk's cost has a squared CV ``v``
    (:attr:`~sdsim.analytic.stepcurve.StepCurve.chunk_cost_cv2`): an arrival's offspring are
    Poisson with a random mean, variance ``m + m^2 v``, and a Galton-Watson cluster of offspring
    mean ``m`` and variance ``s^2`` has index ``s^2 / (1 - m)^2 + 1 / (1 - m)``, i.e. ``(1 + m^2
    v) / (1 - m)^2``. Arrivals that are themselves over- or under-dispersed (index ``ca2``)
    multiply it. Clustered arrivals stay together in the batch for the share ``kappa`` of a
    life (:meth:`~sdsim.analytic.work.RequestWork.shared_life`), so the number in system has
    ``Var N = E[N] (1 + kappa (I - 1))`` with ``I = ca2 (1 + m^2 v) / (1 - m)^2``: the GPS law's own
    over-dispersion ``1 / (1 - rho)`` then acts on that noise (:func:`~sdsim.analytic.gps.
    birth_death`'s ``dispersion``). With prefill that is cheap beside a decode step
    (``m -> 0``) and Poisson arrivals, ``F = 1``.
    """
    _, frac = _decode_share(curve, work)
    out = np.empty(curve.n_max)
    first = curve.mixed[:, 1] - curve.mixed[:, 0]
    # arrivals more regular than Poisson (ca2 < 1: constant gaps, round-robin replicas) count
    # as Poisson here: a birth-death law narrowed below Poisson's noise also loses mass near an
    # empty server, where its mean must stay lambda E[T] (at 5% load on capacity-70b-chat.yaml
    # the law's mean fell 16%); their lower noise enters a life's variance instead
    a2 = max(float(ca2), 1.0)
    _dispersion(np.ascontiguousarray(pq), t, curve.decode, np.ascontiguousarray(first),
                float(curve.chunks_per_request), frac, float(rate),
                work.shared_life(curve.chunks_per_request), a2, curve.chunk_cost_cv2,
                out)
    # a full batch admits only as many as it completes, whatever arrives: the arrivals that
    # queue bring no prefill with them, so above the cap (the last entry, which the queue's
    # levels take) their own burstiness is all the noise there is
    out[-1] = 1.0 + work.shared_life(curve.chunks_per_request) * (a2 - 1.0)
    return out


@jit_eager("void(f8[:, ::1], f8[::1], f8[::1], f8[::1], f8, f8, f8, f8, f8, f8, f8[::1])")
def _dispersion(
    pq: FloatArray,
    t: FloatArray,
    decode: FloatArray,
    first: FloatArray,
    chunks: float,
    frac: float,
    rate: float,
    kappa: float,
    ca2: float,
    cost_cv2: float,
    out: FloatArray,
) -> None:  # compiled
    """:func:`dispersion`'s ``F(n)`` into ``out`` (``n = 1..len(out)``): a chunk's cost at a
    row is :meth:`~sdsim.analytic.stepcurve.StepCurve.chunk_cost_from`'s (the step's prefill
    part over the chunks it carries on average, the first chunk's cost where it carries almost
    none), read at the decode batch ``n frac`` (linear interpolation on the integer grid);
    ``m = rate x chunks x cost`` capped at 0.9, ``F = max(1 + kappa (ca2 (1 + m^2 cost_cv2) /
    (1 - m)^2 - 1), 0.05)``."""
    last = t.shape[0] - 1
    for i in range(out.shape[0]):
        x = max((i + 1) * frac, 1.0)
        j = min(int(x), last)
        k = min(j + 1, last)
        c = 0.0
        for r, wgt in ((j, 1.0 - (x - j)), (k, x - j)):
            if wgt <= 0.0:
                continue
            eq = 0.0
            for q in range(pq.shape[1]):
                eq += pq[r, q] * q
            c += wgt * ((t[r] - decode[r]) / eq if eq > 1e-9 else first[r])
        m = min(rate * c * chunks, 0.9)
        index = ca2 * (1.0 + m * m * cost_cv2) / ((1.0 - m) * (1.0 - m))
        out[i] = max(1.0 + kappa * (index - 1.0), 0.05)


def _step_times(
    curve: StepCurve, work: RequestWork, rate: float, pq: FloatArray, t: FloatArray
) -> Callable[[FloatArray], FloatArray]:
    """``n -> t(n)``: the mean step with ``n`` in system (the decoding share of them, the
    chunk law's prefill), stretched below the cap by the wait for the step in progress."""
    nu, frac = _decode_share(curve, work)
    grid = np.arange(t.shape[0], dtype=np.float64)
    # an arrival first waits out the step in progress (length-biased: half a step plus half its
    # squared CV), in system but holding no slot; below the cap it stretches the time in system
    # by that many steps (1-4% of a short request's life), at the cap it is queueing anyway
    n_mid = _n_mid(curve, nu, rate, float(t[1]))
    tt = curve.mixed[n_mid]
    m1 = float(pq[n_mid] @ tt)
    cv2 = max(float(pq[n_mid] @ (tt * tt)) / (m1 * m1) - 1.0, 0.0)
    stretch = 1.0 + 0.5 * (1.0 + cv2) / nu

    def fn(n: FloatArray) -> FloatArray:
        nd = n * frac
        # below one decoding request the state is a lone request partly in prefill: its decode
        # share of one step (its prefill time is added to the latency separately)
        base = np.where(nd >= 1.0, np.interp(nd, grid, t), t[1] * np.maximum(nd, 1e-9))
        return np.asarray(np.where(n < curve.n_max, base * stretch, base))

    return fn


def _departures(
    curve: StepCurve, work: RequestWork, rate: float, pq: FloatArray, t: FloatArray
) -> FloatArray:
    """``phi(n) = n / (nu t(n))`` for ``n = 1..n_max``."""
    nu, _ = _decode_share(curve, work)
    n = np.arange(1, curve.n_max + 1, dtype=np.float64)
    return n / (nu * _step_times(curve, work, rate, pq, t)(n))


def _gps_law(
    curve: StepCurve,
    work: RequestWork,
    rate: float,
    pq: FloatArray,
    t: FloatArray,
    ca2: float = 1.0,
    noise: bool = True,
) -> BirthDeath:
    """The one-state law of :func:`gps_law_from_curve` with the chunk law ``(pq, t)`` given
    (``noise=False``: the plain GPS law, without :func:`dispersion`)."""
    nu, _ = _decode_share(curve, work)
    fn = _step_times(curve, work, rate, pq, t)
    disp = dispersion(curve, work, rate, pq, t, ca2) if noise else None
    return birth_death(rate, nu, fn, curve.n_max, disp)


def _n_mid(curve: StepCurve, nu: float, rate: float, t1: float) -> int:
    return int(min(max(round(rate * nu * t1), 1), curve.n_max))


# The chunk law of every decode batch n is a small chain solved per row (compiled GTH), the bulk of
# the model's cost. An operating point reads t(n) and the chunk costs only where its birth-death law
# has mass (up to where the law is cut, its tail below 1e-12), at the concurrency cap (stability)
# and at one mid row; rows beyond the law's reach shape only probabilities that the law then cuts.
# So each point solves exactly: every _COARSE-th row, the rows around the cap, the mid row, and
# every row up to a margin past where an approximate law (t interpolated between the coarse rows) is
# cut; the rows it skips take interpolated values. Which rows are exact depends only on the curve,
# the work law and the rate, never on what else was solved, so a point's floats are the same whether
# it is predicted alone or in a grid.
_COARSE = 16


def _base_rows(curve: StepCurve, frac: float) -> npt.NDArray[np.int64]:
    ns = curve.n_max + 1
    top = int(min(max(math.floor(curve.n_max * frac), 0), curve.n_max))
    rows = {0, 1, 2, ns - 1, max(top - 1, 0), top, min(top + 1, curve.n_max)}
    rows.update(range(0, ns, _COARSE))
    return np.array(sorted(rows), dtype=np.int64)


def _assemble(
    curve: StepCurve,
    chunk_rate: float,
    base: npt.NDArray[np.int64],
    exact: npt.NDArray[np.int64],
) -> tuple[FloatArray, FloatArray]:
    """The chunk law with ``exact`` rows as solved and the others interpolated from ``base``."""
    pq_s, t_s, _ = curve.rows_solved(chunk_rate)
    ns = t_s.shape[0]
    rows = np.arange(ns)
    t = np.interp(rows.astype(np.float64), base.astype(np.float64), t_s[base])
    pq = pq_s[base[np.searchsorted(base, rows, side="right") - 1]]
    t[exact] = t_s[exact]
    pq[exact] = pq_s[exact]
    return pq, t


def chunk_laws(
    curve: StepCurve, work: RequestWork, items: Sequence[tuple[float, bool]]
) -> list[tuple[FloatArray, FloatArray]]:
    """The chunk laws ``(pq, t)`` operating points read, exact wherever they read them.

    Parameters
    ----------
    curve, work
        Step curve and work law of one draft length.
    items
        ``(rate, with_law)``: arrival rate per replica (req/s; the chunk rate is ``rate x
        chunks_per_request``) and whether the birth-death law at that rate is wanted (else only
        the rows around the concurrency cap and a few others are exact: a saturated point's
        lines are taken there). Solved in one batch (rows are independent, so the floats do not
        depend on the batch).

    Returns
    -------
    list of (pq, t)
        Per item: ``pq[n, q]`` and ``t[n]`` (see :meth:`StepCurve.chunk_law`), exact at every row
        the operating point reads and interpolated elsewhere.
    """
    p = curve.chunks_per_request
    nu, frac = _decode_share(curve, work)
    base = _base_rows(curve, frac)
    keys = [(float(lam) * p, bool(law)) for lam, law in items]
    first = {k: i for i, k in reversed(list(enumerate(keys)))}
    out = {k: curve._assembled[k] for k in first if k in curve._assembled}
    todo = [(i, float(items[i][0])) for k, i in first.items() if k not in out]
    if todo:
        curve.solve_rows([(keys[i][0], base) for i, _ in todo])
        mids: dict[int, npt.NDArray[np.int64]] = {}
        for i, lam in todo:
            t1 = float(curve.rows_solved(keys[i][0])[1][1])
            mids[i] = np.union1d(base, [_n_mid(curve, nu, float(lam), t1)])
        curve.solve_rows([(keys[i][0], mids[i]) for i, _ in todo if keys[i][1]])
        exact: dict[int, npt.NDArray[np.int64]] = {}
        for i, lam in todo:
            exact[i] = mids[i]
            if keys[i][1]:
                pq_a, t_a = _assemble(curve, keys[i][0], mids[i], mids[i])
                law = _gps_law(curve, work, float(lam), pq_a, t_a, noise=False)
                if law.stable:
                    # the exact plain law is cut where the approximate one is, give or take
                    # rows of relative mass 1e-3: a quarter more and 16 rows cover that many
                    # times over; the law with the prefill bursts' noise reaches a little
                    # further, its mass there (~1e-6) on rows interpolated between exact ones
                    reach = math.ceil((1.25 * law.pmf.shape[0] + 16) * frac) + 2
                    exact[i] = np.union1d(mids[i], np.arange(min(reach, curve.n_max) + 1))
        curve.solve_rows([(keys[i][0], exact[i]) for i, _ in todo])
        for i, _ in todo:
            out[keys[i]] = _assemble(curve, keys[i][0], mids[i], exact[i])
        if len(curve._assembled) + len(todo) > 256:
            curve._assembled.clear()
        curve._assembled.update({keys[i]: out[keys[i]] for i, _ in todo})
    return [out[k] for k in keys]


def step_saturation_rate(curve: StepCurve, work: RequestWork) -> float:
    """Largest arrival rate (req/s, one replica) the real step curve sustains.

    The rate where ``lambda nu t_lambda(n_max E[S] / nu) / n_max`` reaches 1 (``t_lambda`` the
    mean step with the prefill chunks of rate lambda), or where prefill alone fills the GPU.
    """
    nu, frac = _decode_share(curve, work)
    p = curve.chunks_per_request
    top = curve.n_max * frac

    def excess(lam: float) -> float:
        return lam * nu * curve.step_time_at(top, lam * p) / curve.n_max - 1.0

    hi = curve.n_max / (nu * float(np.interp(top, np.arange(curve.decode.shape[0]), curve.decode)))
    # prefill alone fills the GPU at chunk_rate x (largest marginal chunk cost) = 1
    marg = float((curve.mixed[:, -1] - curve.mixed[:, -2]).max())
    if p > 0 and marg > 0:
        hi = min(hi, 1.0 / (p * marg))
    # t_lambda >= the decode-only step, so hi is unstable (or at the prefill limit); the root of
    # the increasing excess(lam) is bracketed in [0, hi] and found by regula falsi with the
    # Illinois modification, keeping lo on the stable side, to 1e-15 relative
    lo, f_lo = 0.0, -1.0
    f_hi = excess(hi)
    if f_hi < 0.0:
        # the prefill limit comes first: the largest stable rate is just below it
        return hi * (1.0 - 1e-15)
    side = 0
    for _ in range(100):
        if hi - lo <= 1e-15 * hi:
            break
        mid = lo - f_lo * (hi - lo) / (f_hi - f_lo)
        if not lo < mid < hi:
            mid = 0.5 * (lo + hi)
        f_mid = excess(mid)
        if f_mid < 0.0 and curve.stable(mid * p):
            lo, f_lo = mid, f_mid
            if side == -1:
                f_hi *= 0.5
            side = -1
        else:
            hi, f_hi = mid, max(f_mid, 0.0)
            if side == 1:
                f_lo *= 0.5
            side = 1
    return lo


def kv_blocks_per_request(scn: Scenario, curve: StepCurve) -> float:
    """Mean KV blocks a request in the engine holds: ``(ctx + k) / block_size + 1/2``."""
    return (curve.ctx + curve.k) / scn.server.block_size + 0.5


def _engine_mean(law: BirthDeath) -> float:
    n = np.arange(law.pmf.shape[0], dtype=np.float64)
    return float((np.minimum(n, law.n_max) * law.pmf).sum())


def kv_saturation_rate(
    scn: Scenario, curve: StepCurve, work: RequestWork, gpu_rate: float
) -> float:
    """Rate (req/s, one replica) at which the mean KV demand reaches ``num_gpu_blocks`` (a
    shared prompt held by several running requests counted once: :func:`~sdsim.analytic.prefix.
    kv_demand`).

    ``inf`` for an unlimited cache or when the demand stays below capacity up to ``gpu_rate``.
    """
    cap = num_gpu_blocks(scn)  # the engine's capacity: given, derived or unlimited
    if cap is None:
        return math.inf
    blocks = kv_blocks_per_request(scn, curve)
    if float(kv_demand(scn, curve.n_max, blocks)) <= cap:
        return math.inf

    def demand(lam: float) -> float:
        law = gps_law_from_curve(curve, work, lam, arrival_view(scn, lam, _step_scale(curve)))
        return float(kv_demand(scn, _engine_mean(law), blocks)) if law.stable else math.inf

    lo, hi = 0.0, gpu_rate * (1 - 1e-9)
    f_hi = demand(hi) - cap
    if f_hi < 0:
        return math.inf
    # the demand rises smoothly with the rate: regula falsi with the Illinois modification,
    # to 1e-7 of the GPU limit (6-10 laws instead of bisection's 24), bisecting where the
    # demand is infinite (an unstable law)
    f_lo = -float(cap)
    side = 0
    for _ in range(60):
        if hi - lo <= 1e-7 * gpu_rate:
            break
        mid = lo - f_lo * (hi - lo) / (f_hi - f_lo) if math.isfinite(f_hi) else 0.5 * (lo + hi)
        if not lo < mid < hi:
            mid = 0.5 * (lo + hi)
        f_mid = demand(mid) - cap
        if f_mid < 0:
            lo, f_lo = mid, f_mid
            if side == -1:
                f_hi *= 0.5
            side = -1
        else:
            hi, f_hi = mid, f_mid
            if side == 1:
                f_lo *= 0.5
            side = 1
    return 0.5 * (lo + hi)


def build_curve(
    scn: Scenario, k: int, work: RequestWork, model: StepCostModel | None = None
) -> StepCurve:
    """The step curve of a scenario at draft length ``k``."""
    m = model if model is not None else build_cost_model(scn)
    pm = prompt_means(scn)  # whole prompt (context) and the part prefilled (prefix cache)
    return build_step_curve(
        m,
        k,
        mean_context(pm.context, work),
        pm.prefill,
        scn.server.max_num_batched_tokens,
        concurrency_cap(scn, k),
        _prompt_law(scn, pm.hit_rate),
    )


def _prompt_law(scn: Scenario, hit: float) -> PromptLaw | None:
    """The law of the prefilled prompt lengths the step curve prices chunks with: the workload's
    prompt law (no prefix-cache hits, no shared prefixes), a session turn's prefill law
    (:func:`~sdsim.analytic.prefix.prefill_law`), else ``None`` (every chunk at the mean
    prefill)."""
    w = scn.workload
    if w.sessions is not None:
        return prefill_law(scn)  # turns: the conversation so far, less what the cache holds
    if hit > 0 or w.shared_prefix is not None:
        return None
    lengths, weights = discretize_length(w.prompt_tokens, PROMPT_BINS)
    return PromptLaw(lengths, weights, np.zeros(lengths.shape[0]))


def operating_point(
    scn: Scenario,
    k: int,
    rate: float,
    *,
    work: RequestWork | None = None,
    model: StepCostModel | None = None,
    curve: StepCurve | None = None,
    saturation_rate: float | None = None,
) -> OperatingPoint:
    """The operating point of one replica at draft length ``k`` and ``rate`` req/s.

    Parameters
    ----------
    scn
        Scenario.
    k
        Draft length.
    rate
        Arrival rate per replica (req/s).
    work, model, curve
        Precomputed pieces (saves time when many rates share them).
    saturation_rate
        ``step_saturation_rate(curve, work)`` if already known (it does not depend on the rate).

    Returns
    -------
    OperatingPoint
    """
    m = model if model is not None else build_cost_model(scn)
    w = work if work is not None else request_work(scn, k)
    c = curve if curve is not None else build_curve(scn, k, w, m)
    sat = step_saturation_rate(c, w) if saturation_rate is None else saturation_rate
    view = arrival_view(scn, rate, _step_scale(c))
    law = gps_law_from_curve(c, w, rate, view) if 0 < rate < sat else None
    _, frac = _decode_share(c, w)
    if law is not None and law.stable:
        n = np.arange(law.pmf.shape[0], dtype=np.float64)
        # the decode batch a tagged request meets: the others it finds plus itself (PASTA)
        batches = np.maximum(np.minimum(n + 1, c.n_max) * frac, 1.0)
        weights = law.pmf
    else:
        law = law if law is not None else BirthDeath(np.zeros(0), rate, c.n_max, False)
        batches = np.array([max(c.n_max * frac, 1.0)])
        weights = np.array([1.0])
    chunk_rate = min(rate, sat) * c.chunks_per_request
    ((pq, t),) = chunk_laws(c, w, [(min(rate, sat), law.stable)])
    co = tangent_coefficients(c, w, c.prefill_mean, c.alone, batches, weights, chunk_rate, (pq, t))
    return OperatingPoint(k, rate, c, w, law, co, sat, view)


def local_lines(
    op: OperatingPoint,
) -> Callable[[npt.NDArray[np.float64]], tuple[FloatArray, FloatArray, FloatArray]]:
    """``n -> (a, b, c_p)``: tangent of the real decode step around ``n`` others in system.

    For a tagged request that finds ``n`` others, the decode batch is ``(n + 1) E[S] / nu``;
    ``b`` is the slope of the decode step there (per request in system), ``a`` the intercept that
    makes ``a + b (n + 1)`` the real step, and ``c_p`` the mean time its prompt's chunks add to
    a step of that batch. The tail model uses them per ``n`` (:mod:`sdsim.analytic.tails`).
    """
    c = op.curve
    _, frac = _decode_share(c, op.work)
    grid = np.arange(c.decode.shape[0], dtype=np.float64)
    grad = c.slopes_of("decode")
    lam = min(op.rate, op.saturation_rate)
    ((pq, t),) = chunk_laws(c, op.work, [(lam, op.law.stable)])
    cpc = c.chunk_cost_from(pq, t) * c.chunks_per_request

    def fn(n: npt.NDArray[np.float64]) -> tuple[FloatArray, FloatArray, FloatArray]:
        m = np.asarray(n, dtype=np.float64) + 1.0
        x = np.clip(m * frac, 1.0, float(c.n_max))
        b = np.interp(x, grid, grad) * frac
        a = np.interp(x, grid, c.decode) - b * m
        return a, b, np.interp(x, grid, cpc)

    return fn


def local_steps(op: OperatingPoint, rate: float | None = None) -> LocalSteps:
    """The chunk law (at ``rate``, default the operating point's), step table and prompt shifts
    of the operating point's curve (:class:`~sdsim.analytic.stepcurve.LocalSteps`)."""
    c = op.curve
    _, frac = _decode_share(c, op.work)
    lam = min(op.rate if rate is None else float(rate), op.saturation_rate)
    lam = min(lam, _prefill_limit(c) * (1 - 1e-9))
    ((pq, _),) = chunk_laws(c, op.work, [(max(lam, 1e-12), op.law.stable and rate is None)])
    return LocalSteps(
        pq, c.mixed, c.prompt_shift, c.prompt_w, frac, c.chunk_cap, c.chunk_cost_cv2
    )


def derive_coefficients(
    scn: Scenario,
    k: int | None = None,
    work: RequestWork | None = None,
    rate: float | None = None,
) -> Coefficients:
    """Derive the stage coefficients from the scenario's StepCostModel (no simulation).

    Parameters
    ----------
    scn
        Scenario; its ``costs`` block chooses the StepCostModel via ``build_cost_model``.
    k
        Draft length; defaults to ``scn.spec.k``.
    work
        Precomputed :func:`~sdsim.analytic.work.request_work` for this k (saves time).
    rate
        Arrival rate per replica of the operating point the lines are the tangent at; default
        the scenario's rate split over its replicas.

    Returns
    -------
    Coefficients
    """
    kk = scn.spec.k if k is None else int(k)
    lam = scn.workload.rate / scn.server.replicas if rate is None else float(rate)
    return operating_point(scn, kk, lam, work=work).coefficients
