"""Kernel microbenchmark harness: measure a model's operator shapes and write a profile bundle.

For every model it times, one layer's operators at each token count of the grid (the layer
operators of :class:`~sdsim.costs.roofline.RooflineOps`: norm, qkv, rope, o, gate_up, act, down,
or router and experts for MoE models; plus embedding, lm_head, sampling and eagle_fc), one
layer's decode/verify attention over a (batch, query, kv) grid, and causal prefill attention over
a (chunk, cached prefix) grid. Each point is run ``warmup`` times untimed, then ``repeats`` times
timed; the bundle keeps the median and the spread (min, max, std) in microseconds.
"""

from __future__ import annotations

__all__ = ["FULL_GRID", "QUICK_GRID", "Backend", "BenchGrid", "gemm_shape", "run_bench"]

import datetime as dt
import platform
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd

from sdsim._version import __version__
from sdsim.costs.profile import FORMAT, ProfileBundle
from sdsim.models import ModelSpec


@dataclass(frozen=True)
class BenchGrid:
    """The shapes a bench run measures."""

    tokens: tuple[int, ...]
    decode_batch: tuple[int, ...]
    decode_query: tuple[int, ...]
    decode_kv: tuple[int, ...]
    prefill_query: tuple[int, ...]
    prefill_cached: tuple[int, ...]
    warmup: int = 3
    repeats: int = 20


# Covers what a vLLM-class engine runs: up to 8192 batched tokens, 256 decoding requests, draft
# lengths up to 7 (query 8), KV up to 16K per request, 8K prefill chunks.
FULL_GRID = BenchGrid(
    tokens=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192),
    decode_batch=(1, 2, 4, 8, 16, 32, 64, 128, 256),
    decode_query=(1, 2, 3, 4, 5, 6, 8),
    decode_kv=(128, 512, 1024, 2048, 4096, 8192, 16384),
    prefill_query=(128, 512, 1024, 2048, 4096, 8192),
    prefill_cached=(0, 1024, 4096, 16384),
    warmup=3,
    repeats=20,
)

# A reduced grid that runs in seconds to minutes on a CPU.
QUICK_GRID = BenchGrid(
    tokens=(1, 8, 32, 128, 512),
    decode_batch=(1, 8, 32),
    decode_query=(1, 5),
    decode_kv=(128, 1024),
    prefill_query=(64, 512),
    prefill_cached=(0, 512),
    warmup=1,
    repeats=5,
)


class Backend(Protocol):
    """A way to build and time kernels on one device."""

    name: str
    dtype: str

    def device(self) -> str:
        """Human description of the device measured."""
        ...

    def versions(self) -> dict[str, str]:
        """Library versions that matter for the timings."""
        ...

    def dense(self, model: ModelSpec, op: str, tokens: int) -> Callable[[], Any]:
        """A closure running one call of ``op`` at ``tokens`` rows (inputs pre-allocated)."""
        ...

    def attention(self, model: ModelSpec, batch: int, query: int, kv: int) -> Callable[[], Any]:
        """A closure running one layer's attention (causal, bottom-right aligned)."""
        ...

    def time(self, fn: Callable[[], Any], warmup: int, repeats: int) -> list[float]:
        """Seconds per call, ``repeats`` samples after ``warmup`` untimed calls."""
        ...

    def release(self) -> None:
        """Free cached buffers between models."""
        ...


def gemm_shape(model: ModelSpec, op: str) -> tuple[int, int] | None:
    """(K, N) of the weight matrix behind a GEMM operator, or ``None`` when ``op`` is no GEMM.

    One table for every backend, so numpy and torch time the same shapes.
    """
    m, h = model, model.hidden
    shapes = {
        "qkv": (h, m.q_dim + 2 * m.kv_dim),
        "o": (m.q_dim, h),
        "gate_up": (h, (m.mlp_mats - 1) * m.ffn),
        "down": (m.ffn, h),
        "lm_head": (h, m.vocab),
        "eagle_fc": (2 * h, h),
        "router": (h, max(m.experts, 1)),
    }
    return shapes.get(op)


