"""A tagged request's life on the real step curve: its mean and variance given what it finds.

During a tagged request's life of ``ell = s + P`` steps (``s`` decode steps, ``P`` prefill
steps) the others in a step are the ``n0`` it found (each still decoding for an equilibrium-
residual number of steps) and the arrivals during its life (``lambda`` per second, each adding
its prefill ``c_p`` once and ``b`` per step while it decodes). A step with ``n`` decoding
requests costs the real curve's ``T(n)``; its slope ``b`` and the prefill cost ``c_p`` are read
off the curve around the batch the life passes through.

* :func:`life_on_curve`: the mean life as the root of a scalar equation per cell (the life's mean
  number of others ``x`` on the curve itself), solved by a compiled Illinois iteration, for
  lives that find fewer others than their mean (the batch fills up);
* :func:`linear_life`: the closed form under one line per ``n0`` (the tangent at the batch
  found), for lives that find more (the batch drains: the steeper end of a convex curve);
* :func:`life_spread`: the variance of either (delta method around the mean path), with the
  self-excitation (longer steps admit more arrivals) as ``1 / den``.

The arrival rate is per cell: a burst state's arrivals keep coming faster for a while
(:mod:`sdsim.analytic.arrivals`). The curve is the one averaged over the batch's fluctuation
(:func:`smoothed`), tabulated on a half-batch grid, which the compiled solver reads exactly as
``np.interp`` does.
"""

from __future__ import annotations

__all__ = [
    "Life",
    "LinearLife",
    "LocalLines",
    "Tabulated",
    "life_on_curve",
    "life_spread",
    "linear_life",
    "smoothed",
]

from collections.abc import Callable
from dataclasses import dataclass, fields

import numba
import numpy as np
import numpy.typing as npt

from sdsim._jit import jit_eager

FloatArray = npt.NDArray[np.float64]
# n (others in system, per bin) -> (a, b, c_p) arrays: the local lines of the real step curve
LocalLines = Callable[[FloatArray], tuple[FloatArray, FloatArray, FloatArray]]


@dataclass
class Life:
    """The tagged request's life on the real step curve, per (n0, s) cell."""

    t_life: FloatArray  # mean life (seconds), own prefill step(s) included
    t_dec: FloatArray  # mean decode window (seconds)
    tbar: FloatArray  # mean step over the life
    b: FloatArray  # tangent slope of the step curve at the life's mean batch
    cp: FloatArray  # prefill cost of a request at the life's mean batch
    den: FloatArray  # 1 - d(life)/d(life) through the arrivals: the self-excitation factor
    capped: FloatArray  # 1.0 where the batch sits at the cap for the life, else 0.0
    batch: FloatArray  # the life's mean number of others
    step: FloatArray  # the real step with the tagged and that many others

    def part(self, start: int, size: int, shape: tuple[int, int]) -> Life:
        """The cells ``start .. start + size`` (of flat arrays) as a grid of ``shape``."""
        return Life(
            *(getattr(self, f.name)[start : start + size].reshape(shape) for f in fields(self))
        )


# Illinois regula falsi on the life's mean batch: iterations and tolerance (batches).
_LIFE_ITER = 60
_LIFE_TOL = 1e-9
# Floor of the self-excitation factor in the variance (the mean never divides by it): a stable
# root of the life equation has a factor > 0; only a root where the curve bends sharply can
# come close to 0, and there the linear (delta-method) variance amplification is not meaningful.
_DEN_FLOOR = 0.05


# Gauss-Hermite nodes and weights (probabilists'): E[f(Z)], Z ~ N(0, 1), exact to degree 9
_GH_Z, _GH_W = np.polynomial.hermite_e.hermegauss(5)
_GH_W = _GH_W / _GH_W.sum()


