"""Where the closed-form model's answer holds, and how far to trust it where it holds roughly.

:func:`~sdsim.analytic.prediction.predict` marks a prediction ``outside_model`` where the model
does not describe the server (past saturation, KV pressure, bursts it cannot follow:
:data:`KV_PRESSURE`, :func:`arrivals_outside`) and attaches ``caveats`` where it is inside the
model but a measured error exceeds validation's tolerances (:func:`caveats`). Each threshold
says what was measured to set it (notes/analytic.md). :func:`limiting_resource` names what
bounds the sustainable rate.
"""

from __future__ import annotations

__all__ = [
    "BUDGET_SHARE_CAVEAT",
    "CAVEAT_LOAD",
    "CHUNK_CV2_CAVEAT",
    "KV_PRESSURE",
    "LONGER_THAN_ROOM_CAVEAT",
    "P_WAIT_CAVEAT",
    "arrivals_outside",
    "budget_caveat",
    "caveats",
    "limiting_resource",
]

import math

import numpy as np

from sdsim.analytic.arrivals import ArrivalView
from sdsim.analytic.stepcurve import StepCurve
from sdsim.analytic.work import RequestWork

# P(KV demand > capacity) above which a prediction is marked outside the model: preemption then
# happens often enough to move TTFT (kv-pressure.yaml at 80% of its KV limit, P = 0.6%: TTFT p99
# 8% above the model) and, held there for long, can set off a preemption cascade (a 100,000-
# request run of llama70b-tp4-a100.yaml at P = 0.6% had one, its mean e2e 2.4x the model's).
KV_PRESSURE = 0.005


def limiting_resource(curve: StepCurve, work: RequestWork, gpu_rate: float, kv_rate: float) -> str:
    """What limits the sustainable rate (see :attr:`Prediction.saturation_limit`).

    At the step-curve limit the engine holds ``n_max`` requests; throughput there is
    ``n / t(n)`` per step, whose elasticity in the batch is ``1 - n t'(n) / t(n)``: the share of
    the step that does not grow with the batch. Above one half, most of a step is fixed cost
    (weights read once per step), so the cap on concurrency, not the GPU, is what binds.
    """
    if kv_rate < gpu_rate:
        return "KV cache"
    p = curve.chunks_per_request
    marg = float((curve.mixed[:, -1] - curve.mixed[:, -2]).max()) if p > 0 else 0.0
    if marg > 0 and gpu_rate >= (1.0 / (p * marg)) * (1.0 - 1e-9):
        return "GPU"  # prefill alone fills the GPU
    nu = work.mean_steps + p
    top = curve.n_max * work.mean_steps / nu
    grid = np.arange(curve.decode.shape[0], dtype=np.float64)
    t = float(np.interp(top, grid, curve.decode))
    lo, hi = max(top - 1.0, 0.0), min(top + 1.0, float(curve.n_max))
    slope = (float(np.interp(hi, grid, curve.decode)) - float(np.interp(lo, grid, curve.decode)))
    slope /= max(hi - lo, 1e-12)
    elasticity = 1.0 - top * slope / t if t > 0 else 0.0
    return "admission cap" if elasticity > 0.5 else "GPU"


def arrivals_outside(view: ArrivalView, saturation: float) -> str | None:
    """Why the model's view of these arrivals is not to be trusted here, if it is not.

    Two states are modelled as a quasi-birth-death law and lives that start in a state; that
    holds while each state's rate is below the saturation rate (mmpp-bursts.yaml with bursts at
    60% of it: e2e p99 within 7%). A burst faster than the server fills the batch and a queue
    that drains after the burst: measured errors of 20-60% on the p99 and more on TTFT. Gamma
    gaps with CV > 1 come in clumps within a step, taken as Poisson clumps of geometric size:
    with CV 3 the e2e p99 is 15-30% low and TTFT's more.
    """
    if view.states > 1 and max(view.rates) >= saturation:
        return (
            f"{view.describe()}: the bursts exceed the saturation rate {saturation:.3g} req/s, "
            "so a queue builds in each burst and drains after it (the model's two-state law "
            "approximates it; tail errors of 20-60% measured)"
        )
    if view.batch > 1.2:
        return (
            f"{view.describe()}: clumped arrivals are taken as Poisson clumps of geometric "
            "size (e2e p99 15-30% low and TTFT more at CV 3, measured)"
        )
    return None


