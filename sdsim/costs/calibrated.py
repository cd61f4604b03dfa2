"""The calibrated step-cost model: kernels as a real GPU runs them, a step as a real engine runs it.

Operator times (:class:`CalibratedOps`) are the roofline's FLOPs and bytes with the GPU's fitted
terms (:mod:`sdsim.costs.calibration`): weight GEMMs on the fitted efficiency curve (slow near
the ridge point), attention at the fitted decode / verify / prefill efficiencies, all-reduce with
its latency floor; token counts up to the largest CUDA-graph size are padded to the next captured
size, and above it every kernel takes at least an eager launch.

One step (:class:`CalibratedStepCost`) follows ../shared/VLLM-STEP.md:

* the verifier's forward pass over every token (k + 1 per decoding request plus prefill chunks),
  its attention, the LM head and sampling over the k + 1 logits rows per request;
* for EAGLE-1 / EAGLE-3 heads and draft models: k draft passes, the first over every token the
  verifier just processed (EAGLE-3 fuses three hidden layers there; a draft model adds one slot
  per request), passes 2..k over one token per request, each with an LM head on one row per
  request; n-gram lookup is CPU time per context token;
* host costs: a fixed cost per step, per decoding request, per logits row, per speculative step
  and per draft pass, and the per-layer cost of piecewise graphs when a prefill chunk is in the
  step.

Breakdown (:class:`~sdsim.costs.step.StepTime`): ``overhead`` is the fixed host cost per step;
``verify`` what the decode tokens cost alone (their GEMMs, attention and logits, the per-request,
per-row and speculative host costs); ``draft`` the draft passes of the decode tokens and their
host cost; ``prefill`` the rest (what prefill tokens add to the shared passes, their attention and
logits, piecewise graphs). :meth:`CalibratedStepCost.parts` splits the step further by term.

``step`` (scalar, called once per simulated step) and ``steps`` (arrays) are the same operations
in the same order on table reads, so the same floats.
"""

from __future__ import annotations

__all__ = ["PARTS", "CalibratedOps", "CalibratedStepCost", "capture_sizes", "gemm_time"]

from dataclasses import replace
from typing import Any

import numpy as np
import numpy.typing as npt

from sdsim.costs.calibration import EngineTerms, GemmTerms, ResolvedGPU
from sdsim.costs.kernel import PassTable, fit_linear
from sdsim.costs.roofline import (
    DEFAULT_EFFICIENCY,
    RooflineOps,
    attention_time,
    attention_time_arr,
)
from sdsim.costs.step import LinearCoefficients, StepShape, StepTime, StepTimes
from sdsim.hardware import GPUSpec
from sdsim.models import Drafter, ModelSpec

_F64 = npt.NDArray[np.float64]


def gemm_time(g: GemmTerms, flops: Any, nbytes: Any, peak: float, bw: float) -> _F64:
    """Seconds of weight GEMMs with ``flops`` and ``nbytes`` (arrays) on the fitted curve (see
    :class:`~sdsim.costs.calibration.GemmTerms` for the formula)."""
    a = np.asarray(nbytes, dtype=np.float64) / (bw * g.memory_eff)
    c = np.asarray(flops, dtype=np.float64) / (peak * g.compute_eff)
    ratio = np.maximum(c, 1e-300) / np.maximum(a, 1e-300)
    x = (np.log2(ratio) - g.ridge_shift) / g.ridge_width
    return np.asarray(np.maximum(a, c) * (1.0 + g.ridge_dip * np.exp(-(x * x))) + g.floor_s)


def capture_sizes(graph_max: int) -> npt.NDArray[np.int64]:
    """Token counts vLLM captures CUDA graphs for, up to ``graph_max``: 1, 2, 4, then every 8 up
    to 256 and every 16 beyond (``config/vllm.py``; ../shared/VLLM-STEP.md)."""
    sizes = {1, 2, 4, *range(8, 257, 8), *range(272, max(graph_max, 0) + 1, 16)}
    out = sorted(s for s in sizes if s <= graph_max)
    if graph_max > 0 and (not out or out[-1] != graph_max):
        out.append(graph_max)
    return np.asarray(out, dtype=np.int64)


