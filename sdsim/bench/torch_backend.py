"""The torch benchmark backend: bf16 kernels on CUDA (timed with CUDA events) or on the CPU.

Attention uses ``torch.nn.functional.scaled_dot_product_attention`` with grouped-query heads
(``enable_gqa``), ``is_causal`` for a prefill chunk with no cached prefix, a bottom-right causal
mask when a chunk or a verify query follows cached keys, and no mask for one-token decode.
Optional: install with ``pip install 'sdsim[torch]'``.
"""

from __future__ import annotations

__all__ = ["TorchBackend", "torch_available"]

import time
from collections.abc import Callable
from typing import Any

from sdsim.bench.harness import gemm_shape
from sdsim.bench.numpy_backend import _cpu_name
from sdsim.errors import ScenarioError
from sdsim.models import ModelSpec
from sdsim.rng import stream


def torch_available() -> bool:
    """Whether torch can be imported."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


_DTYPES = {"bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16", "fp16": "float16",
           "float32": "float32", "fp32": "float32"}


class TorchBackend:
    """torch kernels on one device.

    Parameters
    ----------
    device
        ``cuda``, ``cuda:N`` or ``cpu``; ``None`` picks CUDA when available.
    dtype
        ``bfloat16`` (default), ``float16`` or ``float32``.
    seed
        Seed for inputs and MoE routing (a torch Generator seeded from the ``bench`` stream).
    """

    name = "torch"

    def __init__(self, device: str | None = None, dtype: str = "bfloat16", seed: int = 0) -> None:
        try:
            import torch
        except ImportError:
            raise ScenarioError(
                "--backend", "torch is not installed; pip install 'sdsim[torch]' or use numpy"
            ) from None
        self.torch = torch
        dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if dev.startswith("cuda") and not torch.cuda.is_available():
            raise ScenarioError("--device", "CUDA is not available on this machine")
        self.dev = torch.device(dev)
        if dtype not in _DTYPES:
            raise ScenarioError("--dtype", f"unknown dtype {dtype!r}; use {sorted(set(_DTYPES))}")
        self.dtype = _DTYPES[dtype]
        self.tdtype = getattr(torch, self.dtype)
        self.gen = torch.Generator(device=self.dev)
        self.gen.manual_seed(int(stream(seed, "bench").integers(0, 2**62)))
        self._weights: dict[tuple[int, int], Any] = {}

    @property
    def cuda(self) -> bool:
        """Whether kernels run on a CUDA device."""
        return self.dev.type == "cuda"

    def device(self) -> str:
        """GPU name, or the CPU."""
        if self.cuda:
            return f"cuda: {self.torch.cuda.get_device_name(self.dev)}"
        return f"cpu: {_cpu_name()} (torch, {self.torch.get_num_threads()} threads)"

    def versions(self) -> dict[str, str]:
        """torch, CUDA and cuDNN versions."""
        v = {"torch": str(self.torch.__version__)}
        if self.cuda:
            v["cuda"] = str(self.torch.version.cuda)
            v["cudnn"] = str(self.torch.backends.cudnn.version())
        return v

    def release(self) -> None:
        """Drop cached weights (and CUDA's cached blocks)."""
        self._weights.clear()
        if self.cuda:
            self.torch.cuda.empty_cache()

    def _w(self, k: int, n: int) -> Any:
        key = (k, n)
        w = self._weights.get(key)
        if w is None:
            w = self.torch.full((k, n), 0.01, dtype=self.tdtype, device=self.dev)
            self._weights[key] = w
        return w

    def _x(self, *shape: int) -> Any:
        return self.torch.randn(*shape, generator=self.gen, device=self.dev, dtype=self.tdtype)

    def dense(self, model: ModelSpec, op: str, tokens: int) -> Callable[[], Any]:
        """One call of a token-keyed operator."""
        torch = self.torch
        F = torch.nn.functional
        m, t, h = model, tokens, model.hidden
        shape = gemm_shape(m, op)
        if shape is not None:
            k, n = shape
            x, w = self._x(t, k), self._w(k, n)
            return lambda: torch.matmul(x, w)
        if op == "norm":
            x, r = self._x(t, h), self._x(t, h)
            g = torch.ones(h, dtype=self.tdtype, device=self.dev)

            def norm() -> Any:
                s = x + r
                return F.rms_norm(s, (h,), g, 1e-6)

            return norm
        if op == "rope":
            width = m.q_dim + m.kv_dim
            half = width // 2
            x = self._x(t, 2 * half)
            cos = torch.ones(t, half, dtype=self.tdtype, device=self.dev)
            sin = torch.zeros(t, half, dtype=self.tdtype, device=self.dev)

            def rope() -> Any:
                a, b = x[:, :half], x[:, half:]
                return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=1)

            return rope
        if op == "act":
            gu = self._x(t, 2 * m.ffn)

            def act() -> Any:
                g, u = gu[:, : m.ffn], gu[:, m.ffn :]
                return F.silu(g) * u

            return act
        if op == "embedding":
            table = self._w(m.vocab, h)
            ids = torch.randint(0, m.vocab, (t,), generator=self.gen, device=self.dev)
            return lambda: F.embedding(ids, table)
        if op == "sampling":
            logits = torch.randn(t, m.vocab, generator=self.gen, device=self.dev)

            def sample() -> Any:
                p = torch.softmax(logits, dim=-1)
                return torch.multinomial(p, 1, generator=self.gen)

            return sample
        if op == "experts":
            return self._experts(model, t)
        raise KeyError(f"torch backend cannot time {op!r}")

    def _experts(self, m: ModelSpec, t: int) -> Callable[[], Any]:
        torch = self.torch
        F = torch.nn.functional
        h, f, e = m.hidden, m.ffn, m.experts
        w_gu = torch.full((e, h, 2 * f), 0.01, dtype=self.tdtype, device=self.dev)
        w_d = torch.full((e, f, h), 0.01, dtype=self.tdtype, device=self.dev)
        x = self._x(t, h)
        scores = torch.rand(t, e, generator=self.gen, device=self.dev)
        choice = scores.topk(m.experts_per_token, dim=1).indices
        groups = [(j, torch.nonzero((choice == j).any(dim=1)).flatten()) for j in range(e)]
        work = [(j, idx) for j, idx in groups if idx.numel()]

        def experts() -> Any:
            out = torch.zeros_like(x)
            for j, idx in work:
                gu = x[idx] @ w_gu[j]
                out.index_add_(0, idx, (F.silu(gu[:, :f]) * gu[:, f:]) @ w_d[j])
            return out

        return experts

    def attention(self, model: ModelSpec, batch: int, query: int, kv: int) -> Callable[[], Any]:
        """One layer's GQA attention via SDPA."""
        torch = self.torch
        F = torch.nn.functional
        m = model
        q = self._x(batch, m.heads, query, m.head_dim)
        k = self._x(batch, m.kv_heads, kv, m.head_dim)
        v = self._x(batch, m.kv_heads, kv, m.head_dim)
        gqa = m.heads != m.kv_heads
        if query == kv and query > 1:
            return lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        if query > 1:
            i = torch.arange(query, device=self.dev)[:, None] + (kv - query)
            mask = torch.arange(kv, device=self.dev)[None, :] <= i
            return lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        return lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)

    def time(self, fn: Callable[[], Any], warmup: int, repeats: int) -> list[float]:
        """Seconds per call: CUDA events on a GPU, ``perf_counter`` on the CPU."""
        torch = self.torch
        with torch.inference_mode():
            for _ in range(warmup):
                fn()
            out: list[float] = []
            if self.cuda:
                torch.cuda.synchronize(self.dev)
                for _ in range(max(repeats, 1)):
                    start = torch.cuda.Event(enable_timing=True)
                    end = torch.cuda.Event(enable_timing=True)
                    start.record()
                    fn()
                    end.record()
                    end.synchronize()
                    out.append(start.elapsed_time(end) * 1e-3)
                return out
            for _ in range(max(repeats, 1)):
                t0 = time.perf_counter()
                fn()
                out.append(time.perf_counter() - t0)
            return out
