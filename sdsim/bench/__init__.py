"""Kernel microbenchmarks that write profile bundles (numpy always; torch optional)."""

from sdsim.bench.harness import FULL_GRID, QUICK_GRID, Backend, BenchGrid, run_bench
from sdsim.bench.numpy_backend import NumpyBackend

# torch itself is imported by TorchBackend when it is built (an optional dependency)
from sdsim.bench.torch_backend import TorchBackend
from sdsim.errors import ScenarioError

__all__ = ["FULL_GRID", "QUICK_GRID", "Backend", "BenchGrid", "make_backend", "run_bench"]


def make_backend(
    name: str, device: str | None = None, dtype: str | None = None, seed: int = 0
) -> Backend:
    """A benchmark backend by name (``numpy`` or ``torch``).

    Raises
    ------
    sdsim.errors.ScenarioError
        Unknown backend, or torch missing.
    """
    if name == "numpy":
        if device not in (None, "cpu"):
            raise ScenarioError("--device", "the numpy backend runs on the cpu only")
        return NumpyBackend(seed=seed)
    if name == "torch":
        return TorchBackend(device=device, dtype=dtype or "bfloat16", seed=seed)
    raise ScenarioError("--backend", f"unknown backend {name!r}; use numpy or torch")
