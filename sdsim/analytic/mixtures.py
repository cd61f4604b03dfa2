"""Latency laws as mixtures, with exact CDFs and quantiles.

The tail model (:mod:`sdsim.analytic.tails`) describes e2e and TPOT as mixtures of normal
components (exponentially modified normal for a request that waits for admission) and TTFT as a
mixture of uniforms (plus a shifted exponential for a waiting arrival). Their quantiles are the
roots of ``F(x) = p`` for the mixture's own CDF ``F``: bracketed on a coarse grid of ``F``, then
refined by Newton steps on the exact ``F`` and its density, kept inside the bracket (a bisection
step whenever Newton would leave it, or where ``F`` jumps), to ``1e-13`` relative. Reading the
quantile off a tabulated CDF by linear interpolation instead (the previous method, 1,200 grid
points) errs by up to ~1e-4 relative and costs components x grid normal evaluations; this costs
components x (~50 + ~4 per quantile).
"""

from __future__ import annotations

__all__ = [
    "COARSE_GRID",
    "LatencyLaw",
    "NormalMixture",
    "UniformExpMixture",
    "solve_quantiles",
]

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt
from scipy import special

from sdsim._jit import jit_eager

FloatArray = npt.NDArray[np.float64]

# Points of the coarse CDF table that brackets each quantile.
COARSE_GRID = 16
# Normal evaluations per block (components x points), to bound temporary memory.
_BLOCK = 2_000_000
_REL_TOL = 1e-13
# |F(x) - p| at which x is taken as the root (a few ulps of a probability near 1)
_F_TOL = 1e-15
_SQRT_2PI = float(np.sqrt(2.0 * np.pi))


class LatencyLaw(Protocol):
    """A latency law with an exact CDF and quantiles."""

    def cdf(self, x: npt.ArrayLike) -> FloatArray:
        """P(latency <= x) at each x."""
        ...

    def quantiles(self, probs: Sequence[float]) -> list[float]:
        """The p-quantile (the smallest x with CDF(x) >= p) for each p."""
        ...


def solve_quantiles(
    cdf_pdf: Callable[[FloatArray], tuple[FloatArray, FloatArray]],
    lo: float,
    hi: float,
    probs: Sequence[float],
    grid: int = COARSE_GRID,
    cdf: Callable[[FloatArray], FloatArray] | None = None,
) -> list[float]:
    """Roots of ``F(x) = p`` for a non-decreasing ``F`` given with its density.

    Parameters
    ----------
    cdf_pdf
        ``x -> (F(x), F'(x))`` over an array of points (``F'`` may be 0 where ``F`` jumps).
    cdf
        ``x -> F(x)`` alone, if cheaper (the coarse table needs no density).
    lo, hi
        Where to tabulate ``F`` to bracket the roots (``hi`` is doubled until ``F(hi) >= p``).
    probs
        Probabilities in (0, 1).
    grid
        Points of the coarse table.

    Returns
    -------
    list of float
        ``inf{x : F(x) >= p}`` for each p to ``1e-13`` relative (``lo`` when ``F(lo) >= p``).
    """
    ps = np.asarray(probs, dtype=np.float64)
    f_only = cdf if cdf is not None else (lambda x: cdf_pdf(x)[0])
    xg = np.linspace(lo, hi, grid)
    fg = f_only(xg)
    fg = np.maximum.accumulate(fg)
    span = hi - lo if hi > lo else max(abs(hi), 1.0)
    for _ in range(60):
        if fg[-1] >= ps.max():
            break
        top = xg[-1] + span
        span *= 2.0
        f_top = f_only(np.array([top]))
        xg = np.append(xg, top)
        fg = np.append(fg, max(float(f_top[0]), float(fg[-1])))
    idx = np.searchsorted(fg, ps, side="left")
    out = np.empty(ps.shape[0])
    at_lo = idx == 0
    out[at_lo] = xg[0]
    live = np.nonzero(~at_lo & (idx < xg.shape[0]))[0]
    out[idx >= xg.shape[0]] = xg[-1]
    if live.shape[0] == 0:
        return [float(v) for v in out]
    j = idx[live]
    a, b = xg[j - 1].copy(), xg[j].copy()
    fa, fb = fg[j - 1], fg[j]
    p = ps[live]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(fb > fa, (p - fa) / (fb - fa), 0.5)
    x = a + t * (b - a)
    res = x.copy()
    todo = np.arange(live.shape[0])
    for _ in range(200):
        f, d = cdf_pdf(x[todo])
        r = f - p[todo]
        lower = r < 0.0
        a[todo] = np.where(lower, x[todo], a[todo])
        b[todo] = np.where(lower, b[todo], x[todo])
        # F(x) = p to rounding where F rises: x is the root; F(x) = p may also hold on a flat
        # stretch (d = 0), where bisection goes on towards its left end
        close = (np.abs(r) <= _F_TOL) & (d > 0)
        narrow = b[todo] - a[todo] <= _REL_TOL * np.maximum(np.abs(b[todo]), 1e-300)
        res[todo] = np.where(close, x[todo], b[todo])
        keep = ~(narrow | close)
        todo = todo[keep]
        if todo.shape[0] == 0:
            break
        with np.errstate(divide="ignore", invalid="ignore"):
            newton = x[todo] - r[keep] / d[keep]
        ok = (d[keep] > 0) & (r[keep] != 0.0) & (newton > a[todo]) & (newton < b[todo])
        nxt = np.where(ok, newton, 0.5 * (a[todo] + b[todo]))
        # a Newton step that barely moves is pushed past the root by the tolerance, so the
        # bracket closes; where that leaves the bracket, bisect
        tol = _REL_TOL * np.maximum(np.abs(nxt), 1e-300)
        tiny = ok & (np.abs(nxt - x[todo]) <= tol)
        pushed = np.where(r[keep] < 0.0, nxt + tol, nxt - tol)
        inside = (pushed > a[todo]) & (pushed < b[todo])
        mid = 0.5 * (a[todo] + b[todo])
        x[todo] = np.where(tiny, np.where(inside, pushed, mid), nxt)
    out[live] = res
    return [float(v) for v in out]


