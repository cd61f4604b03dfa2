"""Measured step times, TPOTs and throughputs as anchors the calibrated cost model is fitted to.

Every measurement becomes an :class:`Anchor`: a configuration (GPU, target, drafter, TP), the
mean shape of the engine steps it averages over (decoding requests, their context, draft length,
prefill chunks per step) and the mean step time it implies:

* ``step_ms``: the step time itself;
* ``tpot_ms`` / ``itl_ms`` (mean time per output token after the first, as vLLM's benchmark
  reports it): one step emits ``acceptance_length`` tokens per request (1 without speculation),
  so a step lasts ``tpot x acceptance_length``;
* ``output_tok_per_s`` at a fixed concurrency ``C`` (closed loop; offline runs are ``C`` =
  batch): each request takes ``n = 1 + (output - 1) / acceptance_length`` steps (its prefill and
  its decodes), ``C`` requests emit ``C x output`` tokens per ``n`` steps, so a step lasts
  ``C x output / (throughput x n)``;
* ``request_tok_per_s`` (output tokens per second seen by one request, "interactivity"): a
  request's ``output`` tokens take its ``n`` steps, so a step lasts ``output / (value x n)``.

* ``e2e_s`` of a closed-loop run at concurrency ``C`` (no request rate): ``n`` steps per
  request, so a step lasts ``e2e / n``.

TTFT, and end-to-end latency at a request rate, depend on queueing and are not converted (role
``unused``, with the reason). The steps of a run at concurrency ``C`` carry ``C`` requests, of
which ``C / n`` start (prefill) in an average step and the rest decode, over a context of
``prompt + output / 2`` tokens; a TPOT averages over one request's own decode steps, which
carry it and the other ``C - 1`` (their prefills included). With a request rate instead of a
concurrency, ``C`` follows from Little's law on the measured time; a rate that puts more than
``max_num_seqs`` requests in flight is past the server's capacity (queueing, preemption) and
not used.

Readers: :func:`read_measurements` takes the public-measurements format
(``sdsim/data/calibration/public-measurements.csv``: ``source, gpu, engine, engine_version,
target, drafter, tp, dtype, dataset, prompt_tokens, output_tokens, concurrency, request_rate, k,
acceptance_length, metric, value, notes``), the batch-1 format of ``../shared/data/calibration``
(``batch, k, acceptance_length, tpot_ms, output_tok_per_s``) and a server's own step times
(``batch, context, k, step_ms`` with optional ``prefill_tokens``; GPU, models and TP from a
scenario).
"""

from __future__ import annotations

__all__ = [
    "DATASET_LENGTHS",
    "MEASUREMENT_COLUMNS",
    "METRICS",
    "STEP_COLUMNS",
    "Anchor",
    "anchors_from_report",
    "normalise_drafter",
    "normalise_gpu",
    "normalise_model",
    "read_measurements",
]

import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from sdsim.acceptance import expected_tokens_per_step
from sdsim.errors import ScenarioError
from sdsim.hardware import GPUS
from sdsim.memory import gpu_of
from sdsim.models import MODELS

MEASUREMENT_COLUMNS = (
    "source", "gpu", "engine", "engine_version", "target", "drafter", "tp", "dtype", "dataset",
    "prompt_tokens", "output_tokens", "concurrency", "request_rate", "k", "acceptance_length",
    "metric", "value", "notes",
)
METRICS = ("step_ms", "tpot_ms", "itl_ms", "ttft_ms", "e2e_s", "output_tok_per_s",
           "request_tok_per_s", "request_per_s", "throughput_speedup")
# When one run reports several metrics, the one used (the others would count the run twice):
# the most direct measure of a step first.
_PREFERENCE = ("tpot_ms", "itl_ms", "step_ms", "output_tok_per_s", "request_tok_per_s", "e2e_s",
               "request_per_s")
# max_num_seqs a server runs with when a source does not say (vLLM's default): a request rate
# that needs more requests in flight than this is past the server's capacity.
DEFAULT_MAX_NUM_SEQS = 256
# Targets filed under names outside the registry that have a registry model's shapes: Llama 3
# (8k rope) and 3.3 are Llama 3.1's architecture.
_MODEL_ALIASES = {"llama-3-8b": "llama-3.1-8b", "llama-3-70b": "llama-3.1-70b",
                  "llama-3.3-70b": "llama-3.1-70b"}
