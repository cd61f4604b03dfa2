"""sdsim._jit: kernels still compile where numba finds no writable cache location."""

from __future__ import annotations

import numba.core.caching as caching
import numpy as np
import pytest

from sdsim._jit import jit, jit_eager


@pytest.fixture
def no_cache_location(monkeypatch: pytest.MonkeyPatch) -> None:
    # numba looks for a cache directory through these locators (beside the source, then the
    # user-wide cache, ...); with none, `cache=True` raises RuntimeError at decoration time,
    # which is what a read-only install with an unwritable home directory gives
    monkeypatch.setattr(caching.CacheImpl, "_locator_classes", [])


def _total(x: np.ndarray) -> float:
    s = 0.0
    for v in x:
        s += v
    return s


def test_numba_refuses_cache_without_a_location(no_cache_location: None) -> None:
    import numba

    with pytest.raises(RuntimeError):
        numba.njit(cache=True)(_total)


def test_jit_compiles_without_a_cache_location(no_cache_location: None) -> None:
    f = jit(_total)
    assert f(np.arange(5.0)) == 10.0


def test_jit_eager_compiles_without_a_cache_location(no_cache_location: None) -> None:
    f = jit_eager("float64(float64[:])")(_total)
    assert f(np.arange(4.0)) == 6.0


def test_jit_eager_fastmath_without_a_cache_location(no_cache_location: None) -> None:
    f = jit_eager("float64(float64[:])", fastmath={"reassoc"})(_total)
    assert f(np.arange(4.0)) == 6.0
