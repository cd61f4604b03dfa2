"""The numba ``njit`` wrapper the package's compiled kernels share.

Used by the engine's step (:mod:`sdsim.engine.step` and the modules it calls), the analytic model
and the acceptance maths. ``SDSIM_NO_JIT=1`` in the environment (read at import) leaves every
kernel as the plain Python it is written in: the reference the compiled code is tested against,
and the way to step through it in a debugger.
"""

from __future__ import annotations

__all__ = ["NO_JIT", "jit", "jit_eager"]

import os
from typing import Any

import numba

NO_JIT = os.environ.get("SDSIM_NO_JIT", "") not in ("", "0")


def jit(f: Any = None, *, callee: bool = False, inline: bool = False) -> Any:
    """``numba.njit(cache=True)``: compiled once, then loaded from ``__pycache__`` (or numba's
    user-wide cache when the package directory is read-only). Where no cache location is
    writable at all, numba refuses ``cache=True``: compile in each process instead.

    ``callee=True`` (``@jit(callee=True)``): a function only compiled kernels call. It is
    compiled with its caller (LLVM inlines what pays) and is not cached on its own: a kernel
    built from functions of several modules is cached only as its entry point, whose cache key
    must then cover those modules (numba checks only the file that defines the entry point; see
    :func:`sdsim.engine.step.advance`).

    ``inline=True`` (a callee too): inlined into its callers by numba (``inline="always"``),
    for the few small helpers the step calls once per request per step. A plain call passes
    each array argument field by field (the request table and the KV cache's arrays are ~30
    values), which costs more than such a helper's own work: as plain calls they made the
    compiled step ~50% more instructions. Inlining every helper this way is what is avoided:
    for the step's ~40 helpers it made the first compile take ~150 s of CPU and ~4 GB of
    memory, against ~12 s and ~0.4 GB with plain calls.
    """
    if f is None:
        return lambda g: jit(g, callee=callee, inline=inline)
    if NO_JIT:
        return f
    if inline:
        return numba.njit(inline="always")(f)
    if callee:
        return numba.njit(f)
    try:
        return numba.njit(cache=True)(f)
    except RuntimeError:  # no writable cache location (tests/test_jit.py)
        return numba.njit(f)


def jit_eager(signature: str, fastmath: set[str] | None = None) -> Any:
    """:func:`jit` with an explicit signature: compiled (or loaded from the cache) when the
    module defining the kernel is imported, not at its first call. The first kernel a process
    loads also pays numba's one-off start (~0.15 s), which this moves to import time.

    ``fastmath``: LLVM fast-math flags to allow (e.g. ``{"reassoc"}``, so a sum runs in SIMD
    lanes, in another order: rounding only); none by default.
    """
    opts: dict[str, Any] = {} if not fastmath else {"fastmath": set(fastmath)}

    def wrap(f: Any) -> Any:
        if NO_JIT:
            return f
        try:
            return numba.njit(signature, cache=True, **opts)(f)
        except RuntimeError:  # no writable cache location (tests/test_jit.py)
            return numba.njit(signature, **opts)(f)

    return wrap
