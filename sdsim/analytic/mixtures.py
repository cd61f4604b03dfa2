"""Latency laws as mixtures, with exact CDFs and quantiles.

The tail model (:mod:`sdsim.analytic.tails`) describes each latency as a weighted mixture of
two kinds of components:

* **Gaussian**: normal ``N(mu, sd^2)``, or exponentially modified normal (``+ Exp(lam)``, for a
  request that waits for admission) when ``lam > 0``;
* **uniform**: a ramp on ``[lo, hi)`` (a uniform residual of a step), or a point mass where
  ``lo == hi``.

One compiled evaluator gives the CDF, the density and the density's slope at a point (summed
component by component), one compiled loop applies it over many points, and one compiled
safeguarded Halley iteration solves ``F(x) = p``. A quantile is bracketed on a coarse table of
``F`` (16 points, the upper end doubled until ``F`` reaches ``p``), then refined inside its
bracket, a bisection step whenever Halley (or Newton, where Halley's denominator is not positive)
would leave it or where ``F`` jumps, to ``1e-13`` relative.
"""

from __future__ import annotations

__all__ = ["COARSE_GRID", "LatencyLaw", "Mixture"]

import math
from collections.abc import Sequence
from typing import Protocol

import numba
import numpy as np
import numpy.typing as npt

from sdsim._jit import jit_eager

FloatArray = npt.NDArray[np.float64]

# Points of the coarse CDF table that brackets each quantile.
COARSE_GRID = 16
_REL_TOL = 1e-13
# |F(x) - p| at which x is taken as the root (a few ulps of a probability near 1)
_F_TOL = 1e-15
_SQRT_2PI = math.sqrt(2.0 * math.pi)
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
_SQRT1_2 = math.sqrt(0.5)
# Below this z a normal component's CDF underflows past every double (Phi(-38.5) ~ 1e-324),
# and its density too: the component adds exactly nothing.
_Z_NONE = -38.5
# Above this z, Phi(z) rounds to 1.0 (1 - Phi(z) < 8e-24), so the component adds its weight to
# the CDF; its density there (exp(-50) ~ 2e-22 of its peak) is below the density's rounding and
# is left out (the density only steers the Halley steps).
_Z_FULL = 10.0
# log Phi(y) by its asymptotic series below this (erfc would lose digits, then underflow).
_Y_ASYMPTOTIC = -20.0
# what the evaluator computes: the CDF only, with the density, or with its slope too
_CDF, _PDF, _SLOPE = 0, 1, 2


@numba.njit(inline="always")
def _ndtr(z: float) -> float:  # compiled
    """Phi(z) as scipy's ``ndtr`` computes it: ``0.5 + 0.5 erf`` near 0, ``0.5 erfc`` in the
    tails, reflected above 0."""
    v = z * _SQRT1_2
    av = abs(v)
    if av < _SQRT1_2:
        return 0.5 + 0.5 * math.erf(v)
    y = 0.5 * math.erfc(av)
    return 1.0 - y if v > 0.0 else y


@numba.njit(inline="always")
def _log_ndtr(y: float) -> float:  # compiled
    """log Phi(y): ``log(0.5 erfc(-y / sqrt 2))``, and below -20 the asymptotic series
    ``-y^2/2 - log(-y sqrt(2 pi)) + log(1 - 1/y^2 + 3/y^4 - 15/y^6 + 105/y^8)`` (its next term,
    945 / y^10, is below 1e-10 there)."""
    if y > _Y_ASYMPTOTIC:
        return math.log(0.5 * math.erfc(-y * _SQRT1_2))
    r = 1.0 / (y * y)
    series = 1.0 - r * (1.0 - r * (3.0 - r * (15.0 - 105.0 * r)))
    return -0.5 * y * y - math.log(-y) - _LOG_SQRT_2PI + math.log(series)


