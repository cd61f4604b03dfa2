"""The numpy benchmark backend: float32 kernels on the CPU, timed with ``perf_counter``.

Always available. The operators are the same shapes a GPU runs (GEMMs through numpy's BLAS,
element-wise norms and activations, GQA attention with an explicit softmax); timings describe
this CPU, which makes the bundle a real, if slow, device profile and an end-to-end check of the
bundle pipeline.
"""

from __future__ import annotations

__all__ = ["NumpyBackend"]

import os
import platform
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from sdsim.bench.harness import gemm_shape
from sdsim.models import ModelSpec
from sdsim.rng import stream


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class NumpyBackend:
    """float32 numpy kernels on the CPU.

    Parameters
    ----------
    seed
        Seed of the ``bench`` random stream (MoE routing and inputs).
    """

    name = "numpy"
    dtype = "float32"

    def __init__(self, seed: int = 0) -> None:
        self.rng = stream(seed, "bench")
        self._weights: dict[tuple[int, int], np.ndarray] = {}

    def device(self) -> str:
        """CPU model and core count."""
        return f"cpu: {_cpu_name()} ({os.cpu_count()} cores)"

    def versions(self) -> dict[str, str]:
        """numpy's BLAS is what matters; numpy's version is recorded by the harness."""
        return {}

    def release(self) -> None:
        """Drop cached weights."""
        self._weights.clear()

    def _w(self, k: int, n: int) -> np.ndarray:
        # weights are shared across token counts of one op (allocation is not what we time)
        key = (k, n)
        w = self._weights.get(key)
        if w is None:
            w = np.full((k, n), 0.01, dtype=np.float32)
            self._weights[key] = w
        return w

    def _x(self, t: int, k: int) -> np.ndarray:
        return self.rng.standard_normal((t, k), dtype=np.float32)

    def dense(self, model: ModelSpec, op: str, tokens: int) -> Callable[[], Any]:
        """One call of a token-keyed operator."""
        m, t, h = model, tokens, model.hidden
        shape = gemm_shape(m, op)
        if shape is not None:
            k, n = shape
            x, w = self._x(t, k), self._w(k, n)
            return lambda: x @ w
        if op == "norm":
            x, r = self._x(t, h), self._x(t, h)
            g = np.ones(h, dtype=np.float32)

            def norm() -> Any:
                s = x + r
                return s * (1.0 / np.sqrt((s * s).mean(axis=1, keepdims=True) + 1e-6)) * g

            return norm
        if op == "rope":
            width = m.q_dim + m.kv_dim
            x = self._x(t, width)
            half = width // 2
            cos = np.ones((t, half), dtype=np.float32)
            sin = np.zeros((t, half), dtype=np.float32)

            def rope() -> Any:
                a, b = x[:, :half], x[:, half : 2 * half]
                return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=1)

            return rope
        if op == "act":
            gu = self._x(t, 2 * m.ffn)

            def act() -> Any:
                g, u = gu[:, : m.ffn], gu[:, m.ffn :]
                return g / (1.0 + np.exp(-g)) * u

            return act
        if op == "embedding":
            table = self._w(m.vocab, h)
            ids = self.rng.integers(0, m.vocab, size=t)
            return lambda: table[ids]
        if op == "sampling":
            logits = self._x(t, m.vocab)

            def sample() -> Any:
                z = logits - logits.max(axis=1, keepdims=True)
                p = np.exp(z)
                p /= p.sum(axis=1, keepdims=True)
                return p.argmax(axis=1)

            return sample
        if op == "experts":
            return self._experts(model, t)
        raise KeyError(f"numpy backend cannot time {op!r}")

    def _experts(self, m: ModelSpec, t: int) -> Callable[[], Any]:
        # route each token to experts_per_token distinct experts uniformly at random, then run
        # each touched expert's gate_up, activation and down over its tokens
        h, f, e = m.hidden, m.ffn, m.experts
        w_gu = [np.full((h, 2 * f), 0.01, dtype=np.float32) for _ in range(e)]
        w_d = [np.full((f, h), 0.01, dtype=np.float32) for _ in range(e)]
        x = self._x(t, h)
        choice = np.argsort(self.rng.random((t, e)), axis=1)[:, : m.experts_per_token]
        groups = [np.nonzero((choice == j).any(axis=1))[0] for j in range(e)]
        work = [(j, idx) for j, idx in enumerate(groups) if idx.size]

        def experts() -> Any:
            out = np.zeros_like(x)
            for j, idx in work:
                gu = x[idx] @ w_gu[j]
                g, u = gu[:, :f], gu[:, f:]
                out[idx] += (g / (1.0 + np.exp(-g)) * u) @ w_d[j]
            return out

        return experts

    def attention(self, model: ModelSpec, batch: int, query: int, kv: int) -> Callable[[], Any]:
        """One layer's GQA attention, causal with the query at the end of the keys."""
        m = model
        g = m.heads // m.kv_heads
        q = self.rng.standard_normal((batch, m.kv_heads, g, query, m.head_dim), dtype=np.float32)
        k = self.rng.standard_normal((batch, m.kv_heads, kv, m.head_dim), dtype=np.float32)
        v = self.rng.standard_normal((batch, m.kv_heads, kv, m.head_dim), dtype=np.float32)
        scale = np.float32(1.0 / np.sqrt(m.head_dim))
        mask = None
        if query > 1:
            i = np.arange(query)[:, None] + (kv - query)
            mask = np.arange(kv)[None, :] > i

        def attn() -> Any:
            s = np.einsum("bhgqd,bhkd->bhgqk", q, k, optimize=True) * scale
            if mask is not None:
                s = np.where(mask, np.float32(-np.inf), s)
            s = np.exp(s - s.max(axis=-1, keepdims=True))
            s /= s.sum(axis=-1, keepdims=True)
            return np.einsum("bhgqk,bhkd->bhgqd", s, v, optimize=True)

        return attn

    def time(self, fn: Callable[[], Any], warmup: int, repeats: int) -> list[float]:
        """Wall-clock seconds per call."""
        for _ in range(warmup):
            fn()
        out = []
        for _ in range(max(repeats, 1)):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
        return out
