"""Fit the closed-form model to measured (or simulated) mean latencies.

Two forms, by nonlinear least squares (``scipy.optimize.curve_fit``) on the mean e2e latency:

* **dense** (2 parameters): ``L = C1 / (1 - lambda C2)``;
* **sd** (6 stage coefficients): ``C1 = c1p + m (c1v + k c1d)``, ``C2 = c2p + m (c2v + k c2d)``,
  with ``m`` the exact mean decode steps of a row's (output tokens, alpha, k) from
  :mod:`sdsim.acceptance` (the paper's g / E, end effect included).

Rows past the fitted saturation give an infinite model latency; the fit keeps coefficients where
every row is below saturation. Reported: coefficients with standard errors (from the covariance),
R^2, residuals, and a leave-some-out (k-fold) relative error that says how well the form predicts
rows it was not fitted to. The table's columns: ``rate, alpha, k, prompt_tokens, output_tokens,
e2e_mean`` (``ttft_mean``, ``tpot_mean`` optional and carried along).
"""

from __future__ import annotations

__all__ = [
    "REQUIRED_COLUMNS",
    "FitResult",
    "fit_measurements",
    "mean_steps",
    "read_measurements",
]

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy import optimize

from sdsim.acceptance import steps_to_finish_moments
from sdsim.errors import ScenarioError

REQUIRED_COLUMNS = ("rate", "alpha", "k", "prompt_tokens", "output_tokens", "e2e_mean")
DENSE_NAMES = ("C1", "C2")
SD_NAMES = ("c1p", "c1v", "c1d", "c2p", "c2v", "c2d")


@dataclass
class FitResult:
    """Outcome of a fit.

    Attributes
    ----------
    form
        ``"dense"`` or ``"sd"``.
    coefficients, stderr
        Name -> value and standard error (seconds).
    r2
        Coefficient of determination on the fitted rows.
    residuals
        Measured minus fitted mean latency, per row (seconds).
    rel_residuals
        Residuals relative to the measurement.
    loo_error
        Mean absolute relative error on held-out rows (k-fold, each row predicted by a fit that did
        not see it); NaN when there are too few rows.
    n
        Rows used.
    """

    form: str
    coefficients: dict[str, float]
    stderr: dict[str, float]
    r2: float
    residuals: npt.NDArray[np.float64]
    rel_residuals: npt.NDArray[np.float64]
    loo_error: float
    n: int
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {
            "form": self.form,
            "coefficients": self.coefficients,
            "stderr": self.stderr,
            "r2": self.r2,
            "loo_error": self.loo_error,
            "n": self.n,
            "max_abs_rel_residual": float(np.max(np.abs(self.rel_residuals)))
            if self.n
            else math.nan,
        }


def read_measurements(path: str | Path) -> pd.DataFrame:
    """A measurements table (CSV with the :data:`REQUIRED_COLUMNS`) as read from ``path``.

    Raises
    ------
    ScenarioError
        A missing file or one that is not CSV, named by its path.
    """
    if not Path(path).exists():
        raise ScenarioError(str(path), "measurements file not found")
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ScenarioError(str(path), f"cannot parse CSV: {exc.__class__.__name__}") from None


def mean_steps(
    output_tokens: npt.ArrayLike, alpha: npt.ArrayLike, k: npt.ArrayLike
) -> npt.NDArray[np.float64]:
    """Exact mean decode steps for each row (g - 1 tokens after the prefill's first token)."""
    g = np.asarray(output_tokens, dtype=np.int64)
    al = np.asarray(alpha, dtype=np.float64)
    kk = np.asarray(k, dtype=np.int64)
    out = np.empty(g.shape[0])
    cache: dict[tuple[float, int], npt.NDArray[np.float64]] = {}
    gmax = int(g.max()) if g.size else 1
    for i in range(g.shape[0]):
        key = (float(al[i]), int(kk[i]))
        if key not in cache:
            cache[key] = steps_to_finish_moments(max(gmax - 1, 0), key[0], key[1])[0]
        out[i] = cache[key][max(int(g[i]) - 1, 0)]
    return out