STEP_COLUMNS = ("batch", "context", "k", "step_ms")

# Mean prompt and output lengths of public benchmark datasets, for rows that do not give them:
# MT-Bench (80 questions; prompts ~70-100 tokens, answers ~200-400: ../shared/data/calibration/
# README.md), ShareGPT as vLLM's benchmark samples it (~220 input / ~200 output tokens with the
# Llama-3 tokenizer, the dataset's published statistics), and the random dataset's defaults.
DATASET_LENGTHS: dict[str, tuple[float, float]] = {
    "mt-bench": (90.0, 300.0),
    "mtbench": (90.0, 300.0),
    "sharegpt": (220.0, 200.0),
    "random": (1024.0, 128.0),
}


@dataclass(frozen=True)
class Anchor:
    """One measurement as a mean engine step (see the module docstring).

    Attributes
    ----------
    id
        Stable label (source, row).
    gpu, target, drafter, draft_model, tp
        Configuration in registry names (``drafter``: ``none``, ``eagle``, ``eagle3``, ``model``
        or ``ngram``).
    batch
        Mean decoding requests per step.
    context
        Mean KV tokens per decoding request.
    k, acceptance_length
        Draft length and tokens emitted per request per step.
    prompt_tokens, output_tokens
        Mean request lengths.
    prefill_per_step
        Mean prefill chunks (one prompt each) per step.
    metric, value
        What was measured, in its unit.
    step_s
        The mean step time it implies (NaN when it cannot be converted).
    role
        ``fit``, ``held-out`` (predicted, not fitted) or ``unused`` (``note`` says why).
    """

    id: str
    source: str
    gpu: str
    target: str
    drafter: str
    draft_model: str | None
    tp: int
    batch: float
    context: float
    k: int
    acceptance_length: float
    prompt_tokens: float
    output_tokens: float
    prefill_per_step: float
    metric: str
    value: float
    step_s: float
    role: str = "fit"
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def with_role(self, role: str, note: str = "") -> Anchor:
        """A copy with another role (and note)."""
        return replace(self, role=role, note=note or self.note)


# --------------------------------------------------------------------------- names


def normalise_gpu(name: Any) -> str | None:
    """A registry GPU name for a free-text GPU (``H100 SXM 80GB`` -> ``h100-sxm``), or ``None``."""
    s = str(name or "").strip().lower().replace("_", "-")
    if s in GPUS:
        return s
    for key, reg in (("h200", "h200"), ("h100", "h100-sxm"), ("a100", "a100-80gb"),
                     ("b200", "b200"), ("l40s", "l40s"), ("mi300x", "mi300x")):
        if key in s.replace(" ", "").replace("-", ""):
            return reg
    return None


def normalise_model(name: Any) -> str | None:
    """A registry model name for a Hugging Face id or label (``meta-llama/Llama-3.1-8B-Instruct``
    -> ``llama-3.1-8b``), or ``None``."""
    s = str(name or "").strip().lower()
    s = s.rsplit("/", 1)[-1]
    s = re.sub(r"^meta-", "", s)
    s = re.sub(r"-(instruct|chat|it|hf|base|fp8|bf16)\b", "", s)
    s = s.replace("llama3", "llama-3").replace("llama-3-1", "llama-3.1")
    s = s.replace("llama-3-2", "llama-3.2").replace("qwen-3", "qwen3")
    s = _MODEL_ALIASES.get(s, s)
    return s if s in MODELS else None


def normalise_drafter(name: Any) -> tuple[str, str | None] | None:
    """``(kind, draft model)`` for a free-text drafter (``EAGLE-3`` -> ``("eagle3", None)``,
    ``Llama-3.2-1B`` -> ``("model", "llama-3.2-1b")``, empty -> ``("none", None)``), or ``None``
    when it is a kind the cost model does not price (MTP, Medusa, trees)."""
    s = str(name if name is not None and not _isnan(name) else "").strip().lower()
    if s in ("", "none", "no", "off", "plain", "vanilla", "-"):
        return "none", None
    s = s.removeprefix("model:")
    t = s.replace("_", "").replace("-", "").replace(" ", "")
    if t in ("eagle3",) or t.startswith("eagle3"):
        return "eagle3", None
    if t.startswith("eagle") and "3" not in t:
        return "eagle", None
    if t in ("ngram", "promptlookup", "[ngram]"):
        return "ngram", None
    m = normalise_model(s)
    if m is not None:
        return "model", m
    return None


