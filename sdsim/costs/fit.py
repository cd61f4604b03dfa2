"""Fit a calibration to measurements: kernels first, then the engine's host terms.

:func:`collect_data` gathers what a list of paths holds (directories are searched): Vidur
``mlp.csv`` kernel profiles and ``all_reduce.csv`` collective timings, profile bundles from
``sdsim bench``, measurement CSVs (:mod:`sdsim.costs.anchors`) and GuideLLM / vLLM benchmark
reports (these two need a scenario naming the server's GPU and models).

:func:`fit_calibration` then

1. fits each GPU's GEMM curve to its GEMM timings and its all-reduce terms to its collective
   timings (:mod:`sdsim.costs.kernelfit`);
2. prices every anchor with the calibrated model and fits the requested engine terms by
   non-negative least squares on the relative step-time error of the ``fit`` anchors. The model
   is linear in these terms (each is a host cost times a count the step shape fixes: steps,
   requests, logits rows, draft passes, layers), so each term's column is the model's own
   response to it (the step time with the term at one unit minus with it at zero), never a
   second formula;
3. refuses terms the data cannot identify, naming them: a term no fitted anchor depends on, or
   one whose column the other terms' columns reproduce (e.g. per-request and per-row costs when
   every anchor has the same draft length), and a fit with no more anchors than terms.

Anchors of the ``held_out`` sources are priced but not fitted: their errors say how the model does
on data it was not fitted to.
"""

from __future__ import annotations

__all__ = [
    "ENGINE_TERMS",
    "CalibrationData",
    "CalibrationFit",
    "anchor_of",
    "collect_data",
    "fit_calibration",
    "predict_anchors",
    "set_term",
]

import math
import shlex
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy.optimize import nnls

from sdsim.costs.anchors import Anchor, anchors_from_report, read_measurements
from sdsim.costs.build import build_calibrated_cost
from sdsim.costs.calibration import AnchorResidual, Calibration, FitRecord
from sdsim.costs.kernelfit import (
    fit_allreduce,
    fit_gemm,
    gemm_rows_from_bundle,
    gemm_rows_from_vidur,
)
from sdsim.costs.profile import read_bundle
from sdsim.errors import ScenarioError
from sdsim.hardware import GPUS, GPUSpec
from sdsim.memory import gpu_of
from sdsim.report_formats import load_report
from sdsim.scenario import Scenario

# Engine terms a fit may estimate (linear in the step time); the others (graph sizes, eager
# launch floor, attention efficiencies) are read from the base calibration.
ENGINE_TERMS = (
    "step_s",
    "per_seq_s",
    "per_token_s",
    "spec_step_s.eagle",
    "spec_step_s.eagle3",
    "spec_step_s.model",
    "spec_step_s.ngram",
    "draft_pass_s.eagle",
    "draft_pass_s.eagle3",
    "draft_pass_s.model",
    "piecewise_layer_s",
    "ngram_context_token_s",
)

# Vidur network topologies whose all-reduce timings look like the NVLink systems they name, and
# the registry GPU they calibrate (the a100 tables run at ~5% of NVLink bandwidth: not used).
VIDUR_NETWORKS = {"h100_dgx": "h100-sxm"}


@dataclass
class CalibrationData:
    """What :func:`collect_data` found: anchors, GEMM timings, all-reduce files, the files, and
    the spec sheets of GPUs the registry does not know."""

    anchors: list[Anchor] = field(default_factory=list)
    gemm_rows: pd.DataFrame = field(default_factory=pd.DataFrame)
    allreduce: dict[str, Path] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    # spec sheets of GPUs outside the registry (a scenario's inline hardware)
    gpu_specs: dict[str, GPUSpec] = field(default_factory=dict)


