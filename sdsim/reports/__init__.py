"""Serving-benchmark reports: import (GuideLLM, vLLM), calibration, replay and comparison.

* :func:`load_report` reads a GuideLLM (JSON/YAML, schema version 2) or vLLM ``bench serve``
  report into :class:`Report` (a requests frame and a benchmarks frame, seconds throughout).
* :func:`report_to_measurements`, :func:`fit_dense`, :func:`fit_sd` (both through
  :func:`sdsim.fit_measurements`) and :func:`fit_linear_costs` calibrate the analytic model and
  the ``linear`` step-cost model; :func:`fit_reports` does all of it for ``sdsim fit``.
* ``workload.arrival: replay`` (:func:`replay_frame`) and :func:`compare_report` replay a report's
  benchmarks through the simulator and compare measured, simulated and analytic latencies.
"""

from sdsim.report_formats import Report, load_report, load_reports, parse_report
from sdsim.reports.calibrate import (
    DenseFit,
    LinearCostFit,
    SDFit,
    analytic_table,
    costs_from_dense,
    fit_dense,
    fit_linear_costs,
    fit_sd,
    fitted_scenario,
    report_to_measurements,
    several_configurations,
)
from sdsim.reports.compare import Comparison, compare_report, comparison_figure
from sdsim.reports.fit import ReportFit, check_fit_options, fit_reports
from sdsim.reports.replay import replay_scenario
from sdsim.reports.synthetic import simulated_report
from sdsim.workload import replay_frame

__all__ = [
    "Comparison",
    "DenseFit",
    "LinearCostFit",
    "Report",
    "ReportFit",
    "SDFit",
    "analytic_table",
    "check_fit_options",
    "compare_report",
    "comparison_figure",
    "costs_from_dense",
    "fit_dense",
    "fit_linear_costs",
    "fit_reports",
    "fit_sd",
    "fitted_scenario",
    "load_report",
    "load_reports",
    "parse_report",
    "replay_frame",
    "replay_scenario",
    "report_to_measurements",
    "several_configurations",
    "simulated_report",
]