class Tabulated:
    """``x -> (a, b, c_p)`` read off a table of the smoothed curve (see :func:`smoothed`).

    Linear interpolation in ``xg`` (``np.interp``); beyond ``top`` the step continues along the
    last slope. Callable like any :data:`LocalLines`; :func:`life_on_curve` also hands the
    table itself to a compiled root solver that reads it the same way.
    """

    def __init__(
        self, xg: FloatArray, step_t: FloatArray, b_t: FloatArray, cp_t: FloatArray, top: float
    ) -> None:
        self.xg, self.step_t, self.b_t, self.cp_t, self.top = xg, step_t, b_t, cp_t, top
        # for the compiled reader: np.interp's slopes per table, and 1 / spacing to guess a
        # point's interval (then checked against the knots themselves)
        self.slopes = np.stack([_slopes(xg, v) for v in (b_t, step_t, cp_t)])
        self.inv_h = (xg.shape[0] - 1) / (xg[-1] - xg[0]) if xg[-1] > xg[0] else 0.0

    def __call__(self, n: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
        x = np.asarray(n, dtype=np.float64)
        bb = np.interp(x, self.xg, self.b_t)
        step = np.interp(x, self.xg, self.step_t) + self.b_t[-1] * np.maximum(x - self.top, 0.0)
        return step - bb * (x + 1.0), bb, np.interp(x, self.xg, self.cp_t)


@numba.njit(inline="always")
def _knot(x: float, xp: FloatArray, inv_h: float) -> int:  # compiled
    """The interval ``np.interp`` reads for ``x`` in an evenly spaced ``xp``: -1 below it,
    ``len(xp)`` above it, else the ``j`` with ``xp[j] <= x < xp[j + 1]`` (``len - 1`` at the
    last knot), as numpy's binary search finds it (guessed from the spacing, then moved to
    the knots' own comparisons)."""
    n = xp.shape[0]
    if x < xp[0]:
        return -1
    if x > xp[n - 1]:
        return n
    j = min(max(int((x - xp[0]) * inv_h), 0), n - 1)
    while j > 0 and xp[j] > x:
        j -= 1
    while j < n - 1 and xp[j + 1] <= x:
        j += 1
    return j


@numba.njit(inline="always")
def _interp_knot(
    x: float, j: int, xp: FloatArray, fp: FloatArray, slopes: FloatArray, row: int
) -> float:  # compiled
    """``np.interp(x, xp, fp)`` on the interval ``j`` of :func:`_knot`, numpy's operations in
    its order (``slopes[row, j] = (fp[j+1] - fp[j]) / (xp[j+1] - xp[j])``, as numpy precomputes
    them; a point on a knot or past an end takes that knot's value)."""
    n = xp.shape[0]
    if j < 0:
        return fp[0]
    if j >= n - 1 or xp[j] == x:
        return fp[min(j, n - 1)]
    return slopes[row, j] * (x - xp[j]) + fp[j]


def _slopes(xp: FloatArray, fp: FloatArray) -> FloatArray:
    """``np.interp``'s per-interval slopes (the same division), one per knot (0 at the last)."""
    out = np.zeros(fp.shape[0])
    out[:-1] = (fp[1:] - fp[:-1]) / (xp[1:] - xp[:-1])
    return out


@numba.njit(inline="always")
def _life_excess(
    x: float,
    xg: FloatArray,
    step_t: FloatArray,
    b_t: FloatArray,
    cp_t: FloatArray,
    sl: FloatArray,
    inv_h: float,
    top: float,
    lam: float,
    p: float,
    q_full: float,
    sf: float,
    e: float,
    s_1: float,
    cm: float,
) -> float:  # compiled
    """How far the arrivals' batch at ``x`` others overshoots ``x``: the mean others a life
    of one cell implies, ``(sf + lam t(x) cm / e) / e``, minus ``x`` (``sl``: the slopes of
    ``b_t``, ``step_t``, ``cp_t`` as three rows; see :func:`life_on_curve`)."""
    j = _knot(x, xg, inv_h)
    bb = _interp_knot(x, j, xg, b_t, sl, 0)
    step0 = _interp_knot(x, j, xg, step_t, sl, 1) + b_t[b_t.shape[0] - 1] * max(x - top, 0.0)
    a = step0 - bb * (x + 1.0)
    cp = _interp_knot(x, j, xg, cp_t, sl, 2)
    step = a + bb * (x + 1.0)
    base = max(e * step - p * bb + cp, 0.0)
    pf = max(1.0 - lam * cp * s_1 / e, 1e-12)
    t = min(base / pf, base + cp * s_1 * q_full)
    return (sf + lam * t / e * cm) / e - x


@jit_eager("void(f8[::1], f8[::1], f8[::1], f8[::1], f8[:, ::1], f8, f8, f8[::1], f8, f8, f8, "
           "f8[::1], f8[::1], f8[::1], f8[::1], f8[::1], b1[::1])")
def _life_roots(
    xg: FloatArray,
    step_t: FloatArray,
    b_t: FloatArray,
    cp_t: FloatArray,
    sl: FloatArray,
    inv_h: float,
    top: float,
    lam: FloatArray,
    p: float,
    q_full: float,
    cap: float,
    sf: FloatArray,
    ellf: FloatArray,
    s1: FloatArray,
    cm: FloatArray,
    x_out: FloatArray,
    capped: npt.NDArray[np.bool_],
) -> None:  # compiled
    """The root ``x`` of :func:`_life_excess` per cell (``x_out``; ``capped`` where even the
    cap leaves more arrivals than it holds): Illinois regula falsi on ``[survivors only, cap]``
    from both ends (the excess falls from >= 0 to < 0), one cell at a time."""
    for i in range(sf.shape[0]):
        e = ellf[i]
        lo = min(sf[i] / e, cap)
        hi = cap
        f_lo = _life_excess(
            lo, xg, step_t, b_t, cp_t, sl, inv_h, top, lam[i], p, q_full, sf[i], e, s1[i], cm[i]
        )
        f_hi = _life_excess(
            hi, xg, step_t, b_t, cp_t, sl, inv_h, top, lam[i], p, q_full, sf[i], e, s1[i], cm[i]
        )
        capped[i] = f_hi >= 0.0
        if capped[i]:
            x_out[i] = hi
            continue
        x_out[i] = lo
        if not f_lo > 0.0:
            continue
        side = 0
        for _ in range(_LIFE_ITER):
            den = f_hi - f_lo
            if den == 0.0:  # cannot happen (f_lo >= 0 > f_hi throughout); bisect if it did
                xm = 0.5 * (lo + hi)
            else:
                xm = hi - f_hi * (hi - lo) / den
            xm = min(max(xm, lo), hi)
            fm = _life_excess(
                xm,
                xg,
                step_t,
                b_t,
                cp_t,
                sl,
                inv_h,
                top,
                lam[i],
                p,
                q_full,
                sf[i],
                e,
                s1[i],
                cm[i],
            )
            up = fm >= 0.0
            if up:
                if side == 1:
                    f_hi = f_hi * 0.5
                lo = xm
                f_lo = fm
                side = 1
            else:
                if side == -1:
                    f_lo = f_lo * 0.5
                hi = xm
                f_hi = fm
                side = -1
            x_out[i] = xm
            if hi - lo <= _LIFE_TOL * (1.0 + xm) or abs(fm) <= _LIFE_TOL * 1e-3:
                break



def smoothed(lines: LocalLines, top: float, dispersion: float = 1.0) -> Tabulated:
    """Lines of the step curve averaged over the batch's fluctuation around its mean.

    The others in a step of the life fluctuate around their mean ``x`` (survivors leave by
    chance, arrivals are Poisson): their count is taken as normal with variance
    ``dispersion * x`` (the birth-death law's variance-to-mean ratio; 1 for Poisson), clipped to
    ``[0, top]``. The mean step is then ``E[T(x + Z)]`` and the slope that moves it
    ``E[T'(x + Z)]``: on a convex curve (a dense model turning compute-bound) a batch that
    crosses the bend often pays the steeper slope, on a concave one (MoE expert coverage) the
    flatter one. Returns ``x -> (a, b, c_p)`` with ``a + b (x + 1) = E[T(x + Z)]``.

    ``lines`` is read on ``[0, top]`` only (``top``: the most others the birth-death law
    reaches, where the step curve's chunk law is solved exactly); beyond, the curve continues
    along its last tangent.
    """
    # tabulated on a half-batch grid once (the solver evaluates it ~10 times per cell); the
    # smoothed curve is smooth on that scale, so linear interpolation is within ~1e-4 of it
    xg = np.linspace(0.0, top, max(2, int(2 * top) + 1))
    sd = np.sqrt(dispersion * xg)
    pts = np.clip(xg[:, None] + sd[:, None] * _GH_Z, 0.0, top)
    a, b, cp = lines(pts)
    step_t = ((a + b * (pts + 1.0)) * _GH_W).sum(axis=-1)
    b_t = (b * _GH_W).sum(axis=-1)
    cp_t = (cp * _GH_W).sum(axis=-1)

    return Tabulated(xg, step_t, b_t, cp_t, float(top))


def life_on_curve(
    curve: Tabulated,
    lam: FloatArray,
    surv_full: FloatArray,
    cm1: FloatArray,
    surv_dec: FloatArray,
    ell: npt.NDArray[np.int64],
    si: npt.NDArray[np.int64],
    P: int,
    cap: float,
    q_full: float,
) -> Life:
    """Mean life of a tagged request with its batch on the real step curve, per cell.

    During the tagged's life of ``ell = s + P`` steps, the others in a step are its survivors
    (``surv_full`` decoding steps in total) and the arrivals during the life, ``lambda tbar`` per
    step, each decoding ``min(S', steps left)`` steps (``lambda tbar CM1[s]`` in total). With the
    mean number of others ``x = (surv_full + lambda tbar CM1[s]) / ell``, the life is

        t = ell T(x) - P b(x) + c_p(x) (1 + lambda t (s + 1) / ell)

    (``T(x) = a + b (x + 1)`` is the real step with the tagged and ``x`` others; the tagged does
    not decode in its own ``P`` prefill steps; every arrival adds its prefill once). Solved for
    ``t`` at a given ``x`` this is linear, so the life is the root of the scalar equation
    ``x = (surv_full + lambda t(x) CM1[s] / ell) / ell`` per cell (compiled: :func:`_life_roots`).

    Why not the tangent at ``n0`` for the whole life: the batch drifts from ``n0`` towards the
    batch the arrivals build up, and on a concave curve (MoE: the expert coverage
    ``1 - (1 - m/M)^T`` makes a step of a near-empty batch very steep, ~3.9 ms per request at 0
    others against 0.06 ms at 20 for Qwen3-30B-A3B) the tangent at a small ``n0`` describes a
    server that would be unstable at the rate: ``1 - lambda K / ell`` (the linear
    self-excitation factor) goes below 0 and its solution is meaningless (negative lives of
    -1e6 s). On the curve itself the slope falls as the batch grows, and the root is finite.

    Bounds, both physical: the batch cannot hold more than ``cap`` others (``n_max - 1``); where
    even ``x = cap`` leaves more arrivals than that, the cap regime governs the whole life (full
    batch, step ``T(cap)``, arrivals wait), and the prefills admitted per step cannot exceed
    the completions per step of a full batch (``q_full = n_max / nu``).

    Parameters
    ----------
    curve
        The smoothed step curve (:func:`smoothed`).
    lam
        Arrival rate during the life (per cell, broadcast).
    surv_full, surv_dec
        Survivors' decoding steps in the life and in the decode window (cells).
    cm1
        ``CM1[s]``: an arrival's decoding steps inside the life, per unit of ``lambda tbar``.
    ell, si
        Life and decode steps of each ``s`` bin.
    P
        Prefill steps.
    cap
        Most others a step can hold (``n_max - 1``).
    q_full
        Admissions per step of a full batch.
    """
    shape = np.broadcast_shapes(surv_full.shape, np.shape(ell), np.shape(lam))
    ellf = np.broadcast_to(np.maximum(ell, 1).astype(np.float64), shape)
    sdec = np.broadcast_to(si.astype(np.float64), shape)
    s1 = sdec + 1.0
    cm = np.broadcast_to(cm1, shape)
    sf = np.broadcast_to(surv_full, shape)
    lamf = np.broadcast_to(np.asarray(lam, dtype=np.float64), shape)

    def life_at(x: FloatArray) -> tuple[FloatArray, ...]:
        a, b, cp = curve(x)
        step = a + b * (x + 1.0)
        base = np.maximum(ellf * step - P * b + cp, 0.0)
        # arrivals' prefills: lambda t (s + 1) / ell of them, at most q_full per step
        pf = np.maximum(1.0 - lamf * cp * s1 / ellf, 1e-12)
        t = np.minimum(base / pf, base + cp * s1 * q_full)
        return t, b, cp, step

    n = int(np.prod(shape))
    x = np.empty(n)
    capped = np.empty(n, dtype=np.bool_)
    _life_roots(
        curve.xg, curve.step_t, curve.b_t, curve.cp_t, curve.slopes, curve.inv_h, curve.top,
        # (writable copies: the broadcast views are read-only, the kernel's signature not)
        np.array(lamf).ravel(), float(P), float(q_full), float(cap),
        np.array(sf, dtype=np.float64).ravel(), np.array(ellf).ravel(),
        np.array(s1).ravel(), np.array(cm, dtype=np.float64).ravel(), x, capped,
    )
    xs = x.reshape(shape)
    capf = capped.reshape(shape).astype(np.float64)
    t_life, b, cp, step = life_at(xs)
    tbar = t_life / ellf
    # decode window [P + 1, ell]: the same arrivals, the survivors still decoding after the
    # prefill, on the curve at that window's mean batch
    xd = np.where(capf > 0, float(cap), (surv_dec + lamf * tbar * cm) / np.maximum(sdec, 1.0))
    xd = np.minimum(xd, cap)
    a_d, b_d, cp_d = curve(xd)
    step_d = a_d + b_d * (xd + 1.0)
    t_dec = sdec * step_d + cp_d * sdec * np.minimum(lamf * tbar, q_full)
    # d t / d t through the arrivals at the root: their prefills (while below q_full per step)
    # and, below the cap, their decoding steps at the curve's slope there
    pf_on = (lamf * tbar < q_full).astype(np.float64)
    den = 1.0 - lamf * (cp * s1 * pf_on + b * (1.0 - capf) * cm) / ellf
    return Life(t_life, t_dec, tbar, b, cp, np.maximum(den, _DEN_FLOOR), capf, xs, step)


@dataclass(frozen=True)
class Window:
    """What the others contribute to a tagged request's life, per ``s`` bin (broadcast against
    an ``n0`` axis in front): its steps and the moments of the others' decoding steps in it.

    Attributes
    ----------
    si, ell
        Decode steps and life (``s + P``) of each bin.
    c_full, cv_full
        Mean and variance of one survivor's decoding steps inside the life.
    c_dec, cv_dec
        The same inside the decode window ``[P + 1, ell]``.
    c_pf
        A survivor's mean decoding steps inside the prefill window ``[1, P]``.
    cm1, cm2, m1
        ``CM1[s]``, ``CM2[s]``, ``M1[s]``: an arrival's decoding steps inside the life (first
        and second moments summed over its arrival step, per unit of arrivals per step) and
        inside the last step.
    """

    si: npt.NDArray[np.int64]
    ell: npt.NDArray[np.int64]
    c_full: FloatArray
    cv_full: FloatArray
    c_dec: FloatArray
    cv_dec: FloatArray
    c_pf: FloatArray
    cm1: FloatArray
    cm2: FloatArray
    m1: FloatArray


@dataclass
class LinearLife:
    """The life of every cell under one line per n0 row (the published tagged model)."""

    t_life: FloatArray
    t_dec: FloatArray
    tbar: FloatArray
    var_life: FloatArray
    var_dec: FloatArray
    den: FloatArray  # the self-excitation factor 1 - lambda K / ell (unfloored)
    others: FloatArray  # the mean number of others over the life it implies


def life_spread(
    lam: FloatArray,
    N0: FloatArray,
    v0: FloatArray,
    b: FloatArray,
    cp: FloatArray,
    den: FloatArray,
    tbar: FloatArray,
    win: Window,
    count_var: FloatArray | float = 0.0,
    chunk_cv2: float = 0.0,
) -> tuple[FloatArray, FloatArray]:
    """Variance of the life and of its decode window (delta method around the mean path).

    Survivors (binomial, and the spread of n0 within its bin) and arrivals (compound Poisson:
    a prefill ``c_p`` plus ``b`` per decoding step) move the life by the line's slope; the
    self-excitation (longer steps admit more arrivals) stretches the sum by ``1 / den``.
    ``count_var`` is the variance of the number of arrivals during the life beyond Poisson's
    (a modulated rate: :mod:`sdsim.analytic.arrivals`); each of them moves the life by an
    arrival's mean contribution ``K / ell``. ``chunk_cv2`` is the squared CV of a prefill's
    cost (random prompt lengths): its second moment is ``c_p^2 (1 + chunk_cv2)``.
    """
    si, ell = win.si, np.maximum(win.ell, 1)
    k_full = cp * (si + 1) + b * win.cm1
    k_dec = cp * si + b * win.cm1
    cp2 = cp**2 * (1.0 + chunk_cv2)
    k2_full = cp2 * (si + 1) + 2 * cp * b * win.cm1 + b**2 * win.cm2
    k2_dec = cp2 * si + 2 * cp * b * (win.cm1 - win.m1) + b**2 * win.cm2
    amp = 1.0 / den
    var_life = amp**2 * (
        b**2 * N0 * win.cv_full
        + lam * tbar * k2_full
        + b**2 * win.c_full**2 * v0
        + (k_full / ell) ** 2 * count_var
    )
    var_dec = amp**2 * (
        b**2 * N0 * win.cv_dec
        + lam * tbar * k2_dec
        + b**2 * win.c_dec**2 * v0
        + (k_dec / ell) ** 2 * count_var
    )
    return var_life, var_dec


def linear_life(
    lam: FloatArray,
    N0: FloatArray,
    v0: FloatArray,
    a: FloatArray,
    b: FloatArray,
    cp: FloatArray,
    win: Window,
    count_var: FloatArray | float = 0.0,
    chunk_cv2: float = 0.0,
) -> LinearLife:
    """The life under the line ``(a, b, c_p)`` of each n0 row: ``base / (1 - lambda K / ell)``
    (``count_var``, ``chunk_cv2``: :func:`life_spread`'s).

    Only meaningful where ``den = 1 - lambda K / ell`` is well above 0; the caller checks.
    """
    si, ell = win.si, win.ell
    e = np.maximum(ell, 1)
    k_full = cp * (si + 1) + b * win.cm1
    k_dec = cp * si + b * win.cm1
    base_full = ell * a + cp + si * b + b * N0 * win.c_full
    den = 1.0 - lam * k_full / e
    safe = np.maximum(den, _DEN_FLOOR)
    t_life = base_full / safe
    tbar = t_life / e
    others = (N0 * win.c_full + lam * tbar * win.cm1) / e
    t_dec = si * (a + b) + b * N0 * win.c_dec + lam * tbar * k_dec
    var_life, var_dec = life_spread(lam, N0, v0, b, cp, safe, tbar, win, count_var, chunk_cv2)
    return LinearLife(t_life, t_dec, tbar, var_life, var_dec, den, others)
