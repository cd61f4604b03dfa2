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

import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numba
import numpy as np
import numpy.typing as npt
from scipy import special

from sdsim._jit import jit, jit_eager

FloatArray = npt.NDArray[np.float64]

# Points of the coarse CDF table that brackets each quantile.
COARSE_GRID = 16
# Normal evaluations per block (components x points), to bound temporary memory.
_BLOCK = 2_000_000
_REL_TOL = 1e-13
# |F(x) - p| at which x is taken as the root (a few ulps of a probability near 1)
_F_TOL = 1e-15
_SQRT_2PI = float(np.sqrt(2.0 * np.pi))
_SQRT1_2 = math.sqrt(0.5)
# Below this z a normal component's CDF underflows past every double (Phi(-38.5) ~ 1e-324),
# and its density too: the component adds exactly nothing, so its erfc is not evaluated.
_Z_NONE = -38.5
# Above this z, Phi(z) rounds to 1.0 (1 - Phi(z) < 8e-24), so the component adds its weight to
# the CDF; its density there (exp(-50) ~ 2e-22 of its peak) is below the density's rounding and
# is left out (the density only steers Newton steps).
_Z_FULL = 10.0


@numba.njit(inline="always")
def _ndtr(z: float) -> float:  # pragma: no cover - compiled
    """Phi(z) as scipy's ``ndtr`` computes it: ``0.5 + 0.5 erf`` near 0, ``0.5 erfc`` in the
    tails, reflected above 0 (inlined into the kernels below)."""
    v = z * _SQRT1_2
    av = abs(v)
    if av < _SQRT1_2:
        return 0.5 + 0.5 * math.erf(v)
    y = 0.5 * math.erfc(av)
    return 1.0 - y if v > 0.0 else y


@jit_eager("void(f8[::1], f8[::1], f8[::1], f8[::1], b1, f8[::1], f8[::1])")
def _normal_sums(
    xs: FloatArray,
    w: FloatArray,
    mu: FloatArray,
    sd: FloatArray,
    want_pdf: bool,
    cdf: FloatArray,
    pdf: FloatArray,
) -> None:  # pragma: no cover - compiled
    """Add ``sum_i w_i Phi((x - mu_i) / sd_i)`` (and the density) at each x to cdf (pdf).

    ``Phi`` is :func:`_ndtr`, summed component by component (numpy's ``w @ ndtr(z)`` sums in
    BLAS's order instead: the totals differ by rounding only).
    """
    for j in range(xs.shape[0]):
        x = xs[j]
        c = 0.0
        d = 0.0
        for i in range(w.shape[0]):
            z = (x - mu[i]) / sd[i]
            if z < _Z_NONE:
                continue
            if z > _Z_FULL:
                c += w[i]
                continue
            c += w[i] * _ndtr(z)
            if want_pdf:
                d += w[i] * (math.exp(-0.5 * z * z) / (_SQRT_2PI * sd[i]))
        cdf[j] += c
        pdf[j] += d


@jit
def _normal_at(
    x: float, w: FloatArray, mu: FloatArray, sd: FloatArray
) -> tuple[float, float, float]:  # pragma: no cover - compiled
    """The mixture's CDF, density and the density's slope at one x (unnormalised), each term as
    :func:`_normal_sums` computes it (the slope: ``-z / sd`` times the term's density)."""
    c = 0.0
    d = 0.0
    dd = 0.0
    for i in range(w.shape[0]):
        z = (x - mu[i]) / sd[i]
        if z < _Z_NONE:
            continue
        if z > _Z_FULL:
            c += w[i]
            continue
        c += w[i] * _ndtr(z)
        g = w[i] * (math.exp(-0.5 * z * z) / (_SQRT_2PI * sd[i]))
        d += g
        dd -= g * z / sd[i]
    return c, d, dd


@jit_eager(
    "void(f8[::1], f8[::1], f8[::1], f8, f8[::1], f8[::1], f8[::1], f8[::1], f8[::1], f8[::1])"
)
def _normal_refine(
    w: FloatArray,
    mu: FloatArray,
    sd: FloatArray,
    tot: float,
    a: FloatArray,
    b: FloatArray,
    fa: FloatArray,
    fb: FloatArray,
    p: FloatArray,
    out: FloatArray,
) -> None:  # pragma: no cover - compiled
    """:func:`solve_quantiles`' safeguarded refinement for a normal mixture, compiled.

    The same bracketing, stopping rules and safeguards, one quantile at a time (each
    quantile's iterates depend only on its own bracket), with Halley steps instead of Newton
    ones (the density's slope comes almost free with the density; cubic convergence saves
    ~2 CDF evaluations per quantile); the per-iteration numpy calls on ~1,000-6,000
    components also cost about as much as the sums themselves.
    """
    for q in range(p.shape[0]):
        lo = a[q]
        hi = b[q]
        pq = p[q]
        t = (pq - fa[q]) / (fb[q] - fa[q]) if fb[q] > fa[q] else 0.5
        x = lo + t * (hi - lo)
        res = x
        for _ in range(200):
            c, dn, ddn = _normal_at(x, w, mu, sd)
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
            newton = 0.0
            if d > 0 and r != 0.0:
                # Halley: x - 2 r d / (2 d^2 - r d'); Newton where that denominator is not > 0
                den = 2.0 * d * d - r * dd
                newton = x - 2.0 * r * d / den if den > 0.0 else x - r / d
                ok = lo < newton < hi
            nxt = newton if ok else 0.5 * (lo + hi)
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