def collect_data(paths: Sequence[str | Path], scenario: Any = None) -> CalibrationData:
    """Gather calibration data from files and directories (searched recursively).

    Parameters
    ----------
    paths
        Files or directories: Vidur trees (``profiling/compute/*/*/*/mlp.csv``,
        ``profiling/network/*/all_reduce.csv``), measurement CSVs, profile bundles
        (``meta.yaml``), benchmark reports (``.json``).
    scenario
        The server the step-time CSVs, bundles and reports were measured on.

    Raises
    ------
    ScenarioError
        A path that does not exist, a file in no known format (named explicitly), a report or
        step-time CSV without a scenario.
    """
    data = CalibrationData()
    gemm: list[pd.DataFrame] = []
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            raise ScenarioError(str(raw), "no such file or directory")
        files = sorted(p.rglob("*")) if p.is_dir() else [p]
        explicit = not p.is_dir()
        for f in files:
            if f.name == "mlp.csv":
                rows = gemm_rows_from_vidur(f)
                if len(rows):
                    gemm.append(rows)
                    data.files.append(str(f))
            elif f.name == "all_reduce.csv":
                gpu = VIDUR_NETWORKS.get(f.parent.name)
                if gpu is not None:
                    data.allreduce[gpu] = f
                    data.files.append(str(f))
            elif f.name == "meta.yaml":
                if scenario is None:
                    raise ScenarioError(str(f), "a profile bundle needs --scenario (its GPU)")
                spec = gpu_of(scenario)
                gemm.append(gemm_rows_from_bundle(read_bundle(f.parent), spec.name))
                data.gpu_specs.setdefault(spec.name, spec)
                data.files.append(str(f.parent))
            elif f.suffix == ".json" and explicit:
                if scenario is None:
                    raise ScenarioError(str(f), "a benchmark report needs --scenario (its server)")
                data.anchors.extend(anchors_from_report(load_report(f), scenario))
                data.files.append(str(f))
            elif f.suffix == ".csv":
                try:
                    got = read_measurements(f, scenario)
                except ScenarioError:
                    if explicit:
                        raise
                    continue  # a directory's other tables (traces, Vidur's stats)
                data.anchors.extend(got)
                data.files.append(str(f))
            elif explicit:
                raise ScenarioError(str(f), "not a measurement CSV, Vidur profile, profile "
                                    "bundle or benchmark report")
    if gemm:
        data.gemm_rows = pd.concat(gemm, ignore_index=True)
    return data


# --------------------------------------------------------------------------- terms


def set_term(cal: Calibration, term: str, value: float) -> Calibration:
    """A copy of ``cal`` with one engine term (``per_seq_s``, ``draft_pass_s.eagle3``) set."""
    name, _, kind = term.partition(".")
    if name not in type(cal.engine).model_fields:
        raise ScenarioError("--terms",
                            f"unknown term {term!r}; fittable: {', '.join(ENGINE_TERMS)}")
    if kind:
        sub = getattr(cal.engine, name).model_dump()
        if kind not in sub:
            raise ScenarioError("--terms", f"unknown drafter kind in {term!r}")
        sub[kind] = value
        return cal.with_engine(**{name: sub})
    return cal.with_engine(**{name: value})


def get_term(cal: Calibration, term: str) -> float:
    """The value of one engine term."""
    name, _, kind = term.partition(".")
    v = getattr(cal.engine, name)
    return float(v.of(kind) if kind else v)


# --------------------------------------------------------------------------- prediction


def anchor_of(r: AnchorResidual) -> Anchor:
    """The anchor a fit record's row was priced as (its configuration and mean step shape)."""
    kind, _, dmodel = r.drafter.partition(":")
    return Anchor(r.id, r.source, r.gpu, r.target, kind, dmodel or None, r.tp, r.batch,
                  r.context, r.k, 1.0, r.prompt_tokens, 1.0, r.prefill_per_step, r.metric,
                  r.measured_ms, r.measured_ms / 1e3, r.role, r.note)


def _scenario(a: Anchor) -> Any:
    if a.drafter == "none":
        drafter: dict[str, Any] = {"kind": "eagle"}
    elif a.drafter == "model":
        drafter = {"kind": "model", "model": a.draft_model}
    else:
        drafter = {"kind": a.drafter}
    return Scenario.model_validate({
        "hardware": a.gpu, "target": a.target, "drafter": drafter,
        "spec": {"k": a.k}, "server": {"tp": a.tp},
    })


