"""Roofline operator costs from a GPU's spec sheet: the embedded default that works offline.

Every operator of a transformer forward pass is reduced to the floating-point operations it does
and the bytes it moves through device memory; its time is

    max(FLOPs / (peak FLOP/s x compute efficiency),
        bytes / (peak bandwidth x memory efficiency),
        launch floor)

Operators (per layer unless noted; shapes per GPU under tensor parallelism ``tp``):

* ``qkv``, ``o``, ``gate_up``, ``down``: GEMMs, weights read once per pass (bytes = weights +
  activations in and out; FLOPs = 2 x tokens x in x out).
* ``router`` and ``experts`` (MoE, replacing ``gate_up``/``act``/``down``): the expert GEMMs read
  the weights of the *expected number of distinct experts touched* by the step's tokens,
  E x (1 - (1 - m/E)^T) under uniform routing (THEORY.md), while FLOPs grow with T x m.
* ``norm`` (x2, residual add fused as in vLLM), ``rope``, ``act``: element-wise, memory-bound.
* attention: prefill (causal, a chunk of q tokens over cached + q keys), decode and verify
  (each request's (k+1)-token query reads its whole KV cache); gpt-oss style sliding-window
  layers read at most the window.
* ``allreduce`` (x2 per layer when tp > 1): ring all-reduce of tokens x hidden activations,
  2 (tp - 1) / tp x bytes over one direction of the GPU link, plus a latency.
* once per pass: ``embedding`` (lookup), ``lm_head`` (only for rows that need logits) and
  ``sampling`` (reads the logits).

Efficiency factors (:class:`Efficiency`) are documented where they are defined; they are the only
tuning knobs, and they are checked against Vidur's measured H100 kernels in the tests and notes.
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_EFFICIENCY",
    "Efficiency",
    "OpWork",
    "RooflineOps",
    "attention_time",
    "attention_time_arr",
]

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from sdsim.hardware import GPUSpec
from sdsim.models import ModelSpec


@dataclass(frozen=True)
class Efficiency:
    """Fractions of the spec-sheet peaks that real kernels reach, and fixed latencies.

    Attributes
    ----------
    gemm_compute
        Large BF16 GEMMs reach ~70-80% of dense peak on H100 (Vidur's measured mlp_up_proj at
        4096 tokens for Llama-2-7B runs at 749 TFLOPS = 76% of 989); we use 0.75.
    moe_compute
        Grouped expert GEMMs with few tokens per expert are less efficient: 0.5.
    attention_compute
        FlashAttention-2/3 forward reaches ~50-70% of peak on Hopper; 0.55.
    memory
        Weight-streaming GEMMs at small batch read at ~80% of peak HBM bandwidth (Vidur's H100
        Llama-2-7B GEMMs at 1 token: 71-84% of 3.35 TB/s); 0.8.
    attention_memory
        Paged KV reads in decode attention: 0.7 (block gathers, partial reductions).
    link
        Fraction of one-direction link bandwidth a ring all-reduce achieves: 0.8.
    launch_floor_s
        The shortest a kernel takes, however small its work (launch plus tail): 2.5 us, the order
        of Vidur's smallest element-wise kernels (1-4 us) under CUDA graphs.
    allreduce_latency_s
        Fixed latency of one all-reduce (NCCL over NVLink, small messages): 8 us.
    sampling_kernels
        Kernels the sampler launches per step (softmax, top-k/top-p, draw): 3.
    """

    gemm_compute: float = 0.75
    moe_compute: float = 0.5
    attention_compute: float = 0.55
    memory: float = 0.8
    attention_memory: float = 0.7
    link: float = 0.8
    launch_floor_s: float = 2.5e-6
    allreduce_latency_s: float = 8e-6
    sampling_kernels: int = 3


DEFAULT_EFFICIENCY = Efficiency()


class OpWork(NamedTuple):
    """The work of one operator call: FLOPs, bytes moved, and which efficiencies apply."""

    flops: Any  # float, or an array over token counts
    bytes: Any
    compute_eff: float
    memory_eff: float
    kernels: int = 1
    fixed_s: Any = 0.0
    gemm: bool = False  # a weight GEMM (its time is what a calibrated GEMM curve replaces)


def attention_time(
    consts: tuple[float, ...], batch: float, query: float, kv: float, causal: bool
) -> float:
    """All layers' attention from precomputed constants (``RooflineOps._attn_consts`` layout:
    seconds per FLOP-unit, per KV token, per query token, the per-layer floor, full-attention
    layers, sliding-window layers, window), for ``batch`` sequences of ``query`` new tokens each
    over ``kv`` keys (``causal``: the chunk's own square is halved). Scalar arithmetic only: the
    step of a kernel cost model calls it once per attention."""
    if batch <= 0 or query <= 0:
        return 0.0
    c_f, c_kv, c_q, floor, n_full, n_slide, window = consts
    keys = kv - query / 2.0 if causal else kv
    t = max(batch * query * max(keys, 0.0) * c_f, batch * (kv * c_kv + query * c_q), floor)
    total = n_full * t
    if n_slide:
        kv_s = min(kv, window + query)
        keys = kv_s - query / 2.0 if causal else kv_s
        t = max(batch * query * max(keys, 0.0) * c_f, batch * (kv_s * c_kv + query * c_q), floor)
        total += n_slide * t
    return total


def attention_time_arr(
    consts: tuple[float, ...],
    batch: npt.NDArray[np.float64],
    query: npt.NDArray[np.float64],
    kv: npt.NDArray[np.float64],
    causal: bool,
) -> npt.NDArray[np.float64]:
    """:func:`attention_time` elementwise over arrays: the same operations in the same order
    (max is exact, and integer batch x query products below 2**53 are exact in float64 as in
    Python ints), so the same floats."""
    c_f, c_kv, c_q, floor, n_full, n_slide, window = consts
    bq = batch * query
    qc = query * c_q
    keys = kv - query / 2.0 if causal else kv
    t = np.maximum(np.maximum(bq * np.maximum(keys, 0.0) * c_f, batch * (kv * c_kv + qc)), floor)
    total = n_full * t
    if n_slide:
        kv_s = np.minimum(kv, window + query)
        keys = kv_s - query / 2.0 if causal else kv_s
        t = np.maximum(
            np.maximum(bq * np.maximum(keys, 0.0) * c_f, batch * (kv_s * c_kv + qc)), floor
        )
        total = total + n_slide * t
    return np.where((batch > 0) & (query > 0), total, 0.0)


class RooflineOps:
    """Operator times of one model on one GPU from the roofline.

    Parameters
    ----------
    model
        Architecture.
    gpu
        Spec sheet.
    tp
        Tensor-parallel degree (work split evenly; all-reduce added).
    eff
        Efficiency factors.
    dtype
        ``bf16`` (activations and KV in 2 bytes) or ``fp8`` (peak FLOPs of FP8, 1-byte weights and
        KV). Weights use the model's ``weight_bytes`` unless fp8.
    """

    def __init__(
        self,
        model: ModelSpec,
        gpu: GPUSpec,
        tp: int = 1,
        eff: Efficiency = DEFAULT_EFFICIENCY,
        dtype: str = "bf16",
    ) -> None:
        self.model = model
        self.gpu = gpu
        self.tp = max(1, int(tp))
        self.eff = eff
        self.dtype = dtype
        self.peak = gpu.flops_per_s(dtype)
        self.bw = gpu.mem_bytes_per_s
        self.act_bytes = 2.0
        self.w_bytes = 1.0 if dtype == "fp8" else model.weight_bytes
        self.ew_bytes = (
            self.w_bytes if model.expert_weight_bytes is None else model.expert_weight_bytes
        )
        self.kv_bytes = 1.0 if dtype == "fp8" else 2.0
        self.layers = model.layers
        ops: list[tuple[str, int]] = [("norm", 2), ("qkv", 1), ("rope", 1), ("o", 1)]
        if model.is_moe:
            ops += [("router", 1), ("experts", 1)]
        else:
            ops += [("gate_up", 1), ("act", 1), ("down", 1)]
        if self.tp > 1:
            ops.append(("allreduce", 2))
        self.layer_ops: tuple[tuple[str, int], ...] = tuple(ops)
        self.once_ops: tuple[str, ...] = ("embedding",) + (("eagle_fc",) if model.input_fc else ())
        # operators of a step's first draft pass only (EAGLE-3's fusion of three hidden layers)
        self.first_ops: tuple[str, ...] = ("eagle3_fc",) if model.first_pass_fc else ()
        self._attn_consts = self.attention_consts(eff.attention_compute, eff.attention_memory,
                                                  eff.launch_floor_s)

    def attention_consts(
        self, compute_eff: float, memory_eff: float, floor_s: float
    ) -> tuple[float, ...]:
        """The constants :func:`attention_time` reads, at the given efficiencies and per-layer
        floor."""
        model = self.model
        heads = model.heads / self.tp
        kvd = max(model.kv_heads / self.tp, 1.0) * model.head_dim
        n_full, n_slide, window = self._attn_split()
        return (
            4.0 * heads * model.head_dim / (self.peak * compute_eff),
            2.0 * kvd * self.kv_bytes / (self.bw * memory_eff),
            (2.0 * kvd * self.kv_bytes + 2.0 * heads * model.head_dim * self.act_bytes)
            / (self.bw * memory_eff),
            floor_s,
            n_full,
            n_slide,
            window,
        )

    # ------------------------------------------------------------------ work
    def _gemm(self, tokens: Any, k_in: float, n_out: float) -> OpWork:
        e = self.eff
        flops = 2.0 * tokens * k_in * n_out
        byt = k_in * n_out * self.w_bytes + tokens * (k_in + n_out) * self.act_bytes
        return OpWork(flops, byt, e.gemm_compute, e.memory, gemm=True)

    def work(self, name: str, tokens: float | npt.NDArray[np.float64]) -> OpWork:
        """FLOPs and bytes of one operator at ``tokens`` rows (per layer for layer ops).

        Raises
        ------
        KeyError
            Unknown operator name.
        """
        m, tp, e, a = self.model, self.tp, self.eff, self.act_bytes
        t = np.asarray(tokens, dtype=float)
        h = m.hidden
        if name == "qkv":
            return self._gemm(t, m.qkv_in, (m.q_dim + 2 * m.kv_dim) / tp)
        if name == "o":
            return self._gemm(t, m.q_dim / tp, h)
        if name == "gate_up":
            return self._gemm(t, h, (m.mlp_mats - 1) * m.ffn / tp)
        if name == "down":
            return self._gemm(t, m.ffn / tp, h)
        if name == "eagle_fc":
            return self._gemm(t, m.input_fc, h)
        if name == "eagle3_fc":
            return self._gemm(t, m.first_pass_fc, h)
        if name == "lm_head":
            return self._gemm(t, h, m.vocab / tp)
        if name == "router":
            return self._gemm(t, h, m.experts)
        if name == "experts":
            E, k = m.experts, m.experts_per_token
            touched = E * (1.0 - (1.0 - k / E) ** t)
            per_expert = m.mlp_mats * h * m.ffn / tp
            flops = 2.0 * t * k * per_expert
            act = t * k * (2 * h + m.mlp_mats * m.ffn / tp) * a
            # gate_up GEMM, activation, down GEMM: three kernels over the touched experts
            return OpWork(flops, touched * per_expert * self.ew_bytes + act, e.moe_compute,
                          e.memory, kernels=3)
        if name == "norm":
            # fused residual add + RMSNorm: read x and residual, write both
            return OpWork(4.0 * t * h, 4.0 * t * h * a, 1.0, e.memory)
        if name == "rope":
            width = (m.q_dim + m.kv_dim) / tp
            return OpWork(6.0 * t * width, 2.0 * t * width * a, 1.0, e.memory)
        if name == "act":
            f = m.ffn / tp
            return OpWork(5.0 * t * f, 3.0 * t * f * a, 1.0, e.memory)
        if name == "embedding":
            return OpWork(0.0, 2.0 * t * h * a, 1.0, e.memory)
        if name == "sampling":
            # logits (fp32) read by softmax, top-k/top-p and the draw
            byt = 3.0 * t * m.vocab * 4.0
            return OpWork(5.0 * t * m.vocab, byt, 1.0, e.memory, kernels=e.sampling_kernels)
        if name == "allreduce":
            byt = t * h * a
            ring = 2.0 * (tp - 1) / tp * byt
            return OpWork(0.0, 0.0, 1.0, 1.0, fixed_s=e.allreduce_latency_s + ring / (
                self.gpu.link_bytes_per_s * e.link))
        raise KeyError(f"unknown operator {name!r}")

    def time(self, w: OpWork) -> Any:
        """Roofline time of a piece of work (seconds; an array when the work is one)."""
        compute = np.asarray(w.flops, dtype=float) / (self.peak * w.compute_eff)
        memory = np.asarray(w.bytes, dtype=float) / (self.bw * w.memory_eff)
        floor = w.kernels * self.eff.launch_floor_s
        return np.maximum(np.maximum(compute, memory), floor) + w.fixed_s

    def op(self, name: str, tokens: float) -> float:
        """Seconds for one call of an operator at ``tokens`` rows (0 rows cost nothing)."""
        if tokens <= 0:
            return 0.0
        return float(self.time(self.work(name, tokens)))

    def op_vec(self, name: str, tokens: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """:meth:`op` over an array of token counts at once."""
        t = np.asarray(tokens, dtype=float)
        out = np.asarray(self.time(self.work(name, t)), dtype=float)
        return np.where(t > 0, np.broadcast_to(out, t.shape), 0.0)

    def has(self, name: str) -> bool:
        """Whether this source can time the operator (the roofline times them all)."""
        return True

    # ------------------------------------------------------------------ attention
    def _attn_split(self) -> tuple[int, int, int]:
        m = self.model
        n_slide = min(m.sliding_layers, m.layers) if m.sliding_window else 0
        return m.layers - n_slide, n_slide, m.sliding_window

    def attention_work(self, batch: float, query: float, kv: float, causal_chunk: bool) -> OpWork:
        """One layer's attention for ``batch`` sequences, each ``query`` new tokens over ``kv``
        keys (kv includes the new tokens); ``causal_chunk`` halves the chunk's own square."""
        m, tp, e = self.model, self.tp, self.eff
        heads = m.heads / tp
        kvd = max(m.kv_heads / tp, 1.0) * m.head_dim
        eff_keys = kv - query / 2.0 if causal_chunk else kv
        flops = batch * 4.0 * heads * m.head_dim * query * max(eff_keys, 0.0)
        byt = batch * (
            2.0 * kv * kvd * self.kv_bytes  # read K and V
            + 2.0 * query * kvd * self.kv_bytes  # write the new K and V
            + 2.0 * query * heads * m.head_dim * self.act_bytes  # read Q, write O
        )
        return OpWork(flops, byt, e.attention_compute, e.attention_memory)

    def decode_attention(self, batch: float, query: float, kv: float) -> float:
        """All layers' decode/verify attention: ``batch`` requests, ``query`` = k + 1 tokens each,
        ``kv`` keys per request (mean)."""
        return attention_time(self._attn_consts, batch, query, kv, False)

    def prefill_attention(self, seqs: float, query: float, cached: float) -> float:
        """All layers' causal prefill attention: ``seqs`` chunks of ``query`` tokens (mean), each
        after ``cached`` tokens already in the KV cache."""
        return attention_time(self._attn_consts, seqs, query, cached + query, True)

    def decode_attention_arr(
        self, batch: npt.ArrayLike, query: npt.ArrayLike, kv: npt.ArrayLike
    ) -> npt.NDArray[np.float64]:
        """:meth:`decode_attention` elementwise over arrays of batches, queries and KV lengths,
        bit for bit the same floats."""
        b, q, v = np.broadcast_arrays(
            *(np.asarray(x, dtype=np.float64) for x in (batch, query, kv))
        )
        return attention_time_arr(self._attn_consts, b, q, v, False)

    def prefill_attention_arr(
        self, seqs: npt.ArrayLike, query: npt.ArrayLike, cached: npt.ArrayLike
    ) -> npt.NDArray[np.float64]:
        """:meth:`prefill_attention` elementwise over arrays, bit for bit the same floats."""
        s, q, c = np.broadcast_arrays(
            *(np.asarray(x, dtype=np.float64) for x in (seqs, query, cached))
        )
        return attention_time_arr(self._attn_consts, s, q, c + q, True)

    # ------------------------------------------------------------------ reports
    def breakdown(self, tokens: float) -> dict[str, float]:
        """Per-layer operator times at ``tokens`` rows (seconds), for tables and checks."""
        return {name: self.op(name, tokens) for name, _ in self.layer_ops}

    def ops_names(self) -> Sequence[str]:
        """Every operator this source can time."""
        return [n for n, _ in self.layer_ops] + [*self.once_ops, *self.first_ops, "lm_head",
                                                  "sampling"]
