"""Coefficients of the closed-form model, derived from the scenario's StepCostModel.

The seed paper writes the mean latency as ``L = C1 + B C2`` with six stage coefficients::

    C1 = c1p + m (c1v + k c1d)        C2 = c2p + m (c2v + k c2d)

(p: prefill, once per request; v: verification, per step; d: drafting, per drafted position;
index 1: load-independent, index 2: per request in flight), where ``m`` is the number of decode
steps a request needs (the paper's g / E). The mapping from a StepCostModel, with no simulation:

* the step time is taken from the cost model itself at every decode batch ``n`` in
  ``0..n_max`` (:class:`~sdsim.analytic.stepcurve.StepCurve`, at the step-weighted mean context
  ``ctx``), not from one line through all batches: a roofline step is ``max(compute, memory)``
  per operator, convex and kinked in ``n``;
* the lines the published form needs are the **tangent at the operating point**: slopes and
  intercepts of the verify pass, of one drafter pass and of the whole decode step are averaged
  over the decode batches a request meets (``min(N + 1, n_max)`` scaled to the decoding share,
  ``N`` from the GPS birth-death law at the rate), so ``a + b E[n]`` equals the mean decode step
  and ``b`` its mean slope there:

  - ``c2v = E[verify'(n)]``, ``c1v = overhead + (E[verify(n)] - c2v E[n]) + c2v``
  - ``c2d = E[draft'(n)] / k``, ``c1d = (E[draft(n)] / k - c2d E[n]) + c2d``

  ``fit_error`` is the largest relative error of that tangent against the real decode step over
  the batches that carry 98% of the law's mass. With the ``linear`` source the tangent is the
  line itself at every rate (the previous, global mapping);
* prefill is priced by the cost model's own ``step``: ``c1p`` is the prefill-only steps of one
  prompt on an idle engine, averaged over the prompt law (the request alone;
  :attr:`~sdsim.analytic.stepcurve.StepCurve.alone`), and ``c_p`` the mean time one prompt's
  chunks add to the steps they share with the decoding batch at the operating point (a chunk
  beside a memory-bound step costs less than beside a compute-bound one); a request in flight
  adds its ``c_p`` once and, during the tagged request's own prefill step(s), its decode work,
  so ``c2p = c_p + P b``;
* ``m = E[S]`` is the exact mean of decode steps (:mod:`sdsim.analytic.work`), not g / E.

A decode step of ``n`` requests lasts ``a + b n`` locally, with ``a = overhead + v0 + k d0``
(the intercepts) and ``b = c2v + k c2d``: the tail model uses ``a``, ``b`` and ``c_p``; the GPS
birth-death law and the saturation rate use the full curve ``t(n)``.
"""

from __future__ import annotations

__all__ = [
    "Coefficients",
    "concurrency_cap",
    "tangent_coefficients",
]

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from sdsim._jit import jit
from sdsim.analytic.stepcurve import StepCurve
from sdsim.analytic.work import RequestWork
from sdsim.scenario import Scenario


@dataclass(frozen=True)
class Coefficients:
    """Everything the closed-form model needs about one scenario at one draft length.

    Attributes
    ----------
    k
        Draft length.
    c1p, c1v, c1d, c2p, c2v, c2d
        The six stage coefficients (seconds).
    steps
        ``m``: exact mean decode steps per request.
    tokens_per_step
        E[X] (accepted + 1).
    a, b
        A decode step of n requests lasts ``a + b n`` (seconds).
    c_p
        Marginal cost of one mean prompt's prefill inside a decoding step (seconds).
    prefill_steps
        Steps a prompt's prefill spans (chunked when longer than the token budget).
    n_max
        Decoding requests the server can hold at once: ``max_num_seqs``, or fewer when the token
        budget (k+1 tokens per decode) binds.
    ctx
        Mean KV length the lines were taken at.
    prompt, output
        Mean prompt and output lengths (tokens).
    fit_error
        Largest relative error of the local lines against the real decode step over the batches
        the operating point visits (0 for the linear source).
    linearization
        Where the lines come from (e.g. ``tangent at mean decode batch 41.3``).
    n_op
        Mean decode batch a request meets at the operating point.
    """

    k: int
    c1p: float
    c1v: float
    c1d: float
    c2p: float
    c2v: float
    c2d: float
    steps: float
    tokens_per_step: float
    a: float
    b: float
    c_p: float
    prefill_steps: int
    n_max: int
    ctx: float
    prompt: float
    output: float
    fit_error: float = 0.0
    linearization: str = "global line"
    n_op: float = math.nan

    @property
    def c1(self) -> float:
        """C1: latency of a request alone (seconds)."""
        return self.c1p + self.steps * (self.c1v + self.k * self.c1d)

    @property
    def c2(self) -> float:
        """C2: latency one more request in flight adds (seconds)."""
        return self.c2p + self.steps * (self.c2v + self.k * self.c2d)

    @property
    def stages(self) -> dict[str, float]:
        """The six stage coefficients by name."""
        return {
            "c1p": self.c1p,
            "c1v": self.c1v,
            "c1d": self.c1d,
            "c2p": self.c2p,
            "c2v": self.c2v,
            "c2d": self.c2d,
        }