def layer_ops(model: ModelSpec) -> dict[str, int]:
    """Operators of one layer and calls per layer (the roofline's composition at tp 1)."""
    ops = {"norm": 2, "qkv": 1, "rope": 1, "o": 1}
    if model.is_moe:
        ops.update(router=1, experts=1)
    else:
        ops.update(gate_up=1, act=1, down=1)
    return ops


ONCE_OPS = ("embedding", "lm_head", "sampling", "eagle_fc")


def _stats(samples: list[float]) -> dict[str, float]:
    us = [s * 1e6 for s in samples]
    return {
        "median_us": statistics.median(us),
        "min_us": min(us),
        "max_us": max(us),
        "std_us": statistics.stdev(us) if len(us) > 1 else 0.0,
        "n": len(us),
    }


def _model_meta(model: ModelSpec) -> dict[str, Any]:
    return {
        "hidden": model.hidden,
        "heads": model.heads,
        "kv_heads": model.kv_heads,
        "head_dim": model.head_dim,
        "ffn": model.ffn,
        "vocab": model.vocab,
        "experts": model.experts,
        "experts_per_token": model.experts_per_token,
        "layers": model.layers,
        "input_fc": 2 * model.hidden,
        "layer_ops": layer_ops(model),
    }


def run_bench(
    models: list[ModelSpec],
    backend: Backend,
    grid: BenchGrid,
    progress: Callable[[int, int, str], None] | None = None,
) -> ProfileBundle:
    """Measure every model's operator grid on one backend.

    Parameters
    ----------
    models
        Models to measure (TP 1 shapes).
    backend
        The numpy or torch backend.
    grid
        Shapes, warm-up and repeat counts.
    progress
        Called with (done, total, label) after each point.

    Returns
    -------
    ProfileBundle
        Ready for :func:`~sdsim.costs.profile.write_bundle`.
    """
    jobs: list[tuple[ModelSpec, str, tuple[int, ...]]] = []
    for m in models:
        for op in (*layer_ops(m), *ONCE_OPS):
            for t in grid.tokens:
                jobs.append((m, op, (t,)))
        for b in grid.decode_batch:
            for q in grid.decode_query:
                for kv in grid.decode_kv:
                    jobs.append((m, "decode", (b, q, max(kv, q))))
        for q in grid.prefill_query:
            for c in grid.prefill_cached:
                jobs.append((m, "prefill", (q, c)))
    dense_rows: list[dict[str, Any]] = []
    attn_rows: list[dict[str, Any]] = []
    current: str | None = None
    for i, (m, op, shape) in enumerate(jobs):
        if current is not None and current != m.name:
            backend.release()
        current = m.name
        if op == "decode":
            b, q, kv = shape
            fn = backend.attention(m, b, q, kv)
            st = _stats(backend.time(fn, grid.warmup, grid.repeats))
            attn_rows.append({"model": m.name, "tp": 1, "phase": "decode", "batch": b,
                              "query": q, "kv": kv, **st})
        elif op == "prefill":
            q, c = shape
            fn = backend.attention(m, 1, q, q + c)
            st = _stats(backend.time(fn, grid.warmup, grid.repeats))
            attn_rows.append({"model": m.name, "tp": 1, "phase": "prefill", "batch": 1,
                              "query": q, "kv": q + c, **st})
        else:
            (t,) = shape
            fn = backend.dense(m, op, t)
            st = _stats(backend.time(fn, grid.warmup, grid.repeats))
            dense_rows.append({"model": m.name, "tp": 1, "op": op, "tokens": t, **st})
        del fn
        if progress is not None:
            progress(i + 1, len(jobs), f"{m.name} {op} {shape}")
    backend.release()
    meta = {
        "format": FORMAT,
        "device": backend.device(),
        "backend": backend.name,
        "dtype": backend.dtype,
        "versions": {
            "sdsim": __version__,
            "python": platform.python_version(),
            "numpy": np.__version__,
            **backend.versions(),
        },
        "date": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
        "warmup": grid.warmup,
        "repeats": grid.repeats,
        "grids": {k: list(v) for k, v in asdict(grid).items() if isinstance(v, tuple)},
        "models": {m.name: _model_meta(m) for m in models},
    }
    return ProfileBundle(
        meta=meta, dense=pd.DataFrame(dense_rows), attention=pd.DataFrame(attn_rows)
    )