def solve_quantiles(
    cdf_pdf: Callable[[FloatArray], tuple[FloatArray, FloatArray]],
    lo: float,
    hi: float,
    probs: Sequence[float],
    grid: int = COARSE_GRID,
    cdf: Callable[[FloatArray], FloatArray] | None = None,
    refine: Callable[[FloatArray, FloatArray, FloatArray, FloatArray, FloatArray], FloatArray]
    | None = None,
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
    refine
        ``(a, b, F(a), F(b), p) -> roots``: the Newton refinement below done elsewhere (the
        normal mixture's compiled one, the same iteration).

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
    if refine is not None:
        out[live] = refine(a, b, fa, fb, p)
        return [float(v) for v in out]
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
            if le is None:
                _normal_sums(np.ascontiguousarray(xs), w, mu, sd, want_pdf, cdf, pdf)
                continue
            for i in range(0, w.shape[0], step):
                sl = slice(i, i + step)
                z = (xs[None, :] - mu[sl, None]) / sd[sl, None]
                # exponnorm with shape K = 1 / (lam sd): s = 1 / K (scipy's formula); few
                # components (one per s bin and output length), left to numpy
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
        refine = None
        if len(self.groups) == 1 and self.groups[0][3] is None:
            w, mu, sd, _ = self.groups[0]
            tot = self.total

            def refine(
                a: FloatArray, b: FloatArray, fa: FloatArray, fb: FloatArray, p: FloatArray
            ) -> FloatArray:
                out = np.empty(p.shape[0])
                _normal_refine(w, mu, sd, tot, a, b, np.ascontiguousarray(fa),
                               np.ascontiguousarray(fb), np.ascontiguousarray(p), out)  # fmt: skip
                return out

        return solve_quantiles(self.cdf_pdf, lo, hi, probs, cdf=self._cdf_only, refine=refine)


def _reassoc_jit(signature: str) -> Any:
    """:func:`sdsim._jit.jit_eager` with reassociation allowed, so that a compiled sum over
    components runs in SIMD lanes (it is then summed in another order: rounding only)."""
    return jit_eager(signature, fastmath={"reassoc"})


@_reassoc_jit("void(f8[::1], f8[::1], f8[::1], f8[::1], f8[::1], f8[::1], f8[::1], f8[:, ::1])")
def _uniform_sums(
    xs: FloatArray,
    w: FloatArray,
    lo: FloatArray,
    hi: FloatArray,
    dens: FloatArray,
    pt_w: FloatArray,
    pt_at: FloatArray,
    out: FloatArray,
) -> None:  # pragma: no cover - compiled
    """``sum_i w_i U_i(x)`` and the ramps' density at each x (``out``: 2 x len(xs), CDF then
    density).

    Ramps: uniform on ``[lo_i, hi_i]`` with density ``dens_i = w_i / (hi_i - lo_i)``; each term
    is ``w_i`` at or past ``hi_i``, ``dens_i (x - lo_i)`` on the ramp, 0 below it (the density
    counts on ``[lo_i, hi_i)``); point masses ``pt_w`` at ``pt_at``. Branch-free selects, so
    the sum over components vectorises.
    """
    m = xs.shape[0]
    for j in range(m):
        x = xs[j]
        c = 0.0
        d = 0.0
        for i in range(w.shape[0]):
            on = x >= lo[i]
            top = x >= hi[i]
            c += w[i] if top else (dens[i] * (x - lo[i]) if on else 0.0)
            d += dens[i] if (on and not top) else 0.0
        for i in range(pt_w.shape[0]):
            c += pt_w[i] if x >= pt_at[i] else 0.0
        out[0, j] = c
        out[1, j] = d


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
        # ramps (lo, lo + ln, density w / ln) and point masses, contiguous for the compiled sums
        ramp = ln > 0
        self._rw = np.ascontiguousarray(w[ramp], dtype=np.float64)
        self._rlo = np.ascontiguousarray(lo[ramp], dtype=np.float64)
        self._rhi = self._rlo + ln[ramp]
        self._rdens = self._rw / ln[ramp]
        self._pw = np.ascontiguousarray(w[~ramp], dtype=np.float64)
        self._pat = np.ascontiguousarray(lo[~ramp], dtype=np.float64)
        self.hi = float((lo + ln).max()) * 1.05 if lo.shape[0] else 1.0
        if wait > 0:
            self.hi = max(self.hi, shift + 12 * theta)

    def cdf_pdf(self, x: FloatArray) -> tuple[FloatArray, FloatArray]:
        """CDF and density at each x (the density leaves out the point masses)."""
        xs = np.ascontiguousarray(x, dtype=np.float64)
        sums = np.empty((2, xs.shape[0]))
        _uniform_sums(xs, self._rw, self._rlo, self._rhi, self._rdens, self._pw, self._pat, sums)
        u, slope = sums[0], sums[1]
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