# Above this squared CV of a prefill chunk's cost (prompts of random length) and this share of
# the saturation rate, the TTFT and TPOT tails carry a measured error (see :func:`caveats`).
CHUNK_CV2_CAVEAT = 0.25
CAVEAT_LOAD = 0.2
# P(an arrival waits for a slot) above which the TTFT tail is decided by admission waits.
P_WAIT_CAVEAT = 0.002


# Prompts queue for the token budget (first come first served, a long prompt over several
# steps) once this share of them is longer than a step's room, or prefill takes this share of
# the budget (:meth:`~sdsim.analytic.stepcurve.StepCurve.budget_share`); measured: 4,096-token
# prompts with a 2,048-token budget (share 0.06-0.14) TTFT mean 15-20% low, 512-token prompts
# with a 2,048-token budget at 80% load (0.26) within 1%, with 1,024 (0.67) 51% low.
LONGER_THAN_ROOM_CAVEAT = 0.05
BUDGET_SHARE_CAVEAT = 0.4


def budget_caveat(curve: StepCurve, rate: float, batch: float) -> str | None:
    """The caveat for prompts that queue for the token budget at ``rate`` (req/s, one
    replica) beside a mean decoding ``batch``, or ``None``."""
    n = round(batch)
    room = curve.room(n)
    longer = curve.share_longer(room)
    share = curve.budget_share(rate, n)
    if longer < LONGER_THAN_ROOM_CAVEAT and share < BUDGET_SHARE_CAVEAT:
        return None
    return (
        f"prompts queue for the token budget ({longer:.0%} of them prefill more than the "
        f"{room} tokens a step leaves beside the decoding batch; prompts arriving in a step "
        f"need {share:.0%} of that room): the engine prefills a long prompt over several steps, "
        "first come first served, and later arrivals wait behind it, which the model does not "
        "follow: TTFT low (measured: mean 15-26% and p99 13-42% low at 30-50% load with "
        "4,096-token prompts and a 1,024-2,048-token budget; mean 51% and p99 80% low with "
        "512-token prompts and a 1,024-token budget at 80% load), e2e mean 2-6% low"
    )


def caveats(
    chunk_cv2: float, load: float, p_wait: float, budget: str | None = None
) -> list[str]:
    """Where a prediction inside the model still errs by more than validation's tolerances on a
    tail, measured with long steady-state runs (notes/analytic.md, 3 seeds x 100,000 requests).

    Parameters
    ----------
    chunk_cv2
        Squared CV of a prefill chunk's cost over the prompt-length law.
    load
        Rate over the GPU saturation rate.
    p_wait
        Probability that an arrival waits for admission.
    budget
        :func:`budget_caveat`'s sentence, if any.

    Returns
    -------
    list of str
        One sentence per caveat (empty when none applies).
    """
    out: list[str] = []
    if chunk_cv2 > CHUNK_CV2_CAVEAT and load >= CAVEAT_LOAD:
        out.append(
            f"prompts of random length (a prefill's cost has CV {math.sqrt(chunk_cv2):.2f}): "
            "TTFT p99 off by up to 19% and TPOT p99 up to 20% low, measured at 25-90% load "
            "(TTFT low with one replica, high with round-robin replicas; a step that carries a "
            "long prompt is a heavy-tailed delay the model's binned and normal laws only partly "
            "follow; worst with long prompts on large models)"
        )
    if p_wait > P_WAIT_CAVEAT:
        out.append(
            f"{p_wait:.1%} of arrivals wait for a slot (max_num_seqs or the token budget): the "
            "TTFT tail is set by admission waits, which the model gets only roughly (measured "
            "with max_num_seqs 32: TTFT p99 -35% at 70% load, +54% at 85%; e2e p99 +14%)"
        )
    if budget is not None:
        out.append(budget)
    return out