def _isnan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


def _num(v: Any) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return math.nan
    return x


# --------------------------------------------------------------------------- conversion


def _steps_per_request(output: float, al: float) -> float:
    return 1.0 + max(output - 1.0, 0.0) / al


def _anchor(
    aid: str, source: str, gpu: str, target: str, kind: str, dmodel: str | None, tp: int,
    conc: float, rate: float, k: int, al: float, prompt: float, output: float, metric: str,
    value: float, note: str = "",
) -> Anchor:
    """Convert one measurement (see the module docstring); unusable rows get role ``unused``."""
    n = _steps_per_request(output, al)
    step = math.nan
    why = ""
    if metric == "step_ms":
        step = value / 1e3
    elif metric in ("tpot_ms", "itl_ms"):
        step = value / 1e3 * al
    elif metric == "e2e_s":
        if math.isnan(conc) or not math.isnan(rate):
            why = "e2e_s is converted only for a closed-loop run (a concurrency, no request rate)"
        else:
            step = value / n
    elif metric == "output_tok_per_s":
        if math.isnan(conc):
            why = f"{metric} needs a concurrency (a closed-loop run)"
        else:
            step = conc * output / (value * n)
    elif metric == "request_tok_per_s":
        step = output / (value * n)
    elif metric == "throughput_speedup":
        why = "a ratio of two runs' throughputs, not a step time"
    elif metric == "request_per_s":
        why = "request throughput with all requests sent at once: the batch is not known"
    else:
        why = f"{metric} depends on queueing, not converted to a step time"
    if math.isnan(conc) and not math.isnan(step) and not math.isnan(rate):
        # Little's law: requests in the system = rate x (steps per request x step time)
        conc = rate * n * step
        if conc > DEFAULT_MAX_NUM_SEQS:
            why = (f"past the server's capacity: Little's law puts {conc:.0f} requests in "
                   f"flight, more than max_num_seqs ({DEFAULT_MAX_NUM_SEQS}) run")
            conc = float(DEFAULT_MAX_NUM_SEQS)
    if math.isnan(conc):
        conc = 1.0
    if metric in ("tpot_ms", "itl_ms", "step_ms"):
        # a request's own decode steps: it and the others' decodes, the others' prefills
        others = max(conc - 1.0, 0.0)
        batch = 1.0 + others * (1.0 - 1.0 / n)
        pf = others / n
    else:
        # every step of the run: a request is prefilling in one of its n steps
        batch = conc * (1.0 - 1.0 / n)
        pf = conc / n
    if not why and (math.isnan(step) or step <= 0):
        why = "no positive step time"
    a = Anchor(aid, source, gpu, target, kind, dmodel, tp, batch, prompt + output / 2.0, k, al,
               prompt, output, pf, metric, value, step, "unused" if why else "fit",
               why or note)
    return a


def read_measurements(path: str | Path, scenario: Any = None) -> list[Anchor]:
    """Anchors from a measurement CSV (public-measurements, batch-1 or server step-time format).

    Parameters
    ----------
    path
        The CSV file.
    scenario
        For the step-time format (``batch, context, k, step_ms``): the scenario that names the
        GPU, target, drafter and TP the steps were measured on.

    Raises
    ------
    ScenarioError
        Unreadable file, unknown format, missing columns, non-numeric values.
    """
    p = Path(path)
    fld = str(p)
    try:
        df = pd.read_csv(p)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise ScenarioError(fld, f"cannot read as CSV ({exc.__class__.__name__})") from None
    cols = set(df.columns)
    if {"metric", "value", "gpu", "target"} <= cols:
        return _public(df, p)
    if {"batch", "k", "tpot_ms", "acceptance_length", "gpu", "target"} <= cols:
        return _batch1(df, p)
    if set(STEP_COLUMNS) <= cols:
        if scenario is None:
            raise ScenarioError(fld, "a step-time CSV (batch, context, k, step_ms) needs a "
                                "scenario naming its GPU, target and drafter")
        return _steps(df, p, scenario)
    raise ScenarioError(
        fld,
        "unknown measurement format: need the public-measurements columns "
        f"({', '.join(MEASUREMENT_COLUMNS[:6])}, ..., metric, value) or a step-time table "
        f"({', '.join(STEP_COLUMNS)})",
    )


