"""Step costs composed from operator costs (roofline or measured profile).

One engine step is one verifier forward pass over every token in the step (prefill chunks and
k + 1 tokens per decoding request; weights are read once for all of them), k drafter passes over
one token per decoding request, the drafter's own pass over the prompt tokens, and CPU overhead.
Operator times come from an :class:`OperatorCosts` source: :class:`~sdsim.costs.roofline.
RooflineOps` (spec sheets) or :class:`~sdsim.costs.profile.ProfileOps` (measured kernels).

Breakdown rule for a mixed step: ``verify`` is what the decode tokens would cost alone (their
GEMMs, their attention, their logits); ``prefill`` is the rest of the shared pass (the extra GEMM
time the prompt tokens add, their attention and logits) plus the drafter's prompt pass. A
prefill-only step pays the verifier's weight reads under ``prefill``.

``step()`` is called once per simulated step, so token-dependent pass costs are memoised per
token count (a dict lookup), and attention is a few arithmetic operations.
"""

from __future__ import annotations

__all__ = ["KernelStepCost", "OperatorCosts", "PassTable", "fit_linear"]

import math
from collections.abc import Callable
from typing import Protocol

import numpy as np
import numpy.typing as npt

from sdsim.costs.roofline import RooflineOps, attention_time
from sdsim.costs.step import LinearCoefficients, StepShape, StepTime, StepTimes
from sdsim.models import Drafter


class OperatorCosts(Protocol):
    """What a source of operator times provides (seconds; attention summed over layers)."""

    layers: int
    layer_ops: tuple[tuple[str, int], ...]
    once_ops: tuple[str, ...]

    def op(self, name: str, tokens: float) -> float:
        """One call of an operator at ``tokens`` rows (per layer for layer operators)."""
        ...

    def decode_attention(self, batch: float, query: float, kv: float) -> float:
        """All layers' decode/verify attention."""
        ...

    def prefill_attention(self, seqs: float, query: float, cached: float) -> float:
        """All layers' causal prefill attention."""
        ...