def concurrency_cap(scn: Scenario, k: int) -> int:
    """Most decoding requests one step can hold: ``max_num_seqs`` or ``budget // (k+1)``."""
    return max(1, min(scn.server.max_num_seqs, scn.server.max_num_batched_tokens // (k + 1)))


@jit
def _interp_at(fp: npt.NDArray[np.float64], x: float) -> float:  # compiled
    """``np.interp(x, arange(len(fp)), fp)`` for ``0 <= x <= len(fp) - 1``, its operations in
    its order (slope over a unit step, times ``x - j``, plus ``fp[j]``; the last point exact)."""
    last = fp.shape[0] - 1
    if x >= last:
        return fp[last]
    j = math.floor(x)
    return (fp[j + 1] - fp[j]) * (x - j) + fp[j]


@jit
def _tangent(
    x: npt.NDArray[np.float64],
    w: npt.NDArray[np.float64],
    verify: npt.NDArray[np.float64],
    draft: npt.NDArray[np.float64],
    grad_v: npt.NDArray[np.float64],
    grad_d: npt.NDArray[np.float64],
    cost: npt.NDArray[np.float64],
    decode: npt.NDArray[np.float64],
    overhead: float,
) -> tuple[float, float, float, float, float, float, float, float, float]:
    """The weighted means :func:`tangent_coefficients` reads off the curves at the batches
    ``x`` (weights ``w``), the tangent line ``a + b n`` and its relative error on the batches
    that carry 98% of the mass (compiled: two dozen numpy calls on a few hundred entries cost
    more than the arithmetic)."""
    n_op = e_v = e_d = s_v = s_d = cp = 0.0
    for i in range(x.shape[0]):
        xi = x[i]
        wi = w[i]
        n_op += wi * xi
        e_v += wi * _interp_at(verify, xi)
        e_d += wi * _interp_at(draft, xi)
        s_v += wi * _interp_at(grad_v, xi)
        s_d += wi * _interp_at(grad_d, xi)
        cp += wi * _interp_at(cost, xi)
    b = s_v + s_d
    a = overhead + (e_v - s_v * n_op) + (e_d - s_d * n_op)
    # error of the local line on the batches that carry 98% of the mass
    order = np.argsort(x, kind="mergesort")
    cum = 0.0
    lo = hi = x[order[x.shape[0] - 1]]
    got_lo = False
    for r in range(x.shape[0]):
        cum += w[order[r]]
        # (np.searchsorted(cum, q): the first index whose cumulative weight reaches q)
        if not got_lo and cum >= 0.01:
            lo = x[order[r]]
            got_lo = True
        if cum >= 0.99:
            hi = x[order[r]]
            break
    n_max = decode.shape[0] - 1
    err = 0.0
    for n in range(max(math.floor(lo), 1), min(math.ceil(hi), n_max) + 1):
        real = decode[n]
        err = max(err, abs(a + b * n - real) / real)
    return n_op, e_v, e_d, s_v, s_d, a, b, err, cp


def tangent_coefficients(
    curve: StepCurve,
    work: RequestWork,
    prompt: float,
    c1p: float,
    batches: npt.NDArray[np.float64],
    weights: npt.NDArray[np.float64],
    chunk_rate: float,
    chunk_law: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]] | None = None,
) -> Coefficients:
    """The six stage coefficients as the tangent of the real step curve at an operating point.

    Parameters
    ----------
    curve
        Step times at every decode batch.
    work
        Decode-steps law.
    prompt
        Mean prompt length.
    c1p
        Prefill-only time of one prompt (the request alone).
    batches, weights
        Decode batches a request meets (fractional, >= 1) and their probabilities.
    chunk_rate
        Prefill chunks per second (prices the prefill a step carries).
    chunk_law
        The curve's chunk law ``(pq, t)`` at ``chunk_rate`` if already at hand (exact at the
        rows the batches read); default :meth:`StepCurve.chunk_law`.

    Returns
    -------
    Coefficients
    """
    k = curve.k
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    x = np.clip(np.asarray(batches, dtype=np.float64), 1.0, float(curve.n_max))
    cost = curve.chunk_cost(chunk_rate) if chunk_law is None else curve.chunk_cost_from(*chunk_law)
    n_op, e_v, e_d, s_v, s_d, a, b, err, cp_w = _tangent(
        x,
        w,
        curve.verify,
        curve.draft,
        curve.slopes_of("verify"),
        curve.slopes_of("draft"),
        cost,
        curve.decode,
        float(curve.overhead),
    )
    c2v = s_v
    c1v = curve.overhead + (e_v - s_v * n_op) + c2v
    if k > 0:
        c2d = s_d / k
        c1d = (e_d / k - c2d * n_op) + c2d
    else:
        c2d = c1d = 0.0
    c_p = cp_w * curve.chunks_per_request
    pf = curve.chunks_per_request
    return Coefficients(
        k=k,
        c1p=c1p,
        c1v=c1v,
        c1d=c1d,
        c2p=c_p + pf * b,
        c2v=c2v,
        c2d=c2d,
        steps=work.mean_steps,
        tokens_per_step=work.tokens_per_step,
        a=a,
        b=b,
        c_p=c_p,
        prefill_steps=pf,
        n_max=curve.n_max,
        ctx=curve.ctx,
        prompt=prompt,
        output=work.mean_output,
        fit_error=err,
        linearization=f"tangent at mean decode batch {n_op:.1f}",
        n_op=n_op,
    )