def _check(df: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ScenarioError(
            "measurements", f"missing column(s) {missing}; need {list(REQUIRED_COLUMNS)}"
        )
    d = df.copy()
    for c in REQUIRED_COLUMNS:
        d[c] = pd.to_numeric(d[c], errors="coerce")
    bad = d[list(REQUIRED_COLUMNS)].isna().any(axis=1)
    if bad.any():
        raise ScenarioError(
            "measurements", f"{int(bad.sum())} row(s) with non-numeric or empty values"
        )
    if (d["rate"] < 0).any() or (d["e2e_mean"] <= 0).any():
        raise ScenarioError("measurements", "rate must be >= 0 and e2e_mean > 0")
    if ((d["alpha"] < 0) | (d["alpha"] > 1)).any():
        raise ScenarioError("measurements.alpha", "must lie in [0, 1]")
    if (d["k"] < 0).any() or (d["output_tokens"] < 1).any() or (d["prompt_tokens"] < 1).any():
        raise ScenarioError("measurements", "k must be >= 0 and token counts >= 1")
    if len(d) == 0:
        raise ScenarioError("measurements", "no rows")
    return d.reset_index(drop=True)


def _dense_model(x: npt.NDArray[np.float64], c1: float, c2: float) -> npt.NDArray[np.float64]:
    den = 1.0 - x[0] * c2
    return np.where(den > 1e-9, c1 / np.maximum(den, 1e-9), 1e9)


def _sd_model(x: npt.NDArray[np.float64], *p: float) -> npt.NDArray[np.float64]:
    lam, m, k = x
    c1p, c1v, c1d, c2p, c2v, c2d = p
    c1 = c1p + m * (c1v + k * c1d)
    c2 = c2p + m * (c2v + k * c2d)
    den = 1.0 - lam * c2
    return np.where(den > 1e-9, c1 / np.maximum(den, 1e-9), 1e9)


def _linear_start(
    form: str, x: npt.NDArray[np.float64], y: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """Starting point: ``L = C1 + lambda L C2`` is linear in the coefficients (non-negative LS).

    Each row is divided by its latency so every row weighs by relative error, as in the fit.
    """
    lam, m, k = x
    ly = lam * y
    if form == "dense":
        design = np.column_stack([np.ones_like(y), ly])
    else:
        design = np.column_stack([np.ones_like(y), m, m * k, ly, ly * m, ly * m * k])
    scale = np.maximum(np.abs(design).max(axis=0), 1e-300)
    sol, _ = optimize.nnls(design / scale / y[:, None], np.ones_like(y))
    return np.asarray(sol / scale)


def _fit_once(
    form: str, x: npt.NDArray[np.float64], y: npt.NDArray[np.float64]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    p0 = _linear_start(form, x, y)
    # keep the start strictly inside the bounds and below every row's saturation
    p0 = np.maximum(p0, 1e-12 * max(float(np.max(p0)), 1e-12))
    model = _dense_model if form == "dense" else _sd_model
    xd = x[0:1] if form == "dense" else x
    popt, pcov = optimize.curve_fit(
        model,
        xd,
        y,
        p0=p0,
        bounds=(np.zeros(p0.shape[0]), np.full(p0.shape[0], np.inf)),
        sigma=y,
        maxfev=200000,
        x_scale=np.maximum(np.abs(p0), 1e-12),
    )
    return np.asarray(popt), np.asarray(pcov)


def fit_measurements(df: pd.DataFrame, form: str = "auto", folds: int = 5) -> FitResult:
    """Fit the dense or SD form to a table of mean latencies.

    Parameters
    ----------
    df
        Columns ``rate, alpha, k, prompt_tokens, output_tokens, e2e_mean`` (seconds, req/s).
    form
        ``"dense"``, ``"sd"`` or ``"auto"`` (sd when some rows have k > 0 and there are at least 8
        rows, dense otherwise).
    folds
        Folds of the leave-some-out check; fold f holds out rows f, f + folds, f + 2 folds, ...
        (deterministic interleaving, so no random numbers are involved).

    Returns
    -------
    FitResult
    """
    d = _check(df)
    if form == "auto":
        form = "sd" if (d["k"] > 0).any() and len(d) >= 8 else "dense"
    if form not in ("dense", "sd"):
        raise ScenarioError("--form", f"must be dense, sd or auto (got {form!r})")
    need = 2 if form == "dense" else 6
    if len(d) < need + 1:
        raise ScenarioError("measurements", f"the {form} form needs at least {need + 1} rows")
    y = d["e2e_mean"].to_numpy(dtype=np.float64)
    m = mean_steps(d["output_tokens"], d["alpha"], d["k"])
    x = np.vstack([d["rate"].to_numpy(np.float64), m, d["k"].to_numpy(np.float64)])
    names = DENSE_NAMES if form == "dense" else SD_NAMES
    try:
        popt, pcov = _fit_once(form, x, y)
    except (RuntimeError, ValueError) as exc:
        raise ScenarioError("measurements", f"the {form} fit did not converge ({exc})") from None
    fitted = _dense_model(x[0:1], *popt) if form == "dense" else _sd_model(x, *popt)
    res = y - fitted
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float((res**2).sum()) / ss_tot if ss_tot > 0 else math.nan
    with np.errstate(invalid="ignore"):
        se = np.sqrt(np.clip(np.diag(pcov), 0, None))
    # leave-some-out
    loo = math.nan
    nf = min(folds, len(d))
    if nf >= 2 and len(d) - len(d) // nf > need:
        order = np.arange(len(d))
        errs = []
        for f in range(nf):
            test = order[f::nf]
            train = np.setdiff1d(order, test)
            try:
                p, _ = _fit_once(form, x[:, train], y[train])
            except (RuntimeError, ValueError):
                continue
            pred = _dense_model(x[0:1, test], *p) if form == "dense" else _sd_model(x[:, test], *p)
            errs.append(np.abs(pred - y[test]) / y[test])
        if errs:
            loo = float(np.mean(np.concatenate(errs)))
    return FitResult(
        form=form,
        coefficients={n: float(v) for n, v in zip(names, popt, strict=True)},
        stderr={n: float(v) for n, v in zip(names, se, strict=True)},
        r2=r2,
        residuals=res,
        rel_residuals=res / y,
        loo_error=loo,
        n=len(d),
        extra={"mean_steps": m},
    )
