"""StepCostModel: what one engine step costs, with its breakdown.

The engine and the analytic model both read step costs only through this interface, so a
disagreement between them is a modelling finding, not a units bug. One step is

    overhead (CPU) + prefill work + k sequential drafter passes + one verifier pass over
    k + 1 tokens per decoding request,

described by a :class:`StepShape` (how many decoding requests, how much KV they read, how many
prefill tokens). Implementations: :class:`LinearStepCost` here; kernel-derived ones (roofline,
measured profile bundles) live beside it in ``sdsim.costs``.
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_OVERHEAD_S",
    "LinearCoefficients",
    "LinearStepCost",
    "StepCostModel",
    "StepShape",
    "StepTime",
    "StepTimes",
    "decode_step_times",
    "step_times",
]

from dataclasses import dataclass
from typing import NamedTuple, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from sdsim.scenario import LinearCosts


class StepTime(NamedTuple):
    """One step's duration and its breakdown (seconds); ``total`` is the sum of the parts."""

    total: float
    prefill: float
    draft: float
    verify: float
    overhead: float


class StepTimes(NamedTuple):
    """Many steps' durations and breakdowns (float64 arrays of one shape, seconds): what the
    vectorised ``steps`` of a cost model returns, elementwise equal to :class:`StepTime`."""

    total: npt.NDArray[np.float64]
    prefill: npt.NDArray[np.float64]
    draft: npt.NDArray[np.float64]
    verify: npt.NDArray[np.float64]
    overhead: npt.NDArray[np.float64]


class StepShape(NamedTuple):
    """What is in one engine step.

    Attributes
    ----------
    decode_seqs
        Decoding requests (each verifies k + 1 tokens).
    decode_context
        KV-cache tokens those requests read (sum of their context lengths before the step).
    k
        Draft length this step (0 = plain decoding).
    prefill_tokens
        Prompt tokens prefilled this step (all chunks together).
    prefill_context
        KV tokens attended by the prefill chunks (sum over chunks of tokens already cached plus
        the chunk itself).
    prefill_seqs
        Requests with a prefill chunk in this step.
    """

    decode_seqs: int
    decode_context: int
    k: int
    prefill_tokens: int = 0
    prefill_context: int = 0
    prefill_seqs: int = 0


@dataclass(frozen=True)
class LinearCoefficients:
    """A step-cost model reduced to lines (what the analytic model consumes).

    Verifier pass: ``v_fixed + v_token * tokens + v_kv * kv_tokens``; each drafter pass:
    ``d_fixed + d_token * seqs + d_kv * kv_tokens``; plus ``overhead`` per step and
    ``d_prefill_token`` per prompt token for the drafter's own prefill. ``fit_error`` is the largest
    relative error of the lines over the batch range they were fitted on (0 for a linear model).
    """

    v_fixed: float
    v_token: float
    v_kv: float
    d_fixed: float
    d_token: float
    d_kv: float
    d_prefill_token: float
    overhead: float
    fit_error: float = 0.0


@runtime_checkable
class StepCostModel(Protocol):
    """What one engine step costs."""

    def step(self, shape: StepShape) -> StepTime:
        """Duration and breakdown of a step with this shape."""
        ...

    def linearize(self, k: int, max_batch: int = 256, context: int = 1024) -> LinearCoefficients:
        """Lines through the step cost over decode batches 1..max_batch at KV length context."""
        ...