def _lengths(row: Any) -> tuple[float, float, str]:
    prompt, output = _num(row.get("prompt_tokens")), _num(row.get("output_tokens"))
    note = ""
    ds = str(row.get("dataset") or "").strip().lower()
    if (math.isnan(prompt) or math.isnan(output)) and ds in DATASET_LENGTHS:
        dp, do = DATASET_LENGTHS[ds]
        note = f"lengths: {ds} means ({dp:g}/{do:g})"
        prompt = dp if math.isnan(prompt) else prompt
        output = do if math.isnan(output) else output
    return prompt, output, note


def _config(row: Any, fld: str, i: int) -> tuple[str | None, str | None, Any, str]:
    gpu = normalise_gpu(row.get("gpu"))
    target = normalise_model(row.get("target"))
    dr = normalise_drafter(row.get("drafter"))
    why = ""
    if gpu is None:
        why = f"GPU {row.get('gpu')!r} is not in the registry"
    elif target is None:
        why = f"target {row.get('target')!r} is not in the registry"
    elif dr is None:
        why = f"drafter {row.get('drafter')!r} is not a kind sdsim prices"
    return gpu, target, dr, why


def _role_note(row: Any) -> tuple[str, str]:
    """``fit`` or ``held-out`` from a ``fit:`` / ``check:`` prefix of the notes (the public file's
    convention; no prefix: fit), and the notes without it."""
    notes = str(row.get("notes") or "")
    notes = "" if notes == "nan" else notes.strip()
    head, sep, rest = notes.partition(":")
    if sep and head.strip().lower() in ("fit", "check"):
        return ("fit" if head.strip().lower() == "fit" else "held-out"), rest.strip()
    return "fit", notes


def _public(df: pd.DataFrame, p: Path) -> list[Anchor]:
    out: list[Anchor] = []
    fld = str(p)
    used = _chosen_rows(df)
    for i, row in enumerate(df.to_dict("records")):
        metric = str(row.get("metric") or "").strip()
        if metric not in METRICS:
            raise ScenarioError(f"{fld}: row {i + 2}", f"metric {metric!r} is not one of "
                                f"{', '.join(METRICS)}")
        value = _num(row.get("value"))
        if math.isnan(value) or value <= 0:
            raise ScenarioError(f"{fld}: row {i + 2}", "value must be a positive number")
        gpu, target, dr, why = _config(row, fld, i)
        role, notes = _role_note(row)
        engine = str(row.get("engine") or "vllm").strip().lower()
        if not why and engine not in ("vllm", "nan", ""):
            why = f"engine {engine}: sdsim prices vLLM's step"
        if not why and used.get(i) is not None:
            why = f"the same run's {used[i]} is used"
        if not why and "derived" in notes.lower() and metric == "step_ms":
            why = "derived from another row of the same run"
        kind, dmodel = dr if dr is not None else ("none", None)
        k_raw = _num(row.get("k"))
        if kind != "none" and math.isnan(k_raw):
            why = why or "speculative row without k"
        k = 0 if kind == "none" or math.isnan(k_raw) else int(k_raw)
        al = _num(row.get("acceptance_length"))
        if k == 0:
            al = 1.0
        elif math.isnan(al) and metric in ("tpot_ms", "itl_ms", "output_tok_per_s",
                                           "request_tok_per_s"):
            why = why or "speculative row without acceptance_length"
        tp = int(_num(row.get("tp"))) if not math.isnan(_num(row.get("tp"))) else 1
        prompt, output, lnote = _lengths(row)
        if (math.isnan(prompt) or math.isnan(output)) and not why:
            why = "no prompt/output lengths (and no known dataset)"
        src = str(row.get("source") or p.name)
        a = _anchor(f"{src} #{i + 2}", src, gpu or "?", target or "?", kind, dmodel, tp,
                    _num(row.get("concurrency")), _num(row.get("request_rate")), k,
                    al if not math.isnan(al) else 1.0,
                    prompt if not math.isnan(prompt) else 0.0,
                    output if not math.isnan(output) else 1.0, metric, value,
                    "; ".join(x for x in (lnote, notes) if x))
        if a.role != "unused":
            a = a.with_role(role)
        out.append(a.with_role("unused", why) if why else a)
    return out