class PassTable:
    """Token-dependent cost of one model's forward pass, tabulated per token count.

    Tables are filled for every token count at once (vectorised over a range that doubles when a
    step needs more), so ``step()`` does list lookups, not operator arithmetic. ``dense_safe`` and
    ``head_safe`` are the largest token counts a caller may read straight from ``_dense`` and
    ``_head`` (inside the table, and not past a measured profile's grid before its one warning).
    ``monotone`` makes each table non-decreasing in the token count (a running maximum), for
    sources whose operator curves may dip (a calibrated GEMM curve past its ridge point).
    """

    def __init__(self, ops: OperatorCosts, monotone: bool = False) -> None:
        self.ops = ops
        self.monotone = monotone
        self._dense: list[float] = []
        self._head: list[float] = []
        self._first: list[float] = []
        self._dense_np: npt.NDArray[np.float64] = np.zeros(0)
        self._head_np: npt.NDArray[np.float64] = np.zeros(0)
        self._first_np: npt.NDArray[np.float64] = np.zeros(0)
        # a measured profile warns when asked beyond its grid: check that once per pass
        self._limit = float(getattr(ops, "max_tokens", math.inf))
        self._checked = False
        self.dense_safe = -1
        self.head_safe = -1

    def _vec(self, name: str, t: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        f = getattr(self.ops, "op_vec", None)
        if f is not None:
            return np.asarray(f(name, t), dtype=float)
        return np.array([self.ops.op(name, float(x)) for x in t])

    def _size(self, current: int, need: int) -> npt.NDArray[np.float64]:
        return np.arange(max(2 * current, need + 1, 1024), dtype=float)

    def _beyond(self, tokens: int) -> None:
        self._checked = True
        o = self.ops
        for n, _ in o.layer_ops:
            o.op(n, tokens)  # the scalar path warns
        self._set_safe()

    def _set_safe(self) -> None:
        top = len(self._dense) - 1
        if not self._checked and self._limit < top:
            top = max(math.floor(self._limit), -1)
        self.dense_safe = top
        self.head_safe = len(self._head) - 1

    def dense(self, tokens: int) -> float:
        """Every per-token operator of all layers plus once-per-pass ones, for ``tokens`` rows."""
        if tokens >= len(self._dense):
            t = self._size(len(self._dense), tokens)
            o = self.ops
            per_layer = sum(c * self._vec(n, t) for n, c in o.layer_ops)
            v = o.layers * np.asarray(per_layer) + sum(
                (self._vec(n, t) for n in o.once_ops), np.zeros_like(t)
            )
            v[0] = 0.0
            if self.monotone:
                v = np.maximum.accumulate(v)
            self._dense = v.tolist()
            self._dense_np = np.asarray(self._dense, dtype=np.float64)
            self._set_safe()
        if tokens > self._limit and not self._checked:
            self._beyond(tokens)
        return self._dense[tokens]

    def head(self, rows: int) -> float:
        """LM head and sampling for ``rows`` positions that need logits."""
        if rows >= len(self._head):
            t = self._size(len(self._head), rows)
            v = self._vec("lm_head", t) + self._vec("sampling", t)
            v[0] = 0.0
            if self.monotone:
                v = np.maximum.accumulate(v)
            self._head = v.tolist()
            self._head_np = np.asarray(self._head, dtype=np.float64)
            self._set_safe()
        return self._head[rows]

    def first(self, tokens: int) -> float:
        """Operators of a step's first pass only (``ops.first_ops``, e.g. EAGLE-3's fusion of
        three hidden layers), for ``tokens`` rows; 0 when the source has none."""
        if tokens >= len(self._first):
            t = self._size(len(self._first), tokens)
            v = sum((self._vec(n, t) for n in getattr(self.ops, "first_ops", ())),
                    np.zeros_like(t))
            v[0] = 0.0
            if self.monotone:
                v = np.maximum.accumulate(v)
            self._first = v.tolist()
            self._first_np = np.asarray(self._first, dtype=np.float64)
        return self._first[tokens]

    def first_arr(self, tokens: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        """:meth:`first` elementwise (table reads: the same floats)."""
        if tokens.size:
            self.first(int(tokens.max()))
        return self._first_np[tokens]

    def dense_arr(self, tokens: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        """:meth:`dense` elementwise (table reads: the same floats)."""
        if tokens.size:
            self.dense(int(tokens.max()))  # grows the table, warns past a profile's grid
        return self._dense_np[tokens]

    def head_arr(self, rows: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        """:meth:`head` elementwise (table reads: the same floats)."""
        if rows.size:
            self.head(int(rows.max()))
        return self._head_np[rows]


def _roofline_consts(ops: OperatorCosts) -> tuple[float, ...] | None:
    """The roofline's attention constants when ``ops`` prices attention with the roofline's own
    :func:`~sdsim.costs.roofline.attention_time` (so a step may call it directly, one call
    instead of two method calls per attention), else ``None``."""
    t = type(ops)
    if not isinstance(ops, RooflineOps):
        return None
    if (
        t.decode_attention is not RooflineOps.decode_attention
        or t.prefill_attention is not RooflineOps.prefill_attention
    ):
        return None
    return tuple(ops._attn_consts)


_new_time = tuple.__new__  # StepTime without NamedTuple.__new__'s keyword handling


class KernelStepCost:
    """A StepCostModel composed from operator costs.

    Parameters
    ----------
    verifier
        Operator costs of the target model.
    drafter
        The drafter (kind, and whether it runs on the GPU).
    drafter_ops
        Operator costs of the drafter's network (``None`` for n-gram).
    overhead_s
        CPU time per step (scheduling, sampling bookkeeping, Python).
    source
        Label for reports (``roofline`` or ``profile``).
    """

    def __init__(
        self,
        verifier: OperatorCosts,
        drafter: Drafter,
        drafter_ops: OperatorCosts | None,
        overhead_s: float,
        source: str = "roofline",
    ) -> None:
        self.v = PassTable(verifier)
        self.drafter = drafter
        self.d = PassTable(drafter_ops) if drafter_ops is not None else None
        self.overhead_s = float(overhead_s)
        self.source = source
        self.drafter_prefills = drafter.prefills
        self._v_roof = _roofline_consts(verifier)
        self._d_roof = _roofline_consts(drafter_ops) if drafter_ops is not None else None

    # ------------------------------------------------------------------ one step
    def step(self, shape: StepShape) -> StepTime:
        """Duration and breakdown of one step."""
        b, dctx, k, pf, pctx, pseqs = shape
        ov = self.overhead_s
        if b == 0 and pf == 0:
            return _new_time(StepTime, (ov, 0.0, 0.0, 0.0, ov))
        v = self.v
        t_dec = b * (k + 1)
        verify = 0.0
        prefill = 0.0
        dense_t = 0.0
        if b:
            kv = dctx / b + (k + 1)
            dense_t = v._dense[t_dec] if t_dec <= v.dense_safe else v.dense(t_dec)
            head_t = v._head[t_dec] if t_dec <= v.head_safe else v.head(t_dec)
            if self._v_roof is not None:
                attn = attention_time(self._v_roof, b, k + 1, kv, False)
            else:
                attn = v.ops.decode_attention(b, k + 1, kv)
            verify = dense_t + attn + head_t
        if pf:
            seqs = pseqs if pseqs > 1 else 1
            q = pf / seqs
            cached = max(pctx / seqs - q, 0.0)
            t_all = t_dec + pf
            dense_all = v._dense[t_all] if t_all <= v.dense_safe else v.dense(t_all)
            if not b:
                dense_t = v.dense(t_dec)
            if self._v_roof is not None:
                attn_p = attention_time(self._v_roof, seqs, q, cached + q, True)
            else:
                attn_p = v.ops.prefill_attention(seqs, q, cached)
            head_s = v._head[seqs] if seqs <= v.head_safe else v.head(seqs)
            prefill = dense_all - dense_t + attn_p + head_s
        draft = 0.0
        if k > 0:
            d = self.d
            if d is not None:
                if b:
                    kv_d = dctx / b + 1
                    dd = d._dense[b] if b <= d.dense_safe else d.dense(b)
                    if self._d_roof is not None:
                        attn_d = attention_time(self._d_roof, b, 1, kv_d, False)
                    else:
                        attn_d = d.ops.decode_attention(b, 1, kv_d)
                    one = dd + attn_d + (d._head[b] if b <= d.head_safe else d.head(b))
                    draft = k * one
                if pf:
                    seqs = pseqs if pseqs > 1 else 1
                    q = pf / seqs
                    cached = max(pctx / seqs - q, 0.0)
                    dp = d._dense[pf] if pf <= d.dense_safe else d.dense(pf)
                    if self._d_roof is not None:
                        attn_dp = attention_time(self._d_roof, seqs, q, cached + q, True)
                    else:
                        attn_dp = d.ops.prefill_attention(seqs, q, cached)
                    prefill += dp + attn_dp
            elif b:
                draft = b * self.drafter.cpu_s_per_seq
        total = ov + prefill + draft + verify
        return _new_time(StepTime, (total, prefill, draft, verify, ov))

    # ------------------------------------------------------------------ many steps
    def steps(
        self,
        decode_seqs: npt.ArrayLike,
        decode_context: npt.ArrayLike,
        k: npt.ArrayLike,
        prefill_tokens: npt.ArrayLike = 0,
        prefill_context: npt.ArrayLike = 0,
        prefill_seqs: npt.ArrayLike = 0,
    ) -> StepTimes:
        """:meth:`step` elementwise over arrays of step shapes (broadcast together).

        Returns a :class:`StepTimes` of float64 arrays, bit for bit what :meth:`step` gives for each
        shape (the same operations in the same order; table reads for the pass costs).
        """
        b, dctx, kk, pf, pctx, pseqs = np.broadcast_arrays(
            *(np.asarray(x, dtype=np.int64) for x in (decode_seqs, decode_context, k,
                                                        prefill_tokens, prefill_context,
                                                        prefill_seqs))
        )
        v = self.v
        ov = self.overhead_s
        shape = b.shape
        has_b = b > 0
        has_pf = pf > 0
        k1 = kk + 1
        t_dec = b * k1
        bf = np.where(has_b, b, 1).astype(np.float64)
        b0 = np.where(has_b, bf, 0.0)  # batch 0 where there is no decode: attention prices 0
        kv = dctx / bf + k1
        # table reads and attention only where the scalar path makes them (a measured profile
        # warns when asked outside its grid)
        dense_t = np.where(has_b, v.dense_arr(np.where(has_b, t_dec, 0)), 0.0)
        verify = np.where(
            has_b,
            dense_t + _attn(v.ops, "decode_attention", b0, k1, kv)
            + v.head_arr(np.where(has_b, t_dec, 0)),
            0.0,
        )
        seqs = np.maximum(pseqs, 1)
        sf = np.where(has_pf, seqs, 0).astype(np.float64)
        sd = np.where(has_pf, sf, 1.0)
        q = pf / sd
        cached = np.maximum(pctx / sd - q, 0.0)
        prefill = np.where(
            has_pf,
            v.dense_arr(np.where(has_pf, t_dec + pf, 0)) - dense_t
            + _attn(v.ops, "prefill_attention", sf, q, cached)
            + v.head_arr(np.where(has_pf, seqs, 0)),
            0.0,
        )
        has_k = kk > 0
        draft = np.zeros(shape)
        d = self.d
        if d is not None and has_k.any():
            kb = has_k & has_b
            kp = has_k & has_pf
            rows = np.where(kb, b, 0)
            one = (
                d.dense_arr(rows)
                + _attn(d.ops, "decode_attention", np.where(kb, bf, 0.0), np.ones(shape),
                        dctx / bf + 1)
                + d.head_arr(rows)
            )
            draft = np.where(kb, kk * one, 0.0)
            extra = d.dense_arr(np.where(kp, pf, 0)) + _attn(
                d.ops, "prefill_attention", np.where(kp, sf, 0.0), q, cached
            )
            prefill = np.where(kp, prefill + extra, prefill)
        elif d is None:
            draft = np.where(has_k & has_b, b * self.drafter.cpu_s_per_seq, 0.0)
        total = ov + prefill + draft + verify
        empty = ~has_b & ~has_pf
        total = np.where(empty, ov, total)
        return StepTimes(total, np.where(empty, 0.0, prefill), np.where(empty, 0.0, draft),
                         np.where(empty, 0.0, verify), np.full(shape, ov))

    # ------------------------------------------------------------------ lines
    def linearize(self, k: int, max_batch: int = 256, context: int = 1024) -> LinearCoefficients:
        """Lines through the step cost (see :func:`fit_linear`)."""
        return fit_linear(self.step, k, max_batch, context, self.drafter_prefills)


def _attn(
    ops: OperatorCosts,
    name: str,
    a: npt.NDArray[np.float64],
    b: npt.NDArray[np.float64],
    c: npt.NDArray[np.float64],
) -> npt.NDArray[np.float64]:
    """``ops.decode_attention`` or ``ops.prefill_attention`` elementwise: the source's ``*_arr``
    method when it has one (bit-identical), else one scalar call per entry."""
    f = getattr(ops, f"{name}_arr", None)
    a, b, c = np.broadcast_arrays(a, b, c)
    if f is not None:
        return np.asarray(f(a, b, c), dtype=np.float64)
    g = getattr(ops, name)
    flat = [float(g(x, y, z)) for x, y, z in zip(a.ravel().tolist(), b.ravel().tolist(),
                                                  c.ravel().tolist(), strict=True)]
    return np.asarray(flat, dtype=np.float64).reshape(a.shape)


def _batch_grid(max_batch: int) -> list[int]:
    mb = max(1, int(max_batch))
    pts = {1, mb, *np.unique(np.geomspace(1, mb, num=min(mb, 24)).round().astype(int)).tolist()}
    return sorted(int(p) for p in pts)


def fit_linear(
    step: Callable[[StepShape], StepTime],
    k: int,
    max_batch: int = 256,
    context: int = 1024,
    drafter_prefills: bool = True,
) -> LinearCoefficients:
    """Fit the linear step-cost form to any StepCostModel's ``step``.

    The verifier pass is fitted as ``v_fixed + v_token * B (k+1) + v_kv * B C`` and one drafter
    pass as ``d_fixed + d_token * B + d_kv * B C`` by non-negative least squares over decode
    batches B in 1..max_batch (geometric grid) and mean KV lengths C in {context/2, context,
    3 context/2} (three lengths, so per-token and per-KV-token costs separate). The drafter's
    prompt cost per token is the slope of its prefill share between 256 and 2048 prompt tokens.

    Returns
    -------
    LinearCoefficients
        With ``fit_error``: the largest relative error of the fitted lines, on the total step
        time, over B in 1..max_batch at KV length ``context``.
    """
    # imported here: scipy.optimize adds a few tenths of a second to `import sdsim`, and only
    # this fit needs it
    from scipy.optimize import nnls

    kk = max(int(k), 0)
    ctx = max(int(context), 1)
    grid_b = _batch_grid(max_batch)
    rows_v: list[list[float]] = []
    y_v: list[float] = []
    rows_d: list[list[float]] = []
    y_d: list[float] = []
    overhead = step(StepShape(0, 0, kk)).overhead
    for c in (max(ctx // 2, 1), ctx, ctx + ctx // 2):
        for b in grid_b:
            st = step(StepShape(b, b * c, kk))
            rows_v.append([1.0, b * (kk + 1), b * c])
            y_v.append(st.verify)
            if kk > 0:
                rows_d.append([1.0, b, b * c])
                y_d.append(st.draft / kk)
    # relative least squares: weight rows by 1/y so small batches count as much as large ones
    av, yv = np.asarray(rows_v), np.asarray(y_v)
    wv = 1.0 / np.maximum(yv, 1e-12)
    cv, _ = nnls(av * wv[:, None], yv * wv)
    cd = np.zeros(3)
    if rows_d and max(y_d) > 0:
        ad, yd = np.asarray(rows_d), np.asarray(y_d)
        wd = 1.0 / np.maximum(yd, 1e-12)
        cd, _ = nnls(ad * wd[:, None], yd * wd)
    d_pf = 0.0
    if kk > 0 and drafter_prefills:
        lo = step(StepShape(0, 0, kk, 256, 256, 1)).prefill
        hi = step(StepShape(0, 0, kk, 2048, 2048, 1)).prefill
        lo0 = step(StepShape(0, 0, 0, 256, 256, 1)).prefill
        hi0 = step(StepShape(0, 0, 0, 2048, 2048, 1)).prefill
        d_pf = max(((hi - hi0) - (lo - lo0)) / (2048 - 256), 0.0)
    worst = 0.0
    for b in grid_b:
        st = step(StepShape(b, b * ctx, kk))
        line = cv[0] + cv[1] * b * (kk + 1) + cv[2] * b * ctx
        if kk > 0:
            line += kk * (cd[0] + cd[1] * b + cd[2] * b * ctx)
        line += overhead
        worst = max(worst, abs(line - st.total) / st.total)
    return LinearCoefficients(
        v_fixed=float(cv[0]),
        v_token=float(cv[1]),
        v_kv=float(cv[2]),
        d_fixed=float(cd[0]),
        d_token=float(cd[1]),
        d_kv=float(cd[2]),
        d_prefill_token=float(d_pf),
        overhead=float(overhead),
        fit_error=float(worst),
    )
