"""Coefficients of the closed-form model, derived from the scenario's StepCostModel.

The seed paper writes the mean latency as ``L = C1 + B C2`` with six stage coefficients::

    C1 = c1p + m (c1v + k c1d)        C2 = c2p + m (c2v + k c2d)

(p: prefill, once per request; v: verification, per step; d: drafting, per drafted position;
index 1: load-independent, index 2: per request in flight), where ``m`` is the number of decode
steps a request needs (the paper's g / E). The mapping from a StepCostModel, with no simulation:

* the model is reduced to lines by ``linearize(k, max_batch, context)`` at the scenario's mean KV
  length ``ctx = E[prompt] + E[g] / 2`` (the mean context over a request's decode life) and its
  concurrency cap (``max_batch``); with ``LinearCoefficients`` ``lin``:

  - ``c1v = overhead + v_fixed + (k+1) v_token + v_kv ctx``  (a verify step of the request alone)
  - ``c2v = (k+1) v_token + v_kv ctx``                       (what one more decoding request adds)
  - ``c1d = d_fixed + d_token + d_kv ctx``                   (one drafter pass alone)
  - ``c2d = d_token + d_kv ctx``                             (what one more request adds to it)

* prefill is priced by the cost model's own ``step`` (so quadratic attention in a roofline or
  profile source is kept): ``c1p`` is a prefill-only step of one mean prompt (the request alone),
  and ``c_p`` the marginal cost of the prompt in a step that also decodes; a request in flight adds
  its ``c_p`` once to someone's step and, during the tagged request's own prefill step, its decode
  work, so ``c2p = c_p + c2v + k c2d``.
* ``m = E[S]`` is the exact mean of decode steps (:mod:`sdsim.analytic.work`), not g / E.

A decode step of ``n`` requests lasts ``a + b n`` with ``a = overhead + v_fixed + k d_fixed`` and
``b = c2v + k c2d``: the birth-death (GPS) and tail models use ``a``, ``b`` and ``c_p``.
"""

from __future__ import annotations

__all__ = ["Coefficients", "concurrency_cap", "derive_coefficients"]

import math
from dataclasses import dataclass

from sdsim.analytic.work import RequestWork, request_work
from sdsim.costs.step import LinearCoefficients, StepCostModel, StepShape, build_cost_model
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
        ``linearize``'s largest relative error over the batch range (0 for the linear source).
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


def _prefill_costs(
    model: StepCostModel, k: int, prompt: int, budget: int
) -> tuple[float, float, int]:
    """(prefill-only step alone, marginal prefill cost beside one decode, steps it spans)."""
    chunk = max(1, min(prompt, budget))
    nsteps = max(1, math.ceil(prompt / chunk))
    alone = 0.0
    marginal = 0.0
    done = 0
    for _ in range(nsteps):
        c = min(chunk, prompt - done)
        ctx = done + c
        alone += model.step(StepShape(0, 0, k, c, ctx, 1)).total
        with_dec = model.step(StepShape(1, prompt, k, c, ctx, 1)).total
        dec_only = model.step(StepShape(1, prompt, k)).total
        marginal += with_dec - dec_only
        done += c
    return alone, marginal, nsteps


def derive_coefficients(
    scn: Scenario, k: int | None = None, work: RequestWork | None = None
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

    Returns
    -------
    Coefficients
    """
    kk = scn.spec.k if k is None else int(k)
    model = build_cost_model(scn)
    w = work if work is not None else request_work(scn, kk)
    prompt = float(scn.workload.prompt_tokens.mean)
    ctx = prompt + w.mean_output / 2
    n_max = concurrency_cap(scn, kk)
    lin: LinearCoefficients = model.linearize(kk, max_batch=n_max, context=round(ctx))
    c2v = (kk + 1) * lin.v_token + lin.v_kv * ctx
    c2d = lin.d_token + lin.d_kv * ctx
    c1v = lin.overhead + lin.v_fixed + c2v
    c1d = lin.d_fixed + c2d
    alone, c_p, pf_steps = _prefill_costs(
        model, kk, max(1, round(prompt)), scn.server.max_num_batched_tokens
    )
    b = c2v + kk * c2d
    return Coefficients(
        k=kk,
        c1p=alone,
        c1v=c1v,
        c1d=c1d,
        c2p=c_p + pf_steps * b,
        c2v=c2v,
        c2d=c2d,
        steps=w.mean_steps,
        tokens_per_step=w.tokens_per_step,
        a=lin.overhead + lin.v_fixed + kk * lin.d_fixed,
        b=b,
        c_p=c_p,
        prefill_steps=pf_steps,
        n_max=n_max,
        ctx=ctx,
        prompt=prompt,
        output=w.mean_output,
        fit_error=lin.fit_error,
    )