class LinearStepCost:
    """The `linear` model: fixed + per batched token + per KV token, verifier and drafter apart.

    Parameters
    ----------
    coeffs
        The scenario's ``costs.linear`` block.
    drafter_prefills
        Whether the drafter runs over prompt tokens too (a separate model or an EAGLE head does;
        n-gram lookup does not).
    """

    def __init__(self, coeffs: LinearCosts, drafter_prefills: bool = True) -> None:
        self.c = coeffs
        self.drafter_prefills = drafter_prefills

    def step(self, shape: StepShape) -> StepTime:
        """Duration and breakdown of one step (see :class:`LinearCosts` for the formula)."""
        c = self.c
        b, dctx, k, pf, pctx, _ = shape
        if b == 0 and pf == 0:
            return StepTime(c.overhead_s, 0.0, 0.0, 0.0, c.overhead_s)
        prefill = c.verify_per_token_s * pf + c.verify_per_kv_token_s * pctx
        if k > 0 and self.drafter_prefills:
            prefill += c.draft_per_token_s * pf
        verify = 0.0
        draft = 0.0
        if b > 0:
            verify = (
                c.verify_fixed_s
                + c.verify_per_token_s * b * (k + 1)
                + c.verify_per_kv_token_s * dctx
            )
            if k > 0:
                draft = k * (
                    c.draft_fixed_s + c.draft_per_token_s * b + c.draft_per_kv_token_s * dctx
                )
        else:
            # a prefill-only step still pays the verifier's fixed cost (weights are read once)
            prefill += c.verify_fixed_s
        total = c.overhead_s + prefill + draft + verify
        return StepTime(total, prefill, draft, verify, c.overhead_s)

    def steps(
        self,
        decode_seqs: npt.ArrayLike,
        decode_context: npt.ArrayLike,
        k: npt.ArrayLike,
        prefill_tokens: npt.ArrayLike = 0,
        prefill_context: npt.ArrayLike = 0,
        prefill_seqs: npt.ArrayLike = 0,
    ) -> StepTimes:
        """:meth:`step` elementwise over arrays of step shapes (broadcast together): a
        :class:`StepTimes` of float64 arrays, bit for bit what :meth:`step` gives."""
        c = self.c
        b, ctx, kk, pf, pctx, _ = np.broadcast_arrays(
            *(np.asarray(x, dtype=np.int64) for x in (decode_seqs, decode_context, k,
                                                        prefill_tokens, prefill_context,
                                                        prefill_seqs))
        )
        has_b, has_k = b > 0, kk > 0
        prefill = c.verify_per_token_s * pf + c.verify_per_kv_token_s * pctx
        if self.drafter_prefills:
            prefill = np.where(has_k, prefill + c.draft_per_token_s * pf, prefill)
        verify = np.where(
            has_b,
            c.verify_fixed_s + c.verify_per_token_s * b * (kk + 1) + c.verify_per_kv_token_s * ctx,
            0.0,
        )
        draft = np.where(
            has_b & has_k,
            kk * (c.draft_fixed_s + c.draft_per_token_s * b + c.draft_per_kv_token_s * ctx),
            0.0,
        )
        # a prefill-only step still pays the verifier's fixed cost (weights are read once)
        prefill = np.where(has_b, prefill, prefill + c.verify_fixed_s)
        total = c.overhead_s + prefill + draft + verify
        empty = ~has_b & (pf == 0)
        ov = np.full(b.shape, c.overhead_s)
        return StepTimes(np.where(empty, c.overhead_s, total), np.where(empty, 0.0, prefill),
                         draft, verify, ov)

    def linearize(self, k: int, max_batch: int = 256, context: int = 1024) -> LinearCoefficients:
        """Exact: the model is already linear."""
        c = self.c
        return LinearCoefficients(
            v_fixed=c.verify_fixed_s,
            v_token=c.verify_per_token_s,
            v_kv=c.verify_per_kv_token_s,
            d_fixed=c.draft_fixed_s,
            d_token=c.draft_per_token_s,
            d_kv=c.draft_per_kv_token_s,
            d_prefill_token=c.draft_per_token_s if self.drafter_prefills else 0.0,
            overhead=c.overhead_s,
            fit_error=0.0,
        )


# CPU time per engine step when the scenario does not say (``costs.overhead_s``): scheduling,
# input preparation and output processing of a vLLM-class engine with CUDA graphs, of the order of
# the linear model's default.
DEFAULT_OVERHEAD_S = 5.0e-4


def step_times(
    cost: StepCostModel,
    decode_seqs: npt.ArrayLike,
    decode_context: npt.ArrayLike,
    k: npt.ArrayLike,
    prefill_tokens: npt.ArrayLike = 0,
    prefill_context: npt.ArrayLike = 0,
    prefill_seqs: npt.ArrayLike = 0,
) -> StepTimes:
    """``cost.step`` over arrays of step shapes (broadcast together): a :class:`StepTimes` of
    float64 arrays.

    Uses the model's vectorised ``steps`` when it has one (the shipped linear, roofline and profile
    models: bit-identical to ``step`` elementwise), else calls ``step`` once per shape.
    """
    f = getattr(cost, "steps", None)
    if f is not None:
        out: StepTimes = f(decode_seqs, decode_context, k, prefill_tokens, prefill_context,
                          prefill_seqs)
        return out
    cols = np.broadcast_arrays(
        *(np.asarray(x, dtype=np.int64) for x in (decode_seqs, decode_context, k, prefill_tokens,
                                                    prefill_context, prefill_seqs))
    )
    shape = cols[0].shape
    flat = [c.ravel().tolist() for c in cols]
    rows = [tuple(cost.step(StepShape(*sh))) for sh in zip(*flat, strict=True)]
    arr = np.asarray(rows, dtype=np.float64).reshape(-1, 5)
    t, p, d, v, o = (np.asarray(arr[:, i].reshape(shape), dtype=np.float64) for i in range(5))
    return StepTimes(t, p, d, v, o)


def decode_step_times(
    cost: StepCostModel, decode_seqs: int, contexts: npt.NDArray[np.int64], k: int
) -> tuple[npt.NDArray[np.float64], ...]:
    """``(total, draft, verify, overhead)`` of decode-only steps at each context total:
    :func:`step_times` at ``decode_seqs`` requests and no prefill (bit-identical to ``step``).
    The engine prices its decode runs with it."""
    st = step_times(cost, decode_seqs, np.asarray(contexts, dtype=np.int64), k)
    return st.total, st.draft, st.verify, st.overhead