@numba.njit(inline="always")
def _at(
    x: float, want: int, g: FloatArray, u: FloatArray
) -> tuple[float, float, float]:  # compiled
    """The mixture's (unnormalised) CDF, density and density slope at ``x``; ``g`` holds the
    Gaussian components' rows ``(w, mu, sd, lam)``, ``u`` the uniform ones' ``(w, lo, hi,
    dens)`` (one row per field, so each kernel takes the whole mixture in two arguments).

    Gaussian terms: ``Phi(z)`` with ``z = (x - mu) / sd``; exponnorm ones (``lam > 0``, shape
    ``s = lam sd``): ``Phi(z) - exp(s (s/2 - z) + log Phi(z - s))`` (scipy's formula), density
    ``lam`` times that exponential term, slope ``lam (phi(z) / sd - density)``. Uniform terms
    branch-free (so that loop runs in SIMD lanes): ``w`` at or past ``hi``, ``dens (x - lo)``
    on the ramp, the density on ``[lo, hi)`` (a point mass has ``lo == hi``, ``dens = 0``).
    """
    c = 0.0
    d = 0.0
    dd = 0.0
    gw, gmu, gsd, glam = g[0], g[1], g[2], g[3]
    for i in range(g.shape[1]):
        sd = gsd[i]
        z = (x - gmu[i]) / sd
        lam = glam[i]
        if lam <= 0.0:
            if z < _Z_NONE:
                continue
            if z > _Z_FULL:
                c += gw[i]
                continue
            c += gw[i] * _ndtr(z)
            if want >= _PDF:
                pdf = gw[i] * (math.exp(-0.5 * z * z) / (_SQRT_2PI * sd))
                d += pdf
                if want >= _SLOPE:
                    dd -= pdf * z / sd
        else:
            s = lam * sd
            tail = math.exp(s * (0.5 * s - z) + _log_ndtr(z - s))
            c += gw[i] * (_ndtr(z) - tail)
            if want >= _PDF:
                f = lam * tail
                d += gw[i] * f
                if want >= _SLOPE:
                    dd += gw[i] * lam * (math.exp(-0.5 * z * z) / (_SQRT_2PI * sd) - f)
    cu = 0.0
    du = 0.0
    uw, ulo, uhi, udens = u[0], u[1], u[2], u[3]
    for i in range(u.shape[1]):
        on = x >= ulo[i]
        top = x >= uhi[i]
        cu += uw[i] if top else (udens[i] * (x - ulo[i]) if on else 0.0)
        du += udens[i] if (on and not top) else 0.0
    return c + cu, d + du, dd


@jit_eager("void(f8[::1], i8, f8[:, ::1], f8[:, ::1], f8[:, ::1])", fastmath={"reassoc"})
def _sums(
    xs: FloatArray, want: int, g: FloatArray, u: FloatArray, out: FloatArray
) -> None:  # compiled
    """:func:`_at` at each x: ``out[0]`` the CDF, ``out[1]`` the density, ``out[2]`` its
    slope (unnormalised; reassociation allowed, so sums may run in SIMD lanes: rounding only)."""
    for j in range(xs.shape[0]):
        c, d, dd = _at(xs[j], want, g, u)
        out[0, j] = c
        out[1, j] = d
        out[2, j] = dd


