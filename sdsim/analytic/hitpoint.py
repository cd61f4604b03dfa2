"""The prefix cache's hit rate at an operating point: the fixed point of the hit-rate model
(:func:`sdsim.analytic.prefix.cache_state`) and the model's own latency.

The hit rate lowers the prefill work, which lowers the latency and the requests in the engine;
those set how many blocks the running requests hold and how long a shared prompt stays held,
which set the characteristic time and so the hit rate. Starting from an empty engine (no
running request, every freed block in the free list: the highest hit rate), each round prices
the operating point at the current hit rate and recomputes the hit rate from its mean requests
in the engine, their KV blocks and the mean time in system, until two rounds agree to
:data:`HIT_TOL` (two or three rounds on the shipped scenarios: the hit rate moves the latency
little and the latency moves the hit rate little). Past saturation (an unstable law) the last
stable round's hit rate is kept.
"""

from __future__ import annotations

__all__ = [
    "HIT_ROUNDS",
    "HIT_TOL",
    "HitRate",
    "consistent_saturation",
    "hit_source",
    "resolve_hit_rate",
    "with_hit_rate",
]

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from sdsim.analytic.operating import OperatingPoint, kv_blocks_per_request
from sdsim.analytic.prefix import CacheState, cache_state
from sdsim.scenario import Scenario

# Rounds of the fixed point at most, and the change in hit rate that ends it. Hit rates are
# rounded to 1e-4 so that nearby rates share step curves.
HIT_ROUNDS = 6
HIT_TOL = 5e-4


@dataclass(frozen=True)
class HitRate:
    """The hit rate a prediction used, and where it came from.

    Attributes
    ----------
    value
        Share of prompt tokens served from the prefix cache.
    source
        ``"given"`` (``analytic.prefix_hit_rate``), ``"predicted"`` (the cache model) or
        ``"off"`` (``server.prefix_caching: false``).
    state
        The predicted cache (characteristic time, shared blocks held), or ``None``.
    """

    value: float
    source: str
    state: CacheState | None = None


def hit_source(scn: Scenario) -> str:
    """``"off"``, ``"given"`` or ``"predicted"`` for a scenario."""
    if not scn.server.prefix_caching:
        return "off"
    return "given" if scn.analytic.prefix_hit_rate is not None else "predicted"


def with_hit_rate(scn: Scenario, hit: float) -> Scenario:
    """The scenario with ``analytic.prefix_hit_rate`` set (rounded to 1e-4)."""
    h = min(max(round(float(hit), 4), 0.0), 0.9999)
    return scn.model_copy(
        update={"analytic": scn.analytic.model_copy(update={"prefix_hit_rate": h})}
    )


def resolve_hit_rate(
    scn: Scenario, rate: float, point: Callable[[Scenario], OperatingPoint]
) -> tuple[Scenario, HitRate]:
    """The scenario with its hit rate set, and the hit rate.

    Parameters
    ----------
    scn
        Scenario.
    rate
        Request rate per replica (req/s).
    point
        The operating point of a scenario (at this rate and the predicted draft length).

    Returns
    -------
    scenario, HitRate
        With caching off or a given hit rate, ``scn`` unchanged.
    """
    src = hit_source(scn)
    if src == "off":
        return scn, HitRate(0.0, src)
    if src == "given":
        return scn, HitRate(float(scn.analytic.prefix_hit_rate or 0.0), src)
    if scn.workload.shared_prefix is None and scn.workload.sessions is None:
        return scn, HitRate(0.0, src)  # nothing is shared: nothing to hit, at any load
    state = cache_state(scn, rate, 0.0, 0.0)
    cur = with_hit_rate(scn, state.hit_rate)
    for _ in range(HIT_ROUNDS):
        op = point(cur)
        if not op.law.stable:
            break
        law, co = op.law, op.coefficients
        in_engine = float((np.minimum(np.arange(law.pmf.shape[0]), co.n_max) * law.pmf).sum())
        hold = law.mean_sojourn + co.c_p  # time in system: Little's, plus its own prefill
        if not math.isfinite(hold):
            break
        state = cache_state(scn, rate, in_engine, hold, kv_blocks_per_request(cur, op.curve))
        nxt = with_hit_rate(scn, state.hit_rate)
        done = abs(state.hit_rate - float(cur.analytic.prefix_hit_rate or 0.0)) < HIT_TOL
        cur = nxt
        if done:
            break
    return cur, HitRate(float(cur.analytic.prefix_hit_rate or 0.0), src, state)


def consistent_saturation(saturation_at: Callable[[float], float], rel_tol: float = 1e-3) -> float:
    """The saturation rate when the hit rate is predicted: the rate ``r`` at which the server,
    with the hit rate it has at ``r``, saturates (``r = saturation_at(r)``).

    A predicted hit rate falls with the load (more blocks freed per second and more held by
    running requests: a shorter characteristic time), so the saturation rate of the hit rate at
    one rate overstates the server's when that rate is below it. Bisection on
    ``saturation_at(r) - r`` over ``[0, saturation_at(1e-3)]`` (the highest hit rate's).

    Parameters
    ----------
    saturation_at
        Rate (req/s) -> the saturation rate of the prediction at that rate.
    rel_tol
        Relative width of the final bracket.
    """
    hi = saturation_at(1e-3)
    lo = 0.0
    if not math.isfinite(hi):
        return hi
    while hi - lo > rel_tol * hi:
        mid = 0.5 * (lo + hi)
        if saturation_at(mid) > mid:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)
