"""Calibration from serving reports: per-benchmark measurements, the dense mean-field fit, and a
least-squares fit of the ``linear`` step-cost model from per-request timings.

Dense form (THEORY.md, the seed paper): with ``L = C1 + B·C2`` and Little's law ``B = λL``,
``L = C1 / (1 − λ·C2)``: ``C1`` is the latency of a request alone, ``C2`` what one more concurrent
request adds, ``1/C2`` the saturation rate. :func:`fit_dense` fits it by
the analytic model's own least-squares fit (:func:`sdsim.fit_measurements`) to the per-benchmark
means; :func:`fit_sd` fits its six stage coefficients when the benchmarks cover several draft
lengths or acceptance rates (one report file per configuration, each with its own ``k``/``alpha``).

Step-cost fit: a request's decode phase (first to last token) lasts ``s`` steps (the exact expected
number of steps to emit ``output_tokens − 1`` tokens under the scenario's acceptance), each costing
``overhead + verify_fixed + k·draft_fixed`` plus, per request in the batch,
``(k+1)·verify_per_token + k·draft_per_token + KV terms``; requests whose prefill lands inside that
phase add their prompt tokens to one step each. The number of requests decoding alongside is read
from the report itself (the time-average of how many other requests of the same benchmark were
between their first and last token). :func:`fit_linear_costs` solves for ``verify_fixed_s`` and
``verify_per_token_s`` by bounded linear least squares, holding the scenario's other linear
coefficients (drafter, KV, CPU overhead) fixed: one benchmark report cannot tell them apart.
"""

from __future__ import annotations

__all__ = [
    "DenseFit",
    "LinearCostFit",
    "SDFit",
    "analytic_table",
    "costs_from_dense",
    "decode_concurrency",
    "expected_decode_steps",
    "fit_dense",
    "fit_linear_costs",
    "fit_sd",
    "fitted_scenario",
    "report_to_measurements",
    "several_configurations",
]

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from sdsim.acceptance import steps_to_finish_moments
from sdsim.errors import ScenarioError
from sdsim.report_formats import Report
from sdsim.scenario import BetaAlpha, LinearCosts, Scenario

if TYPE_CHECKING:
    from sdsim.analytic.fitting import FitResult

MEASUREMENT_COLUMNS = (
    "rate",
    "alpha",
    "k",
    "prompt_tokens",
    "output_tokens",
    "e2e_mean",
    "ttft_mean",
    "tpot_mean",
)


def report_to_measurements(
    report: Report,
    alpha: float | None = None,
    k: int | None = None,
    scenario: Scenario | None = None,
) -> pd.DataFrame:
    """One row per benchmark: what the analytic fits consume.

    Parameters
    ----------
    report
        A loaded report.
    alpha, k
        Acceptance probability and draft length the server ran with. Reports do not record them,
        so they come from these arguments, else from ``scenario``, else are NaN (fine for the
        dense 2-parameter fit, which does not use them).
    scenario
        Scenario whose ``acceptance.alpha`` (mean) and ``spec.k`` fill what is not given.

    Returns
    -------
    pandas.DataFrame
        Columns ``rate`` (achieved req/s), ``alpha``, ``k``, ``prompt_tokens``,
        ``output_tokens`` (means), ``e2e_mean``, ``ttft_mean``, ``tpot_mean`` (s), then
        ``benchmark``, ``strategy``, ``concurrency`` for reference.
    """
    b = report.benchmarks
    a = alpha if alpha is not None else (scenario.acceptance.mean_alpha if scenario else math.nan)
    kk: float = float(k) if k is not None else (float(scenario.spec.k) if scenario else math.nan)
    df = pd.DataFrame(
        {
            "rate": b["rate"].astype(np.float64),
            "alpha": float(a),
            "k": kk,
            "prompt_tokens": b["prompt_tokens_mean"].astype(np.float64),
            "output_tokens": b["output_tokens_mean"].astype(np.float64),
            "e2e_mean": b["e2e_mean"].astype(np.float64),
            "ttft_mean": b["ttft_mean"].astype(np.float64),
            "tpot_mean": b["tpot_mean"].astype(np.float64),
            "benchmark": b["benchmark"],
            "strategy": b["strategy"],
            "concurrency": b["concurrency"].astype(np.float64),
        }
    )
    if k is not None or scenario is not None:
        df["k"] = df["k"].astype(np.int64)
    return df