@jit_eager(
    "void(f8[:, ::1], f8[:, ::1], f8, f8[::1], f8[::1], f8[::1], f8[::1], f8[::1], f8[::1])",
    fastmath={"reassoc"},
)
def _refine(
    g: FloatArray,
    u: FloatArray,
    tot: float,
    a: FloatArray,
    b: FloatArray,
    fa: FloatArray,
    fb: FloatArray,
    p: FloatArray,
    out: FloatArray,
) -> None:  # compiled
    """Roots of ``F(x) = p`` in brackets ``[a, b]`` (``F(a) < p <= F(b)``), one at a time.

    From the secant point of the bracket: Halley steps ``x - 2 r d / (2 d^2 - r d')`` (Newton
    where that denominator is not positive), each kept inside the bracket (else bisection),
    the bracket closed on the side the residual ``r = F(x) - p`` says. Stops where ``|r| <=
    1e-15`` on a rising ``F`` (the root) or the bracket is ``1e-13`` relative wide (its upper
    end: ``inf{x: F(x) >= p}`` where ``F`` jumps or is flat). A step that barely moves is
    pushed past the root by the tolerance, so the bracket closes.
    """
    for q in range(p.shape[0]):
        lo = a[q]
        hi = b[q]
        pq = p[q]
        t = (pq - fa[q]) / (fb[q] - fa[q]) if fb[q] > fa[q] else 0.5
        x = lo + t * (hi - lo)
        res = x
        for _ in range(200):
            c, dn, ddn = _at(x, _SLOPE, g, u)
            f = c / tot
            d = dn / tot
            dd = ddn / tot
            r = f - pq
            if r < 0.0:
                lo = x
            else:
                hi = x
            close = abs(r) <= _F_TOL and d > 0
            narrow = hi - lo <= _REL_TOL * max(abs(hi), 1e-300)
            res = x if close else hi
            if narrow or close:
                break
            ok = False
            step = 0.0
            if d > 0 and r != 0.0:
                den = 2.0 * d * d - r * dd
                step = x - 2.0 * r * d / den if den > 0.0 else x - r / d
                ok = lo < step < hi
            nxt = step if ok else 0.5 * (lo + hi)
            tol = _REL_TOL * max(abs(nxt), 1e-300)
            if ok and abs(nxt - x) <= tol:
                pushed = nxt + tol if r < 0.0 else nxt - tol
                x = pushed if lo < pushed < hi else 0.5 * (lo + hi)
            else:
                x = nxt
        out[q] = res


class LatencyLaw(Protocol):
    """A latency law with an exact CDF and quantiles."""

    def cdf(self, x: npt.ArrayLike) -> FloatArray:
        """P(latency <= x) at each x."""
        ...

    def quantiles(self, probs: Sequence[float]) -> list[float]:
        """The p-quantile (the smallest x with CDF(x) >= p) for each p."""
        ...


def _f(*arrays: npt.ArrayLike) -> list[FloatArray]:
    return [np.ascontiguousarray(a, dtype=np.float64) for a in arrays]