def _shapes(a: Anchor) -> tuple[list[npt.NDArray[np.int64]], npt.NDArray[np.float64]]:
    """The mixture of step shapes whose mean is the anchor's mean step: batch and prefill chunks
    per step interpolated between their neighbouring integers."""
    bl = math.floor(a.batch)
    fb = a.batch - bl
    jl = math.floor(a.prefill_per_step)
    fj = a.prefill_per_step - jl
    rows = []
    for b, wb in ((bl, 1.0 - fb), (bl + 1, fb)):
        for j, wj in ((jl, 1.0 - fj), (jl + 1, fj)):
            w = wb * wj
            if w > 0:
                ctx = round(b * a.context)
                pf = round(j * a.prompt_tokens)
                rows.append((b, ctx, a.k, pf, pf, j if pf else 0, w))
    arr = np.asarray(rows, dtype=np.float64)
    return [arr[:, i].astype(np.int64) for i in range(6)], arr[:, 6]


def predict_anchors(anchors: Sequence[Anchor], cal: Calibration) -> npt.NDArray[np.float64]:
    """Mean step time (seconds) the calibrated model gives for each anchor (NaN for unused)."""
    out = np.full(len(anchors), np.nan)
    groups: dict[tuple[Any, ...], list[int]] = defaultdict(list)
    for i, a in enumerate(anchors):
        if a.role != "unused":
            groups[(a.gpu, a.target, a.drafter, a.draft_model, a.tp, a.k)].append(i)
    for idx in groups.values():
        model = build_calibrated_cost(_scenario(anchors[idx[0]]), cal)
        for i in idx:
            cols, w = _shapes(anchors[i])
            st = model.steps(*cols)
            out[i] = float(np.dot(st.total, w))
    return out


# --------------------------------------------------------------------------- the fit


