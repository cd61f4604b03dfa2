"""Fit the analytic model and linear step costs to serving-benchmark reports (`sdsim fit`).

One or more reports, each run at one draft length ``k`` and acceptance ``alpha``, give:

* the dense model ``L = C1 / (1 - rate * C2)`` per (k, alpha) configuration
  (:func:`~sdsim.reports.calibrate.fit_dense`);
* the six stage coefficients when the reports cover several configurations
  (:func:`~sdsim.reports.calibrate.fit_sd`);
* linear step costs from the per-request timings of the scenario's own configuration
  (:func:`~sdsim.reports.calibrate.fit_linear_costs`), or derived from its (C1, C2), for a
  fitted scenario.
"""

from __future__ import annotations

__all__ = ["FORMS", "ReportFit", "check_fit_options", "fit_reports"]

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from sdsim.errors import ScenarioError
from sdsim.report_formats import Report, load_report, load_reports
from sdsim.reports.calibrate import (
    DenseFit,
    LinearCostFit,
    SDFit,
    costs_from_dense,
    fit_dense,
    fit_linear_costs,
    fit_sd,
    fitted_scenario,
    report_to_measurements,
    several_configurations,
)
from sdsim.scenario import LinearCosts, Scenario

# What `form` may be: the dense form per configuration, the SD form, or the SD form only when
# the reports cover several configurations.
FORMS = ("dense", "sd", "auto")


@dataclass
class ReportFit:
    """What :func:`fit_reports` found.

    Attributes
    ----------
    scenario
        The scenario the fit is for: its ``spec.k`` and acceptance pick the benchmarks whose
        per-request timings give the linear step costs.
    metric
        The mean latency fitted by the dense form.
    several
        Whether the reports cover several (k, alpha) configurations.
    dense
        ``(k, alpha, fit)`` per configuration with enough benchmarks (empty with ``form="sd"``).
    base_dense
        The dense fit of the scenario's configuration (else the first one), or ``None``.
    sd
        The six stage coefficients, or ``None`` when not asked for or not applicable.
    linear
        Linear step costs from per-request timings, or ``None`` (not asked for, or not possible:
        see ``linear_note``).
    linear_note
        Why linear step costs came from elsewhere; empty when they were fitted.
    costs
        The linear step costs a fitted scenario uses: ``linear``'s, else derived from
        ``base_dense``, else the scenario's own.
    """

    scenario: Scenario
    metric: str
    several: bool
    dense: list[tuple[int, float, DenseFit]]
    base_dense: DenseFit | None
    sd: SDFit | None
    linear: LinearCostFit | None
    linear_note: str
    costs: LinearCosts

    def fitted_scenario(self) -> Scenario:
        """The scenario with :attr:`costs` as its linear step costs, named ``<name>-fitted``."""
        return fitted_scenario(self.scenario, self.costs, name=f"{self.scenario.name}-fitted")

    def to_dict(self) -> dict[str, Any]:
        """Plain data (what ``sdsim fit --json`` prints): dense, per-configuration, SD and
        linear fits, and the resulting linear costs."""
        return {
            "dense": None if self.base_dense is None else _dense_dict(self.base_dense),
            "dense_by_configuration": [
                {"k": kk, "alpha": aa, **_dense_dict(d)} for kk, aa, d in self.dense
            ],
            "sd": None
            if self.sd is None
            else {**self.sd.result.to_dict(), "table": self.sd.table.to_dict(orient="records")},
            "linear": None
            if self.linear is None
            else {
                "verify_fixed_s": self.linear.verify_fixed_s,
                "verify_fixed_se": self.linear.verify_fixed_se,
                "verify_per_token_s": self.linear.verify_per_token_s,
                "verify_per_token_se": self.linear.verify_per_token_se,
                "r2": self.linear.r2,
                "requests": self.linear.requests,
                "clipped": self.linear.clipped,
            },
            "costs": self.costs.model_dump(mode="json"),
        }


def _dense_dict(d: DenseFit) -> dict[str, Any]:
    return {
        "metric": d.metric,
        "c1": d.c1,
        "c1_se": d.c1_se,
        "c2": d.c2,
        "c2_se": d.c2_se,
        "r2": d.r2,
        "saturation_rate": d.saturation_rate,
        "table": d.table.to_dict(orient="records"),
    }


def check_fit_options(
    form: str, alphas: Sequence[float] | None = None, ks: Sequence[int] | None = None
) -> None:
    """Refuse a fit form outside :data:`FORMS`, an acceptance outside [0, 1], a negative k.

    Raises
    ------
    ScenarioError
        Naming ``--form``, ``--alpha`` or ``--k``.
    """
    if form not in FORMS:
        raise ScenarioError("--form", f"must be dense, sd or auto (got {form!r})")
    for a in alphas or []:
        if not 0.0 <= a <= 1.0:
            raise ScenarioError("--alpha", f"must lie in [0, 1] (got {a})")
    for kk in ks or []:
        if kk < 0:
            raise ScenarioError("--k", f"must be >= 0 (got {kk})")