class Mixture:
    """A weighted mixture of Gaussian and uniform components (module docstring).

    Build it with :meth:`normals` and :meth:`uniforms` and pool with :meth:`plus`; weights
    need not sum to 1 (the CDF is normalised by their total). Components with weight below
    1e-15 are dropped and Gaussian standard deviations floored at 1e-12 s.

    Attributes
    ----------
    gauss
        ``(w, mu, sd, lam)``: Gaussian components (``lam = 0``: normal).
    unif
        ``(w, lo, hi)``: ramps and point masses.
    """

    def __init__(
        self,
        gauss: tuple[FloatArray, FloatArray, FloatArray, FloatArray] | None = None,
        unif: tuple[FloatArray, FloatArray, FloatArray] | None = None,
    ) -> None:
        e = np.zeros(0)
        g = gauss if gauss is not None else (e, e, e, e)
        u = unif if unif is not None else (e, e, e)
        gk, uk = (np.asarray(t[0]) > 1e-15 for t in (g, u))
        gw, gmu, gsd, glam = _f(*(np.asarray(v)[gk] for v in g))
        self.gauss = (gw, gmu, np.maximum(gsd, 1e-12), glam)
        uw, ulo, uhi = _f(*(np.asarray(v)[uk] for v in u))
        self.unif = (uw, ulo, uhi)
        ln = uhi - ulo
        udens = np.where(ln > 0, uw / np.where(ln > 0, ln, 1.0), 0.0)
        # the kernels' layout (see _at): one row per field
        self._g = np.ascontiguousarray(np.stack(self.gauss).reshape(4, -1), dtype=np.float64)
        self._u = np.ascontiguousarray(
            np.stack((uw, ulo, uhi, udens)).reshape(4, -1), dtype=np.float64
        )

    @classmethod
    def normals(
        cls,
        w: npt.ArrayLike,
        mu: npt.ArrayLike,
        sd: npt.ArrayLike,
        lam: npt.ArrayLike | None = None,
    ) -> Mixture:
        """Normal components, exponentially modified (``+ Exp(lam)``) where ``lam`` is given."""
        ww = np.asarray(w, dtype=np.float64)
        la = np.zeros(ww.shape[0]) if lam is None else np.asarray(lam, dtype=np.float64)
        return cls(gauss=(ww, np.asarray(mu), np.asarray(sd), la))

    @classmethod
    def uniforms(cls, w: npt.ArrayLike, lo: npt.ArrayLike, ln: npt.ArrayLike) -> Mixture:
        """Uniform components on ``[lo, lo + ln]`` (point masses where ``ln = 0``)."""
        lo_ = np.asarray(lo, dtype=np.float64)
        return cls(unif=(np.asarray(w, dtype=np.float64), lo_, lo_ + np.asarray(ln)))

    def plus(self, other: Mixture) -> Mixture:
        """The pooled mixture of ``self`` and ``other`` (weights as given)."""
        gauss = tuple(np.concatenate(t) for t in zip(self.gauss, other.gauss, strict=True))
        unif = tuple(np.concatenate(t) for t in zip(self.unif, other.unif, strict=True))
        return Mixture(gauss, unif)  # type: ignore[arg-type]

    @property
    def total(self) -> float:
        """Sum of the component weights."""
        return float(self.gauss[0].sum() + self.unif[0].sum())

    def bounds(self) -> tuple[float, float]:
        """Where nearly all the mass lies: from ``max(min(mu - 6 sd, lo), 0)`` to the larger of
        ``mu + 7 sd + 10 / lam`` and ``hi``."""
        gw, gmu, gsd, glam = self.gauss
        los: list[float] = []
        his: list[float] = []
        if gw.shape[0]:
            ext = np.where(glam > 0, 10.0 / np.where(glam > 0, glam, 1.0), 0.0)
            los.append(float(np.min(gmu - 6 * gsd)))
            his.append(float(np.max(gmu + 7 * gsd + ext)))
        if self.unif[0].shape[0]:
            los.append(float(self.unif[1].min()))
            his.append(float(self.unif[2].max()) * 1.05)
        if not los:
            return 0.0, 1.0
        return max(min(los), 0.0), max(max(his), 1e-300)

    def _eval(self, x: npt.ArrayLike, want: int) -> FloatArray:
        xs = np.ascontiguousarray(np.atleast_1d(np.asarray(x, dtype=np.float64)))
        out = np.empty((3, xs.shape[0]))
        _sums(xs, want, self._g, self._u, out)
        return out / self.total

    def cdf_pdf(self, x: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
        """Normalised CDF and density at each x (the density leaves out point masses)."""
        out = self._eval(x, _PDF)
        return out[0], out[1]

    def cdf(self, x: npt.ArrayLike) -> FloatArray:
        """Normalised CDF at each x."""
        return self._eval(x, _CDF)[0]

    def quantiles(self, probs: Sequence[float]) -> list[float]:
        """``inf{x : F(x) >= p}`` for each p, to ``1e-13`` relative (module docstring)."""
        ps = np.asarray(probs, dtype=np.float64)
        lo, hi = self.bounds()
        xg = np.linspace(lo, hi, COARSE_GRID)
        fg = np.maximum.accumulate(self.cdf(xg))
        span = hi - lo if hi > lo else max(abs(hi), 1.0)
        for _ in range(60):
            if fg[-1] >= ps.max():
                break
            top = xg[-1] + span
            span *= 2.0
            xg = np.append(xg, top)
            fg = np.append(fg, max(float(self.cdf(np.array([top]))[0]), float(fg[-1])))
        idx = np.searchsorted(fg, ps, side="left")
        out = np.empty(ps.shape[0])
        out[idx == 0] = xg[0]
        out[idx >= xg.shape[0]] = xg[-1]
        live = np.nonzero((idx > 0) & (idx < xg.shape[0]))[0]
        if live.shape[0]:
            j = idx[live]
            res = np.empty(live.shape[0])
            brackets = _f(xg[j - 1], xg[j], fg[j - 1], fg[j], ps[live])
            _refine(self._g, self._u, self.total, *brackets, res)
            out[live] = res
        return [float(v) for v in out]