def _chosen_rows(df: pd.DataFrame) -> dict[int, str | None]:
    """Row index -> the metric used instead of it when another metric of the same run (same
    source, configuration, workload and load) is preferred (:data:`_PREFERENCE`), else None."""
    keys = ["source", "gpu", "engine", "target", "drafter", "tp", "dataset", "prompt_tokens",
            "output_tokens", "concurrency", "request_rate", "k"]
    have = [c for c in keys if c in df.columns]
    out: dict[int, str | None] = {}
    groups = ["|".join(str(v) for v in r) for r in df[have].itertuples(index=False)]
    for _, idx in df.groupby(pd.Series(groups, index=df.index), sort=False).groups.items():
        metrics = {i: str(df.at[i, "metric"]) for i in idx}
        ranked = sorted((m for m in metrics.values() if m in _PREFERENCE), key=_PREFERENCE.index)
        best = ranked[0] if ranked else None
        for i, m in metrics.items():
            out[int(i)] = best if best is not None and m != best and m in _PREFERENCE else None
    return out


def _batch1(df: pd.DataFrame, p: Path) -> list[Anchor]:
    """The ../shared/data/calibration format: one row per (drafter, k), a TPOT and/or an offline
    throughput at ``batch`` requests."""
    out: list[Anchor] = []
    for row in df.to_dict("records"):
        base = {**row, "concurrency": row.get("batch")}
        for metric, col in (("tpot_ms", "tpot_ms"), ("output_tok_per_s", "output_tok_per_s")):
            if math.isnan(_num(row.get(col))):
                continue
            out.extend(_public(pd.DataFrame([{**base, "metric": metric, "value": row[col],
                                              "engine_version": "", "notes": ""}]), p))
    return [replace(a, id=f"{a.source} {a.drafter} k={a.k} {a.metric}") for a in out]


def _steps(df: pd.DataFrame, p: Path, scn: Any) -> list[Anchor]:
    fld = str(p)
    for c in STEP_COLUMNS:
        v = pd.to_numeric(df[c], errors="coerce")
        if v.isna().any() or (v < 0).any():
            raise ScenarioError(fld, f"column {c!r} must hold non-negative numbers")
    if (pd.to_numeric(df["step_ms"]) <= 0).any() or (pd.to_numeric(df["batch"]) <= 0).any():
        raise ScenarioError(fld, "batch and step_ms must be > 0")
    gpu = gpu_of(scn).name
    kind = scn.drafter.kind
    out = []
    for i, row in enumerate(df.to_dict("records")):
        k = int(row["k"])
        pf = float(row.get("prefill_tokens", 0) or 0)
        out.append(Anchor(f"{p.name} #{i + 2}", p.name, gpu, scn.target,
                          kind if k > 0 else "none", scn.drafter.model, scn.server.tp,
                          float(row["batch"]), float(row["context"]), k, 1.0, pf,
                          1.0, 1.0 if pf > 0 else 0.0, "step_ms", float(row["step_ms"]),
                          float(row["step_ms"]) / 1e3))
    return out


def anchors_from_report(report: Any, scenario: Any) -> list[Anchor]:
    """Anchors from a GuideLLM / vLLM benchmark report (one per benchmark: its mean concurrency,
    mean lengths and mean TPOT), for the scenario's GPU, models, k and acceptance."""
    gpu = gpu_of(scenario).name
    k = scenario.spec.k
    al = expected_tokens_per_step(scenario.acceptance.mean_alpha, k) if k > 0 else 1.0
    out = []
    for row in report.benchmarks.to_dict("records"):
        tpot = _num(row.get("tpot_mean"))
        if math.isnan(tpot):
            continue
        conc = _num(row.get("concurrency"))
        out.append(_anchor(f"{row.get('source', 'report')} benchmark {row.get('benchmark')}",
                           str(row.get("source", "report")), gpu, scenario.target,
                           scenario.drafter.kind if k > 0 else "none", scenario.drafter.model,
                           scenario.server.tp, conc, _num(row.get("rate")), k, al,
                           _num(row.get("prompt_tokens_mean")),
                           _num(row.get("output_tokens_mean")), "tpot_ms", tpot * 1e3))
    return out
