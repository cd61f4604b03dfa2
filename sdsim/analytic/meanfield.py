"""The mean-field latency model of the seed paper: ``L = C1 / (1 - lambda C2)``.

``L = C1 + B C2`` (a request alone costs C1; each other request in flight adds C2) with Little's
law ``B = lambda L`` gives ``L = C1 / (1 - lambda C2)``, finite for ``lambda < 1 / C2``.
Comparing speculative decoding (SD) with plain decoding at dense utilisation
``r = lambda C2_dense``, with ratios ``C1R = C1_sd / C1_dense`` and ``C2R = C2_sd / C2_dense``::

    S(r) = L_dense / L_sd = (1 / C1R) (1 + (1 - C2R) r / (1 - r))

and ``S = 1`` at the break-even utilisation ``r* = (1 - C1R) / (C2R - C1R)``: SD helps below it
when ``C1R < 1 < C2R`` (it shortens a lone request but makes each request cost the others more).
"""

from __future__ import annotations

__all__ = [
    "best_k",
    "break_even_rate",
    "break_even_utilisation",
    "mean_latency",
    "saturation_rate",
    "speedup",
]

import math
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt


def mean_latency(c1: float, c2: float, rate: float | npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Mean end-to-end latency ``C1 / (1 - rate C2)``; ``inf`` at or past saturation.

    Parameters
    ----------
    c1, c2
        Coefficients (seconds).
    rate
        Arrival rate(s), requests per second.
    """
    lam = np.asarray(rate, dtype=np.float64)
    den = 1.0 - lam * c2
    with np.errstate(divide="ignore"):
        return np.where(den > 0, c1 / np.where(den > 0, den, 1.0), np.inf)


def saturation_rate(c2: float) -> float:
    """``1 / C2``: the rate at which the mean-field latency diverges."""
    return math.inf if c2 <= 0 else 1.0 / c2


def speedup(c1r: float, c2r: float, r: float | npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Speedup of SD over plain decoding at dense utilisation r (``S(0) = 1 / C1R``).

    Parameters
    ----------
    c1r, c2r
        ``C1_sd / C1_dense`` and ``C2_sd / C2_dense``.
    r
        Dense utilisation ``lambda C2_dense`` in [0, 1).
    """
    rr = np.asarray(r, dtype=np.float64)
    return (1.0 / c1r) * (1.0 + (1.0 - c2r) * rr / (1.0 - rr))


def break_even_utilisation(c1r: float, c2r: float) -> float:
    """``r* = (1 - C1R) / (C2R - C1R)``; NaN when the two never cross in [0, 1)."""
    if c2r == c1r:
        return math.nan
    r = (1.0 - c1r) / (c2r - c1r)
    return r if 0.0 <= r < 1.0 else math.nan


def break_even_rate(c1r: float, c2r: float, c2_dense: float) -> float:
    """The arrival rate at the break-even utilisation (``r* / C2_dense``), or NaN."""
    r = break_even_utilisation(c1r, c2r)
    return r / c2_dense if math.isfinite(r) and c2_dense > 0 else math.nan


def best_k(
    coeffs: Mapping[int, tuple[float, float]], rates: Sequence[float]
) -> dict[float, int | None]:
    """The draft length with the lowest mean-field latency at each rate.

    Parameters
    ----------
    coeffs
        k -> (C1, C2).
    rates
        Arrival rates.

    Returns
    -------
    dict
        rate -> best k, or ``None`` when every k is saturated at that rate.
    """
    out: dict[float, int | None] = {}
    ks = sorted(coeffs)
    for lam in rates:
        lat = [float(mean_latency(*coeffs[k], lam)) for k in ks]
        i = int(np.argmin(lat))
        out[float(lam)] = ks[i] if math.isfinite(lat[i]) else None
    return out