@dataclass
class CalibrationFit:
    """The outcome of :func:`fit_calibration`.

    Attributes
    ----------
    calibration
        The fitted calibration (base terms, fitted kernel and engine terms, the fit record).
    anchors
        One row per anchor: configuration, measured and predicted step (ms), error, role, note.
    terms
        Fitted engine term -> value (seconds).
    kernels
        GPU -> kernel-fit report (rows, errors by token range).
    fit_rms_error, held_out_rms_error
        Root-mean-square relative error on the fitted and on the held-out anchors.
    """

    calibration: Calibration
    anchors: pd.DataFrame
    terms: dict[str, float]
    kernels: dict[str, dict[str, Any]]
    fit_rms_error: float
    held_out_rms_error: float

    def table(self, roles: Sequence[str] = ("fit", "held-out")) -> str:
        """The anchors as a Markdown table (measured / predicted / error)."""
        df = self.anchors[self.anchors["role"].isin(roles)]
        lines = ["| anchor | GPU | target | drafter | batch | k | metric | measured ms | "
                 "predicted ms | error | role |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in df.to_dict("records"):
            lines.append(
                f"| {r['id']} | {r['gpu']} | {r['target']} | {r['drafter']} | {r['batch']:.3g} | "
                f"{r['k']} | {r['metric']} | {r['measured_ms']:.2f} | {r['predicted_ms']:.2f} | "
                f"{r['error']:+.1%} | {r['role']} |"
            )
        return "\n".join(lines)


def _rms(x: npt.NDArray[np.float64]) -> float:
    return float(np.sqrt(np.mean(x**2))) if x.size else math.nan


def _identify(a: npt.NDArray[np.float64], terms: list[str], n: int) -> None:
    """Refuse a design matrix that does not identify every term (see the module docstring)."""
    if n == 0:
        raise ScenarioError("--terms", f"0 fitted anchors for {len(terms)} terms")
    norms = np.linalg.norm(a, axis=0)
    for j, t in enumerate(terms):
        if norms[j] <= 0:
            raise ScenarioError(t, "no fitted anchor depends on this term (e.g. no rows of its "
                                "drafter kind); drop it from --terms to keep its base value")
    u = a / norms
    resid = []
    coefs = []
    for j in range(len(terms)):
        others = np.delete(u, j, axis=1)
        if others.shape[1] == 0:
            resid.append(1.0)
            coefs.append(np.zeros(0))
            continue
        coef, *_ = np.linalg.lstsq(others, u[:, j], rcond=None)
        resid.append(float(np.linalg.norm(u[:, j] - others @ coef)))
        coefs.append(coef)
    # the most redundant term (ties: the later one, the least basic)
    j = min(range(len(terms)), key=lambda i: (resid[i], -i))
    if resid[j] < 1e-3:
        others_t = [t for i, t in enumerate(terms) if i != j]
        with_ = [others_t[i] for i in np.argsort(-np.abs(coefs[j]))[:3] if abs(coefs[j][i]) > 1e-6]
        raise ScenarioError(
            terms[j],
            "the data cannot identify this term: its effect on every fitted anchor is a "
            f"combination of {', '.join(with_)} (measure other batch sizes, draft lengths or "
            "contexts, or drop it from --terms to keep its base value)",
        )
    if n <= len(terms):
        raise ScenarioError("--terms", f"{n} fitted anchors for {len(terms)} terms "
                            f"({', '.join(terms)}); need more anchors than terms")


def fit_calibration(
    data: CalibrationData,
    base: Calibration,
    terms: Sequence[str] = (),
    held_out: Sequence[str] = (),
    command: str | None = None,
    description: str | None = None,
) -> CalibrationFit:
    """Fit kernel terms and the requested engine ``terms`` to ``data``, starting from ``base``.

    Parameters
    ----------
    data
        From :func:`collect_data`.
    base
        Values of every term not fitted (and their sources).
    terms
        Engine terms to fit (names in :data:`ENGINE_TERMS`); empty: kernels only.
    held_out
        Sources (the measurement CSVs' ``source`` column) whose anchors are predicted, not
        fitted.
    command
        The command line to record (default: this process's).

    Raises
    ------
    ScenarioError
        Unknown or unidentifiable terms (named), too few anchors.
    """
    terms = list(dict.fromkeys(terms))
    for t in terms:
        if t not in ENGINE_TERMS:
            raise ScenarioError("--terms",
                                f"unknown term {t!r}; fittable: {', '.join(ENGINE_TERMS)}")
    gpus = {k: v.model_dump(exclude_none=True) for k, v in base.gpus.items()}
    sources = dict(base.sources)
    kernels: dict[str, dict[str, Any]] = {}
    if len(data.gemm_rows):
        for gpu, rows in data.gemm_rows.groupby("gpu"):
            g = str(gpu)
            terms_g, rep = fit_gemm(rows, data.gpu_specs.get(g) or GPUS[g])
            gpus.setdefault(g, {})["gemm"] = terms_g.model_dump()
            kernels[g] = {"gemm_" + k: v for k, v in rep.items() if isinstance(v, int | float)}
            sources[f"gpus.{g}.gemm"] = (
                f"fit: {rep['layers']} layer timings ({rep['rows']} GEMMs) of "
                f"{len(rep['sources'])} models in Vidur's mlp.csv; rms log error "
                f"{rep['rms_log_layer']:.3f} per layer, {rep['rms_log_op']:.3f} per GEMM"
            )
    for gpu, path in data.allreduce.items():
        terms_a, rep = fit_allreduce(path, GPUS[gpu])
        gpus.setdefault(gpu, {})["allreduce"] = terms_a.model_dump()
        kernels.setdefault(gpu, {}).update({"allreduce_messages": rep["messages"],
                                            "allreduce_median_abs_rel_error":
                                            rep["median_abs_rel_error"]})
        sources[f"gpus.{gpu}.allreduce"] = (
            f"fit: {rep['messages']} messages <= 16 MB at worlds {rep['worlds']} in Vidur's "
            f"{Path(path).parent.name}/all_reduce.csv (least absolute deviations; median error "
            f"{rep['median_abs_rel_error']:.0%})"
        )
    fitted_gpus = sorted(g for g in kernels if "gemm_rows" in kernels[g])
    if fitted_gpus:
        # GPUs without kernel data take the mean curve of those with
        gs = [gpus[g]["gemm"] for g in fitted_gpus]
        gpus["default"]["gemm"] = {k: float(f"{np.mean([g[k] for g in gs]):.4g}") for k in gs[0]}
        sources["gpus.default.gemm"] = f"mean of the fitted curves of {', '.join(fitted_gpus)}"
    if data.allreduce:
        ars = [gpus[g]["allreduce"] for g in sorted(data.allreduce)]
        gpus["default"]["allreduce"] = {k: float(f"{np.mean([a[k] for a in ars]):.4g}")
                                        for k in ars[0]}
        sources["gpus.default.allreduce"] = f"as {', '.join(sorted(data.allreduce))}"
    cal = Calibration.model_validate({**base.model_dump(exclude_none=True), "gpus": gpus,
                                      "sources": sources, "fit": None})
    held = set(held_out)
    anchors = [a.with_role("held-out") if a.role == "fit" and a.source in held else a
               for a in data.anchors]
    fitted: dict[str, float] = {}
    if terms:
        idx = [i for i, a in enumerate(anchors) if a.role == "fit"]
        fit_a = [anchors[i] for i in idx]
        zero = cal
        for t in terms:
            zero = set_term(zero, t, 0.0)
        g0 = predict_anchors(fit_a, zero)
        y = np.array([a.step_s for a in fit_a])
        cols = []
        unit = 1e-3
        for t in terms:
            cols.append((predict_anchors(fit_a, set_term(zero, t, unit)) - g0) / unit)
        a_mat = np.column_stack(cols) / y[:, None]
        _identify(a_mat, terms, len(fit_a))
        theta, _ = nnls(a_mat, (y - g0) / y)
        for t, v in zip(terms, theta, strict=True):
            v = float(f"{v:.4g}")
            fitted[t] = v
            cal = set_term(cal, t, v)
            cal = cal.model_copy(update={"sources": {**cal.sources, f"engine.{t}": (
                f"fit: {len(fit_a)} anchors ({', '.join(sorted({a.source for a in fit_a}))})")}})
    pred = predict_anchors(anchors, cal)
    table: list[dict[str, Any]] = []
    for a, p in zip(anchors, pred, strict=True):
        meas = a.step_s * 1e3
        table.append({
            "id": a.id, "source": a.source, "gpu": a.gpu, "target": a.target,
            "drafter": a.drafter if a.drafter != "model" else f"model:{a.draft_model}",
            "tp": a.tp, "batch": a.batch, "context": a.context, "k": a.k,
            "prompt_tokens": a.prompt_tokens, "prefill_per_step": a.prefill_per_step,
            "metric": a.metric, "measured_ms": meas, "predicted_ms": p * 1e3,
            "error": (p * 1e3 / meas - 1.0) if a.role != "unused" else math.nan,
            "role": a.role, "note": a.note,
        })
    df = pd.DataFrame(table)
    err = df["error"].to_numpy(dtype=np.float64)
    fit_rms = _rms(err[(df["role"] == "fit").to_numpy()])
    held_rms = _rms(err[(df["role"] == "held-out").to_numpy()])
    record = FitRecord(
        command=command if command is not None else shlex.join(["sdsim", *sys.argv[1:]]),
        data=list(data.files),
        terms=list(terms),
        held_out=sorted(held),
        fit_rms_error=round(fit_rms, 6) if not math.isnan(fit_rms) else 0.0,
        held_out_rms_error=None if math.isnan(held_rms) else round(held_rms, 6),
        anchors=[AnchorResidual(
            id=r["id"], source=r["source"], gpu=r["gpu"], target=r["target"],
            drafter=r["drafter"], tp=r["tp"], batch=round(r["batch"], 6),
            context=round(r["context"], 3), k=r["k"], prompt_tokens=r["prompt_tokens"],
            prefill_per_step=round(r["prefill_per_step"], 6), metric=r["metric"],
            measured_ms=round(r["measured_ms"], 6),
            predicted_ms=round(r["predicted_ms"], 6) if r["role"] != "unused" else 0.0,
            error=round(r["error"], 6) if r["role"] != "unused" else 0.0,
            role=r["role"], note=r["note"])
            for r in table if r["role"] != "unused"],
        kernels={g: {k: float(v) for k, v in rep.items()} for g, rep in kernels.items()},
    )
    cal = cal.model_copy(update={"fit": record, "description": description or cal.description})
    return CalibrationFit(cal, df, fitted, kernels, fit_rms, held_rms)