def fit_reports(
    reports: Sequence[str | Path],
    scenario: Scenario,
    ks: Sequence[int] | None = None,
    alphas: Sequence[float] | None = None,
    metric: str = "e2e_mean",
    form: str = "auto",
    linear: bool = True,
) -> ReportFit:
    """Fit the analytic model (and linear step costs) to one or more reports.

    Parameters
    ----------
    reports
        GuideLLM or vLLM report files; one per configuration when they differ.
    scenario
        Server, costs and the configuration (``spec.k``, acceptance) the reports ran with unless
        ``ks`` / ``alphas`` say otherwise.
    ks, alphas
        Draft length and acceptance of each report (one per report), when they differ between
        reports.
    metric
        Mean latency column the dense form fits (``e2e_mean``, ``ttft_mean``, ...).
    form
        ``dense``, ``sd`` or ``auto`` (the dense form per configuration, and the SD form when
        the reports cover several).
    linear
        Also fit linear step costs from per-request timings.

    Returns
    -------
    ReportFit

    Raises
    ------
    ScenarioError
        Unreadable reports, an unknown metric, options that do not match the reports, or too few
        benchmarks to fit.
    """
    check_fit_options(form, alphas, ks)
    for values, option in ((ks, "--k"), (alphas, "--alpha")):
        if values is not None and len(values) != len(reports):
            raise ScenarioError(
                option, f"give one {option} per report ({len(reports)}), got {len(values)}"
            )
    rep = load_reports(reports)
    meas = report_to_measurements(rep, scenario=scenario)
    if metric not in meas.columns or metric == "k" or metric == "alpha":
        raise ScenarioError("--metric", f"unknown measurement {metric!r}")
    if (ks is not None and len(set(ks)) > 1) or (alphas is not None and len(set(alphas)) > 1):
        counts = [len(load_report(p).benchmarks) for p in reports]
        if ks is not None:
            meas["k"] = np.repeat(np.asarray(ks, dtype=np.int64), counts)
        if alphas is not None:
            meas["alpha"] = np.repeat(np.asarray(alphas, dtype=np.float64), counts)
    several = several_configurations(meas)
    # the dense form: one (C1, C2) per configuration
    dense_fits: list[tuple[int, float, DenseFit]] = []
    if form != "sd":
        for key, grp in meas.groupby(["k", "alpha"], sort=False, dropna=False):
            kk, aa = cast(tuple[Any, Any], key)
            try:
                dense_fits.append((int(kk), float(aa), fit_dense(grp, metric=metric)))
            except ScenarioError:
                if not several:
                    raise
    sd = None
    if form == "sd" or (form == "auto" and several):
        if metric != "e2e_mean":
            raise ScenarioError("--metric", "the SD form models the mean e2e latency only")
        sd = fit_sd(meas)
    if not dense_fits and sd is None:
        raise ScenarioError("report", "no configuration has >= 2 benchmarks to fit C1, C2")
    # linear step costs from the per-request timings of the scenario's own configuration
    mine = (meas["k"] == scenario.spec.k) & np.isclose(
        meas["alpha"], scenario.acceptance.mean_alpha
    )
    own = rep
    if several:
        ids = set(meas.loc[mine, "benchmark"])
        own = Report(
            requests=rep.requests[rep.requests["benchmark"].isin(ids)],
            benchmarks=rep.benchmarks[rep.benchmarks["benchmark"].isin(ids)],
            source=rep.source,
            path=rep.path,
        )
    lin = None
    lin_note = ""
    if linear:
        try:
            lin = fit_linear_costs(own, scenario)
        except ScenarioError as exc:
            lin_note = exc.message
    first = dense_fits[0][2] if dense_fits else None
    base_dense = next((d for kk, _, d in dense_fits if kk == scenario.spec.k), first)
    if lin is not None:
        costs = lin.costs
    elif base_dense is not None:
        costs = costs_from_dense(base_dense, scenario, float(meas["output_tokens"].mean()))
    else:
        costs = scenario.costs.linear
        lin_note = lin_note or "no dense fit for the scenario's configuration"
    return ReportFit(
        scenario=scenario,
        metric=metric,
        several=several,
        dense=dense_fits,
        base_dense=base_dense,
        sd=sd,
        linear=lin,
        linear_note=lin_note,
        costs=costs,
    )