class CalibratedOps(RooflineOps):
    """Operator times of one model on one GPU with the calibrated terms.

    Parameters
    ----------
    model, gpu, tp, dtype
        As for :class:`~sdsim.costs.roofline.RooflineOps`.
    terms
        The GPU's calibrated kernel terms.
    engine
        The engine terms (CUDA-graph sizes, eager launch floor).
    padded
        Whether token counts are padded to captured graph sizes (verifier and drafter passes
        are; the LM head and sampling run on exactly the rows that need logits either way).
    """

    def __init__(
        self,
        model: ModelSpec,
        gpu: GPUSpec,
        tp: int,
        dtype: str,
        terms: ResolvedGPU,
        engine: EngineTerms,
        padded: bool = True,
    ) -> None:
        at, ar = terms.attention, terms.allreduce
        eff = replace(DEFAULT_EFFICIENCY, memory=terms.gemm.memory_eff,
                      gemm_compute=terms.gemm.compute_eff, link=ar.link_eff,
                      allreduce_latency_s=ar.latency_s)
        super().__init__(model, gpu, tp, eff, dtype)
        self.terms = terms
        self.graph_max = int(engine.graph_max_tokens)
        self.eager_floor_s = float(engine.eager_launch_s)
        self._sizes = capture_sizes(self.graph_max) if padded else np.zeros(0, dtype=np.int64)
        self._attn_decode = self.attention_consts(at.prefill_compute, at.decode_memory, at.floor_s)
        self._attn_verify = self.attention_consts(at.prefill_compute, at.verify_memory, at.floor_s)
        self._attn_consts = self.attention_consts(at.prefill_compute, at.decode_memory, at.floor_s)

    # ------------------------------------------------------------------ operators
    def padded(self, tokens: npt.ArrayLike) -> _F64:
        """Token counts as the graphs run them: up to the largest captured size, the next
        captured size; above it unchanged (eager)."""
        t = np.asarray(tokens, dtype=np.float64)
        if not self._sizes.size:
            return t
        i = np.searchsorted(self._sizes, t, side="left")
        inside = (t > 0) & (i < self._sizes.size)
        return np.where(inside, self._sizes[np.minimum(i, self._sizes.size - 1)], t)

    def op_vec(self, name: str, tokens: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """One call of an operator at each token count (padded where the pass runs as a graph)."""
        t = np.asarray(tokens, dtype=np.float64)
        tp = t if name in ("lm_head", "sampling") else self.padded(t)
        w = self.work(name, tp)
        eager = tp > self.graph_max
        floor = w.kernels * np.where(eager, self.eager_floor_s, self.eff.launch_floor_s)
        if w.gemm:
            core = np.maximum(gemm_time(self.terms.gemm, w.flops, w.bytes, self.peak, self.bw),
                              floor)
        else:
            compute = np.asarray(w.flops, dtype=np.float64) / (self.peak * w.compute_eff)
            memory = np.asarray(w.bytes, dtype=np.float64) / (self.bw * w.memory_eff)
            core = np.maximum(np.maximum(compute, memory), floor)
        out = np.broadcast_to(core + w.fixed_s, t.shape)
        return np.where(t > 0, out, 0.0)

    def op(self, name: str, tokens: float) -> float:
        """:meth:`op_vec` at one token count."""
        if tokens <= 0:
            return 0.0
        return float(self.op_vec(name, np.array([float(tokens)]))[0])

    def time(self, w: Any) -> Any:
        """A piece of work on the calibrated curves (graph launch floor)."""
        if w.gemm:
            return gemm_time(self.terms.gemm, w.flops, w.bytes, self.peak, self.bw) + w.fixed_s
        return super().time(w)

    # ------------------------------------------------------------------ attention
    def decode_attention(self, batch: float, query: float, kv: float) -> float:
        """All layers' decode (one query token) or verification (``query`` > 1) attention."""
        consts = self._attn_decode if query == 1 else self._attn_verify
        return attention_time(consts, batch, query, kv, False)

    def decode_attention_arr(
        self, batch: npt.ArrayLike, query: npt.ArrayLike, kv: npt.ArrayLike
    ) -> npt.NDArray[np.float64]:
        """:meth:`decode_attention` elementwise (the same floats)."""
        b, q, v = np.broadcast_arrays(*(np.asarray(x, dtype=np.float64) for x in (batch, query,
                                                                               kv)))
        dec = attention_time_arr(self._attn_decode, b, q, v, False)
        ver = attention_time_arr(self._attn_verify, b, q, v, False)
        return np.where(q == 1, dec, ver)


# the parts of a step, in the order they are summed (see CalibratedStepCost.parts)
PARTS = (
    "host_step",
    "prefill_dense",
    "prefill_attention",
    "prefill_logits",
    "prefill_host",
    "prefill_draft",
    "draft_first",
    "draft_later",
    "draft_host",
    "verify_dense",
    "verify_attention",
    "verify_logits",
    "verify_host",
    "spec_fixed",
)

_new_time = tuple.__new__  # StepTime without NamedTuple.__new__'s keyword handling


class CalibratedStepCost:
    """The calibrated StepCostModel (see the module docstring).

    Parameters
    ----------
    verifier
        Calibrated operator costs of the target model.
    drafter
        The drafter.
    drafter_ops
        Calibrated operator costs of the drafter's network (``None`` for n-gram).
    engine
        The engine's host terms (with the scenario's overrides applied).
    """

    source = "calibrated"

    def __init__(
        self,
        verifier: CalibratedOps,
        drafter: Drafter,
        drafter_ops: CalibratedOps | None,
        engine: EngineTerms,
    ) -> None:
        self.v = PassTable(verifier, monotone=True)
        self.vops = verifier
        self.drafter = drafter
        self.d = PassTable(drafter_ops, monotone=True) if drafter_ops is not None else None
        self.dops = drafter_ops
        self.engine = engine
        self.drafter_prefills = drafter.prefills
        kind = drafter.kind
        self.overhead_s = float(engine.step_s)
        self._per_seq = float(engine.per_seq_s)
        self._per_token = float(engine.per_token_s)
        self._spec = float(engine.spec_step_s.of(kind))
        self._pass = float(engine.draft_pass_s.of(kind))
        self._ngram_ctx = float(engine.ngram_context_token_s) if kind == "ngram" else 0.0
        self._cpu_seq = float(drafter.cpu_s_per_seq)
        self._pw = float(engine.piecewise_layer_s) * verifier.layers
        # a draft model's first pass carries one extra slot per request (VLLM-STEP.md)
        self._extra = 1 if kind == "model" else 0
        self._va = (verifier._attn_decode, verifier._attn_verify, verifier._attn_consts)
        self._va_dec, self._va_ver, self._va_pre = self._va
        self._has_first = bool(drafter_ops is not None and drafter_ops.first_ops)
        if drafter_ops is not None:
            self._da = (drafter_ops._attn_decode, drafter_ops._attn_verify,
                        drafter_ops._attn_consts)
            self._da_dec, self._da_ver, self._da_pre = self._da

    # ------------------------------------------------------------------ one step
    def step(self, shape: StepShape) -> StepTime:
        """Duration and breakdown of one step."""
        b, dctx, k, pf, pctx, pseqs = shape
        ov = self.overhead_s
        if b == 0 and pf == 0:
            return _new_time(StepTime, (ov, 0.0, 0.0, 0.0, ov))
        v = self.v
        k1 = k + 1
        t_dec = b * k1
        verify = 0.0
        prefill = 0.0
        draft = 0.0
        dense_t = 0.0
        if b:
            kv = dctx / b + k1
            dense_t = v._dense[t_dec] if t_dec <= v.dense_safe else v.dense(t_dec)
            attn = attention_time(self._va_ver if k else self._va_dec, b, k1, kv, False)
            head = v._head[t_dec] if t_dec <= v.head_safe else v.head(t_dec)
            host = self._per_seq * b + self._per_token * t_dec
            verify = dense_t + attn + head + host + (self._spec if k else 0.0)
        if pf:
            seqs = pseqs if pseqs > 1 else 1
            q = pf / seqs
            cached = max(pctx / seqs - q, 0.0)
            t_all = t_dec + pf
            dense_all = v._dense[t_all] if t_all <= v.dense_safe else v.dense(t_all)
            attn_p = attention_time(self._va_pre, seqs, q, cached + q, True)
            head_s = v._head[seqs] if seqs <= v.head_safe else v.head(seqs)
            prefill = (dense_all - dense_t) + attn_p + head_s + (self._pw + self._per_seq * seqs)
        if k:
            d = self.d
            if d is not None:
                t1 = t_dec + self._extra * b
                if b:
                    kv1 = dctx / b + k1
                    d1 = d._dense[t1] if t1 <= d.dense_safe else d.dense(t1)
                    if self._has_first:
                        d1 = d1 + d.first(t1)
                    hb = d._head[b] if b <= d.head_safe else d.head(b)
                    first = d1 + attention_time(self._da_ver, b, k1 + self._extra, kv1,
                                                False) + hb
                    later = 0.0
                    if k > 1:
                        kv2 = dctx / b + (k + 2) / 2.0 + 1.0
                        db = d._dense[b] if b <= d.dense_safe else d.dense(b)
                        later = (k - 1) * (db + attention_time(self._da_dec, b, 1, kv2, False)
                                           + hb)
                    draft = first + later + k * self._pass
                if pf:
                    t1p = t1 + pf
                    whole = d.dense(t1p)
                    part = d.dense(t1)
                    if self._has_first:
                        whole = whole + d.first(t1p)
                        part = part + d.first(t1)
                    prefill += whole - part + attention_time(self._da_pre, seqs, q, cached + q,
                                                             True)
            elif b:
                draft = b * self._cpu_seq + self._ngram_ctx * dctx
        total = ov + prefill + draft + verify
        return _new_time(StepTime, (total, prefill, draft, verify, ov))

    # ------------------------------------------------------------------ many steps
    def parts(
        self,
        decode_seqs: npt.ArrayLike,
        decode_context: npt.ArrayLike,
        k: npt.ArrayLike,
        prefill_tokens: npt.ArrayLike = 0,
        prefill_context: npt.ArrayLike = 0,
        prefill_seqs: npt.ArrayLike = 0,
    ) -> dict[str, _F64]:
        """Every part of the steps' time by term (:data:`PARTS`; arrays broadcast together).

        ``verify`` = verify_dense + verify_attention + verify_logits + verify_host + spec_fixed,
        ``draft`` = draft_first + draft_later + draft_host, ``prefill`` = prefill_dense +
        prefill_attention + prefill_logits + prefill_host + prefill_draft, ``overhead`` =
        host_step (summed in these orders, as :meth:`step` sums them).
        """
        b, dctx, kk, pf, pctx, pseqs = np.broadcast_arrays(
            *(np.asarray(x, dtype=np.int64) for x in (decode_seqs, decode_context, k,
                                                        prefill_tokens, prefill_context,
                                                        prefill_seqs))
        )
        v = self.v
        shape = b.shape
        z = np.zeros(shape)
        has_b, has_pf, has_k = b > 0, pf > 0, kk > 0
        live = has_b | has_pf
        k1 = kk + 1
        t_dec = b * k1
        bf = np.where(has_b, b, 1).astype(np.float64)
        b0 = np.where(has_b, bf, 0.0)
        kv = dctx / bf + k1
        k1f = k1.astype(np.float64)
        dense_t = np.where(has_b, v.dense_arr(np.where(has_b, t_dec, 0)), 0.0)
        # each entry's attention at its own constants (decode for k = 0, verify for k > 0); a
        # table of one k computes only the one it needs
        any_k, any_plain = bool(has_k.any()), bool((~has_k).any())
        if any_k and any_plain:
            attn = np.where(has_k, attention_time_arr(self._va[1], b0, k1f, kv, False),
                            attention_time_arr(self._va[0], b0, k1f, kv, False))
        else:
            attn = attention_time_arr(self._va[1] if any_k else self._va[0], b0, k1f, kv, False)
        out: dict[str, _F64] = {p: z for p in PARTS}
        out["host_step"] = np.full(shape, self.overhead_s)
        out["verify_dense"] = dense_t
        out["verify_attention"] = attn  # 0 where there is no decode (batch 0)
        out["verify_logits"] = np.where(has_b, v.head_arr(np.where(has_b, t_dec, 0)), 0.0)
        out["verify_host"] = np.where(has_b, self._per_seq * b + self._per_token * t_dec, 0.0)
        out["spec_fixed"] = np.where(has_b & has_k, self._spec, 0.0)
        seqs = np.maximum(pseqs, 1)
        sf = seqs.astype(np.float64)
        q = pf / sf
        cached = np.maximum(pctx / sf - q, 0.0)
        if has_pf.any():
            sp = np.where(has_pf, sf, 0.0)
            dense_all = v.dense_arr(np.where(has_pf, t_dec + pf, 0))
            out["prefill_dense"] = np.where(has_pf, dense_all - dense_t, 0.0)
            out["prefill_attention"] = attention_time_arr(self._va[2], sp, q, cached + q, True)
            out["prefill_logits"] = np.where(has_pf, v.head_arr(np.where(has_pf, seqs, 0)), 0.0)
            out["prefill_host"] = np.where(has_pf, self._pw + self._per_seq * sf, 0.0)
        d = self.d
        kb = has_k & has_b
        kp = has_k & has_pf
        if d is not None and (kb.any() or kp.any()):
            extra = self._extra * b
            t1 = np.where(kb | kp, t_dec + extra, 0)
            rows = np.where(kb, b, 0)
            t1b = np.where(kb, t1, 0)
            d1 = d.dense_arr(t1b)
            if self._has_first:
                d1 = d1 + d.first_arr(t1b)
            a1 = attention_time_arr(self._da[1], np.where(kb, bf, 0.0),
                                    (k1 + self._extra).astype(np.float64), kv, False)
            hb = d.head_arr(rows)
            out["draft_first"] = np.where(kb, d1 + a1 + hb, 0.0)
            kl = kb & (kk > 1)
            if kl.any():
                kv2 = dctx / bf + (kk + 2) / 2.0 + 1.0
                a2 = attention_time_arr(self._da[0], np.where(kb, bf, 0.0), np.ones(shape), kv2,
                                        False)
                later = (kk - 1) * (d.dense_arr(rows) + a2 + hb)
                out["draft_later"] = np.where(kl, later, 0.0)
            out["draft_host"] = np.where(kb, kk * self._pass, 0.0)
            if kp.any():
                t1p = np.where(kp, t1 + pf, 0)
                t1k = np.where(kp, t1, 0)
                whole = d.dense_arr(t1p)
                part = d.dense_arr(t1k)
                if self._has_first:
                    whole = whole + d.first_arr(t1p)
                    part = part + d.first_arr(t1k)
                pdraft = (whole - part + attention_time_arr(self._da[2], np.where(kp, sf, 0.0),
                                                            q, cached + q, True))
                out["prefill_draft"] = np.where(kp, pdraft, 0.0)
        elif d is None:
            out["draft_host"] = np.where(kb, b * self._cpu_seq + self._ngram_ctx * dctx, 0.0)
        if not live.all():
            for p in PARTS[1:]:
                out[p] = np.where(live, out[p], 0.0)
        return out

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
        :class:`~sdsim.costs.step.StepTimes` of float64 arrays, bit for bit what :meth:`step`
        gives for each shape."""
        p = self.parts(decode_seqs, decode_context, k, prefill_tokens, prefill_context,
                       prefill_seqs)
        b = np.asarray(decode_seqs)
        has_b = np.broadcast_to(b > 0, p["host_step"].shape)
        verify = np.where(
            has_b,
            p["verify_dense"] + p["verify_attention"] + p["verify_logits"] + p["verify_host"]
            + p["spec_fixed"],
            0.0,
        )
        prefill = (p["prefill_dense"] + p["prefill_attention"] + p["prefill_logits"]
                   + p["prefill_host"])
        prefill = prefill + p["prefill_draft"]
        if self.d is not None:
            draft = p["draft_first"] + p["draft_later"] + p["draft_host"]
        else:
            draft = p["draft_host"]
        ov = p["host_step"]
        total = ov + prefill + draft + verify
        return StepTimes(total, prefill, draft, verify, ov)

    # ------------------------------------------------------------------ lines
    def linearize(self, k: int, max_batch: int = 256, context: int = 1024) -> LinearCoefficients:
        """Lines through the step cost (see :func:`~sdsim.costs.kernel.fit_linear`)."""
        return fit_linear(self.step, k, max_batch, context, self.drafter_prefills)