class NormalMixture:
    """``sum_i w_i N(mu_i, sd_i^2)``, optionally exponentially modified (``+ Exp(lam_i)``).

    Components with weight below 1e-15 are dropped and standard deviations floored at 1e-12 s
    (as the tabulated CDF did). :meth:`plus` pools two mixtures (weights as given, not
    renormalised).
    """

    def __init__(
        self,
        w: FloatArray,
        mu: FloatArray,
        sd: FloatArray,
        lam_exp: FloatArray | None = None,
    ) -> None:
        keep = w > 1e-15
        self.groups: list[tuple[FloatArray, FloatArray, FloatArray, FloatArray | None]] = [
            (w[keep], mu[keep], np.maximum(sd[keep], 1e-12),
             None if lam_exp is None else lam_exp[keep])
        ]  # fmt: skip

    def plus(self, other: NormalMixture) -> NormalMixture:
        """The pooled mixture of ``self`` and ``other``."""
        out = NormalMixture(np.zeros(0), np.zeros(0), np.zeros(0))
        out.groups = [g for g in (*self.groups, *other.groups) if g[0].shape[0]]
        return out

    @property
    def total(self) -> float:
        """Sum of the component weights."""
        return float(sum(float(g[0].sum()) for g in self.groups))

    def bounds(self) -> tuple[float, float]:
        """Where nearly all the mass lies: [max(min(mu - 6 sd), 0), max(mu + 7 sd) + 10 / lam]."""
        lo = min(float(np.min(g[1] - 6 * g[2])) for g in self.groups if g[0].shape[0])
        hi = max(
            float(np.max(g[1] + 7 * g[2])) + (0.0 if g[3] is None else float(np.max(10.0 / g[3])))
            for g in self.groups
            if g[0].shape[0]
        )
        return max(lo, 0.0), hi

    def cdf_pdf(self, x: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Normalised CDF and density at each x."""
        return self._eval(x, True)

    def _cdf_only(self, x: FloatArray) -> FloatArray:
        return self._eval(x, False)[0]

    def _eval(self, x: FloatArray, want_pdf: bool) -> tuple[FloatArray, FloatArray]:
        xs = np.asarray(x, dtype=np.float64)
        cdf = np.zeros(xs.shape[0])
        pdf = np.zeros(xs.shape[0])
        step = max(1, _BLOCK // max(xs.shape[0], 1))
        for w, mu, sd, le in self.groups:
            for i in range(0, w.shape[0], step):
                sl = slice(i, i + step)
                z = (xs[None, :] - mu[sl, None]) / sd[sl, None]
                if le is None:
                    c = special.ndtr(z)
                    if want_pdf:
                        pdf += w[sl] @ (np.exp(-0.5 * z * z) / (_SQRT_2PI * sd[sl, None]))
                else:
                    # exponnorm with shape K = 1 / (lam sd): s = 1 / K (scipy's formula)
                    s = le[sl, None] * sd[sl, None]
                    tail = np.exp(s * (0.5 * s - z) + special.log_ndtr(z - s))
                    c = special.ndtr(z) - tail
                    if want_pdf:
                        pdf += w[sl] @ (le[sl, None] * tail)
                cdf += w[sl] @ c
        tot = self.total
        return cdf / tot, pdf / tot

    def cdf(self, x: npt.ArrayLike) -> FloatArray:
        """Normalised CDF at each x."""
        return self.cdf_pdf(np.atleast_1d(np.asarray(x, dtype=np.float64)))[0]

    def quantiles(self, probs: Sequence[float]) -> list[float]:
        """Exact quantiles (see :func:`solve_quantiles`)."""
        lo, hi = self.bounds()
        return solve_quantiles(self.cdf_pdf, lo, hi, probs, cdf=self._cdf_only)


@jit_eager("void(f8[::1], f8[::1], f8[::1], f8[::1], f8[::1], f8[::1])")
def _uniform_sums(
    xs: FloatArray,
    w: FloatArray,
    lo: FloatArray,
    ln: FloatArray,
    cdf: FloatArray,
    pdf: FloatArray,
) -> None:  # pragma: no cover - compiled
    """Add ``sum_i w_i U_i(x)`` and the ramps' density at each x to cdf and pdf.

    ``U_i`` is the CDF of the uniform law on ``[lo_i, lo_i + ln_i]`` (a step at ``lo_i`` where
    ``ln_i = 0``); a ramp's density ``w_i / ln_i`` counts on ``[lo_i, lo_i + ln_i)``.
    """
    m = xs.shape[0]
    for i in range(w.shape[0]):
        wi = w[i]
        a = lo[i]
        d = ln[i]
        if d > 0.0:
            b = a + d
            c = wi / d
            for j in range(m):
                x = xs[j]
                if x >= b:
                    cdf[j] += wi
                elif x >= a:
                    cdf[j] += c * (x - a)
                    pdf[j] += c
        else:
            for j in range(m):
                if xs[j] >= a:
                    cdf[j] += wi


class UniformExpMixture:
    """TTFT's law: ``free`` x (mixture of uniforms on ``[lo_i, lo_i + ln_i]``, point masses where
    ``ln_i = 0``, weights ``w_i`` normalised) + ``wait`` x (``shift + Exp(mean theta)``).

    The uniform part's CDF is a sum of ramps and steps, summed component by component (compiled,
    all points of a call in one pass over the components: no sort of the ~40,000 breakpoints).
    """

    def __init__(
        self,
        w: FloatArray,
        lo: FloatArray,
        ln: FloatArray,
        free: float,
        wait: float,
        shift: float,
        theta: float,
    ) -> None:
        self.free, self.wait, self.shift, self.theta = free, wait, shift, theta
        self.w, self.lo, self.ln = w, lo, ln
        self.mass = float(w.sum())
        # contiguous float64 copies for the compiled sums
        self._w = np.ascontiguousarray(w, dtype=np.float64)
        self._lo = np.ascontiguousarray(lo, dtype=np.float64)
        self._ln = np.ascontiguousarray(ln, dtype=np.float64)
        self.hi = float((lo + ln).max()) * 1.05 if lo.shape[0] else 1.0
        if wait > 0:
            self.hi = max(self.hi, shift + 12 * theta)

    def cdf_pdf(self, x: FloatArray) -> tuple[FloatArray, FloatArray]:
        """CDF and density at each x (the density leaves out the point masses)."""
        xs = np.ascontiguousarray(x, dtype=np.float64)
        u = np.zeros(xs.shape[0])
        slope = np.zeros(xs.shape[0])
        _uniform_sums(xs, self._w, self._lo, self._ln, u, slope)
        cdf = self.free * u / self.mass
        pdf = self.free * slope / self.mass
        if self.wait > 0:
            on = xs >= self.shift
            e = np.exp(-np.where(on, xs - self.shift, 0.0) / self.theta)
            cdf = cdf + self.wait * np.where(on, 1.0 - e, 0.0)
            pdf = pdf + self.wait * np.where(on, e / self.theta, 0.0)
        tot = self.free + self.wait
        return cdf / tot, pdf / tot

    def cdf(self, x: npt.ArrayLike) -> FloatArray:
        """CDF at each x."""
        return self.cdf_pdf(np.atleast_1d(np.asarray(x, dtype=np.float64)))[0]

    def quantiles(self, probs: Sequence[float]) -> list[float]:
        """Exact quantiles (see :func:`solve_quantiles`)."""
        return solve_quantiles(self.cdf_pdf, 0.0, self.hi, probs)