# --------------------------------------------------------------------------- dense fit


@dataclass(frozen=True)
class DenseFit:
    """``L = C1 / (1 − λ·C2)`` fitted to per-benchmark means.

    Attributes
    ----------
    c1, c2
        Seconds; ``c1_se``, ``c2_se`` their standard errors (NaN with only two points).
    r2
        Coefficient of determination over the benchmarks used.
    metric
        The measured column fitted (``e2e_mean`` by default).
    table
        Per benchmark: rate, measured, predicted, relative error, and whether it was used.
    """

    c1: float
    c2: float
    c1_se: float
    c2_se: float
    r2: float
    metric: str
    table: pd.DataFrame = field(repr=False)

    @property
    def saturation_rate(self) -> float:
        """``1 / C2``: the rate at which the mean latency diverges."""
        return 1.0 / self.c2 if self.c2 > 0 else math.inf

    def predict(self, rate: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Mean latency at these rates (inf at or past saturation)."""
        lam = np.asarray(rate, dtype=np.float64)
        den = 1.0 - lam * self.c2
        with np.errstate(divide="ignore"):
            return np.where(den > 0, self.c1 / den, np.inf)


def _fit_measurements(table: pd.DataFrame, form: str) -> FitResult:
    """:func:`sdsim.analytic.fitting.fit_measurements` of ``table`` in ``form``."""
    # imported on demand: importing sdsim.analytic loads the whole analytic model (scipy.stats,
    # about a second), which `import sdsim` (it reads reports through this package) never needs
    from sdsim.analytic.fitting import fit_measurements

    return fit_measurements(table, form=form)


def _usable(
    measurements: pd.DataFrame, metric: str, exclude_strategies: tuple[str, ...]
) -> npt.NDArray[np.bool_]:
    """Rows with a positive rate and latency, GuideLLM's closed bursts left out when >= 2 remain."""
    lam = measurements["rate"].to_numpy(dtype=np.float64)
    y = measurements[metric].to_numpy(dtype=np.float64)
    ok = np.isfinite(lam) & np.isfinite(y) & (lam > 0) & (y > 0)
    if "strategy" in measurements.columns:
        keep = ~measurements["strategy"].isin(exclude_strategies).to_numpy()
        if (ok & keep).sum() >= 2:
            ok &= keep
    return np.asarray(ok)


def analytic_table(measurements: pd.DataFrame, metric: str = "e2e_mean") -> pd.DataFrame:
    """What :func:`sdsim.fit_measurements` consumes, from per-benchmark measurements.

    Token counts are rounded to whole tokens (the exact steps-to-finish law needs integers) and
    ``metric`` becomes the ``e2e_mean`` column the fit reads. A draft length or acceptance the
    report did not state (NaN) becomes 0: the dense form does not use them.
    """
    return pd.DataFrame(
        {
            "rate": measurements["rate"].to_numpy(dtype=np.float64),
            "alpha": np.nan_to_num(measurements["alpha"].to_numpy(dtype=np.float64), nan=0.0),
            "k": np.nan_to_num(measurements["k"].to_numpy(dtype=np.float64), nan=0.0).astype(
                np.int64
            ),
            "prompt_tokens": np.maximum(
                np.round(measurements["prompt_tokens"].to_numpy(dtype=np.float64)), 1
            ).astype(np.int64),
            "output_tokens": np.maximum(
                np.round(measurements["output_tokens"].to_numpy(dtype=np.float64)), 1
            ).astype(np.int64),
            "e2e_mean": measurements[metric].to_numpy(dtype=np.float64),
        }
    )


def fit_dense(
    measurements: pd.DataFrame,
    metric: str = "e2e_mean",
    exclude_strategies: tuple[str, ...] = ("throughput",),
) -> DenseFit:
    """Least-squares fit of the dense 2-parameter mean-field form.

    Three or more usable benchmarks go through the analytic model's own fit
    (:func:`sdsim.fit_measurements`, ``form="dense"``: ``scipy.optimize.curve_fit`` with every
    benchmark weighted by its relative error); two give the exact solution of
    ``1/L = 1/C1 − λ·C2/C1`` through both points (no standard errors).

    Parameters
    ----------
    measurements
        From :func:`report_to_measurements` (columns ``rate`` and ``metric``; ``strategy``
        optional). All rows should share one draft length and acceptance (the dense form has one
        C1, C2 per configuration).
    metric
        Which mean latency to fit.
    exclude_strategies
        Benchmarks left out of the fit (still predicted in the table). GuideLLM's ``throughput``
        strategy sends every request at once: a closed burst whose mean latency reflects the burst
        size, not a steady state at its achieved rate.

    Raises
    ------
    ScenarioError
        Fewer than two usable benchmarks, or a fit that does not converge.
    """
    if metric not in measurements.columns:
        raise ScenarioError("--metric", f"unknown measurement {metric!r}")
    lam_all = measurements["rate"].to_numpy(dtype=np.float64)
    y_all = measurements[metric].to_numpy(dtype=np.float64)
    ok = _usable(measurements, metric, exclude_strategies)
    if ok.sum() < 2:
        raise ScenarioError(
            "report",
            f"need >= 2 benchmarks with a rate and {metric} to fit C1, C2 (have {ok.sum()})",
        )
    lam, y = lam_all[ok], y_all[ok]
    if ok.sum() == 2:
        slope = (1.0 / y[1] - 1.0 / y[0]) / (lam[1] - lam[0]) if lam[1] != lam[0] else 0.0
        icpt = 1.0 / y[0] - slope * lam[0]
        if icpt > 0 and slope <= 0:
            c1, c2 = 1.0 / icpt, -slope / icpt
        else:  # latency falling with load, or no spread in rate: no queueing to see
            c1, c2 = float(y.mean()), 0.0
        se1 = se2 = math.nan
    else:
        res = _fit_measurements(analytic_table(measurements[ok], metric), form="dense")
        c1, c2 = res.coefficients["C1"], res.coefficients["C2"]
        se1, se2 = res.stderr["C1"], res.stderr["C2"]
    fit = DenseFit(c1, c2, se1, se2, math.nan, metric, pd.DataFrame())
    pred_used = fit.predict(lam)
    ss_res = float(((y - pred_used) ** 2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 and np.isfinite(ss_res) else math.nan
    pred = fit.predict(lam_all)
    table = pd.DataFrame(
        {
            "benchmark": measurements.get("benchmark", pd.Series(range(len(lam_all)))).to_numpy(),
            "strategy": measurements.get("strategy", pd.Series([""] * len(lam_all))).to_numpy(),
            "rate": lam_all,
            "measured": y_all,
            "predicted": pred,
            "rel_error": (pred - y_all) / y_all,
            "used": ok,
        }
    )
    return DenseFit(c1, c2, se1, se2, r2, metric, table)


@dataclass(frozen=True)
class SDFit:
    """The six stage coefficients fitted to benchmarks at several draft lengths or acceptances.

    Attributes
    ----------
    result
        :class:`sdsim.FitResult` of :func:`sdsim.fit_measurements` (``form="sd"``):
        ``c1p, c1v, c1d, c2p, c2v, c2d`` with standard errors, R², leave-some-out error.
    table
        Per benchmark: k, alpha, rate, measured and predicted mean e2e, relative error, used.
    """

    result: FitResult
    table: pd.DataFrame = field(repr=False)


def several_configurations(measurements: pd.DataFrame) -> bool:
    """Whether the benchmarks cover more than one (k, alpha) pair."""
    pairs = measurements[["k", "alpha"]].astype(np.float64).drop_duplicates()
    return len(pairs) > 1 and bool(np.isfinite(pairs.to_numpy()).all())


def fit_sd(
    measurements: pd.DataFrame, exclude_strategies: tuple[str, ...] = ("throughput",)
) -> SDFit:
    """Fit the six-coefficient SD form to mean e2e latencies at several k or alpha.

    Parameters
    ----------
    measurements
        From :func:`report_to_measurements` with the ``k`` and ``alpha`` each benchmark ran with.
    exclude_strategies
        As in :func:`fit_dense`.

    Raises
    ------
    ScenarioError
        Unknown k or alpha, a single configuration, fewer than 7 usable benchmarks, or no
        convergence.
    """
    ok = _usable(measurements, "e2e_mean", exclude_strategies)
    m = measurements[ok]
    if not np.isfinite(m[["k", "alpha"]].to_numpy(dtype=np.float64)).all():
        raise ScenarioError(
            "--k", "the SD form needs each report's draft length and acceptance (--k, --alpha)"
        )
    if not several_configurations(m):
        raise ScenarioError(
            "--form",
            "the SD form needs benchmarks at several draft lengths or acceptance rates (one "
            "report per configuration, with --k/--alpha given once per report)",
        )
    res = _fit_measurements(analytic_table(m), form="sd")
    y = m["e2e_mean"].to_numpy(dtype=np.float64)
    pred = y - np.asarray(res.residuals, dtype=np.float64)
    table = pd.DataFrame(
        {
            "benchmark": m["benchmark"].to_numpy() if "benchmark" in m else np.arange(len(m)),
            "k": m["k"].to_numpy(),
            "alpha": m["alpha"].to_numpy(),
            "rate": m["rate"].to_numpy(dtype=np.float64),
            "measured": y,
            "predicted": pred,
            "rel_error": (pred - y) / y,
        }
    )
    return SDFit(res, table)


# --------------------------------------------------------------------------- linear step costs


def _alpha_for_steps(scn: Scenario) -> float | list[float]:
    a = scn.acceptance.alpha
    if isinstance(a, BetaAlpha):
        return a.mean
    return a


def expected_decode_steps(output_tokens: npt.ArrayLike, scn: Scenario) -> npt.NDArray[np.float64]:
    """Expected engine steps to emit ``output_tokens − 1`` tokens after the first (exact law).

    The first token comes from the prefill step; each decode step then emits accepted + 1 tokens,
    cut at what the request still needs.
    """
    out = np.asarray(output_tokens, dtype=np.int64)
    need = np.maximum(out - 1, 0)
    k = scn.spec.k
    if k == 0:
        return need.astype(np.float64)
    n_max = int(need.max()) if need.size else 0
    mean, _ = steps_to_finish_moments(n_max, _alpha_for_steps(scn), k)
    return mean[need]


def decode_concurrency(requests: pd.DataFrame) -> npt.NDArray[np.float64]:
    """For each request, the time-average number of requests of its benchmark that were decoding
    (between first and last token) during its own decode phase, itself included.

    Parameters
    ----------
    requests
        Request rows of one benchmark (``first_token``, ``last_token``).
    """
    f = requests["first_token"].to_numpy(dtype=np.float64)
    last = requests["last_token"].to_numpy(dtype=np.float64)
    out = np.full(f.shape[0], math.nan)
    dur = last - f
    for i in range(f.shape[0]):
        if not (dur[i] > 0):
            continue
        overlap = np.clip(np.minimum(last, last[i]) - np.maximum(f, f[i]), 0.0, None)
        out[i] = float(np.nansum(overlap) / dur[i])
    return out


@dataclass(frozen=True)
class LinearCostFit:
    """``verify_fixed_s`` and ``verify_per_token_s`` fitted from per-request decode times.

    Attributes
    ----------
    costs
        The scenario's ``costs.linear`` with the two fitted fields replaced.
    verify_fixed_s, verify_per_token_s
        Fitted values (s, s per token); ``*_se`` their standard errors.
    r2
        Of the predicted per-request decode durations.
    requests
        Requests used.
    clipped
        Whether a bound (>= 0) was active.
    """

    costs: LinearCosts
    verify_fixed_s: float
    verify_per_token_s: float
    verify_fixed_se: float
    verify_per_token_se: float
    r2: float
    requests: int
    clipped: bool


def fit_linear_costs(report: Report, scenario: Scenario) -> LinearCostFit:
    """Fit the verifier's fixed and per-token costs to per-request timings of every benchmark.

    Parameters
    ----------
    report
        A report with per-request ``first_token`` and ``last_token`` times.
    scenario
        Supplies ``spec.k``, the acceptance law and the linear coefficients held fixed
        (drafter, KV, CPU overhead).

    Raises
    ------
    ScenarioError
        Fewer than 3 requests with per-request decode timings.
    """
    c = scenario.costs.linear
    k = scenario.spec.k
    drafter_prefills = k > 0 and scenario.drafter.kind != "ngram"
    xs_a: list[npt.NDArray[np.float64]] = []
    xs_v: list[npt.NDArray[np.float64]] = []
    ys: list[npt.NDArray[np.float64]] = []
    known: list[npt.NDArray[np.float64]] = []
    for _, sub in report.requests.groupby("benchmark", sort=True):
        sub = sub[np.isfinite(sub["first_token"]) & np.isfinite(sub["last_token"])]
        if sub.empty:
            continue
        conc = decode_concurrency(sub)
        f = sub["first_token"].to_numpy(dtype=np.float64)
        last = sub["last_token"].to_numpy(dtype=np.float64)
        prompt = sub["prompt_tokens"].to_numpy(dtype=np.float64)
        out = sub["output_tokens"].to_numpy(dtype=np.int64)
        steps = expected_decode_steps(out, scenario)
        ctx = float(prompt.mean() + out.mean() / 2.0)  # mean KV length of a decoding request
        # prompt tokens of requests whose prefill step ended inside each decode phase
        pin = np.array(
            [prompt[(f > f[i]) & (f <= last[i])].sum() for i in range(f.shape[0])],
            dtype=np.float64,
        )
        use = (out > 1) & np.isfinite(conc) & (steps > 0)
        s, b, p = steps[use], conc[use], pin[use]
        xs_a.append(s)
        xs_v.append(s * b * (k + 1) + p)
        ys.append((last - f)[use])
        kv_per_tok = c.verify_per_kv_token_s + k * c.draft_per_kv_token_s
        per_req_known = k * c.draft_per_token_s + kv_per_tok * ctx
        per_pf_known = c.verify_per_kv_token_s + (c.draft_per_token_s if drafter_prefills else 0.0)
        known.append(
            s * (c.overhead_s + k * c.draft_fixed_s) + s * b * per_req_known + p * per_pf_known
        )
    if not ys or sum(y.size for y in ys) < 3:
        raise ScenarioError(
            "report", "need >= 3 requests with first- and last-token times to fit step costs"
        )
    xa = np.concatenate(xs_a)
    xv = np.concatenate(xs_v)
    y = np.concatenate(ys)
    kn = np.concatenate(known)
    from scipy.optimize import lsq_linear

    design = np.column_stack([xa, xv])
    target = y - kn
    # scale columns so the solver sees comparable magnitudes
    scale = np.maximum(np.abs(design).max(axis=0), 1e-300)
    res = lsq_linear(design / scale, target, bounds=(0.0, np.inf), method="bvls")
    theta = res.x / scale
    resid = target - design @ theta
    dof = max(y.size - 2, 1)
    sigma2 = float(resid @ resid) / dof
    try:
        cov = sigma2 * np.linalg.inv(design.T @ design)
        se = np.sqrt(np.clip(np.diag(cov), 0, None))
    except np.linalg.LinAlgError:
        se = np.array([math.nan, math.nan])
    pred = kn + design @ theta
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float(((y - pred) ** 2).sum()) / ss_tot if ss_tot > 0 else math.nan
    vf, vt = float(theta[0]), float(theta[1])
    costs = c.model_copy(update={"verify_fixed_s": vf, "verify_per_token_s": vt})
    clipped = bool(np.any(res.active_mask != 0))
    return LinearCostFit(costs, vf, vt, float(se[0]), float(se[1]), r2, int(y.size), clipped)


def costs_from_dense(fit: DenseFit, scenario: Scenario, output_tokens: float) -> LinearCosts:
    """Approximate linear costs from ``C1, C2`` (used when a report has no per-request timings).

    With ``s`` decode steps per request, ``C2 ≈ s·b`` (b: what one more request adds to a step)
    and ``C1 ≈ (s + 1)·a + s·b`` (a: a step's cost with no batch; the prefill step counted as one
    such step, its token cost neglected). ``verify_per_token_s`` and ``verify_fixed_s`` are solved
    from ``b`` and ``a`` holding the scenario's other coefficients, and clipped at 0.
    """
    c = scenario.costs.linear
    k = scenario.spec.k
    s = float(expected_decode_steps(np.array([max(round(output_tokens), 2)]), scenario)[0])
    b = fit.c2 / s
    a = (fit.c1 - fit.c2) / (s + 1.0)
    # the KV length is unknown without per-request data: KV costs are folded into the token cost
    vt = (b - k * c.draft_per_token_s) / (k + 1)
    vf = a - c.overhead_s - k * c.draft_fixed_s
    return c.model_copy(update={"verify_fixed_s": max(vf, 0.0), "verify_per_token_s": max(vt, 0.0)})


def fitted_scenario(scenario: Scenario, costs: LinearCosts, name: str | None = None) -> Scenario:
    """``scenario`` using the ``linear`` cost source with ``costs``."""
    over: dict[str, Any] = {
        "costs.source": "linear",
        "costs.linear": costs.model_dump(mode="json"),
    }
    if name:
        over["name"] = name
    return scenario.with_overrides(over)
