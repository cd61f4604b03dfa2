"""Reading serving-benchmark reports (GuideLLM, vLLM ``bench serve``) into tidy DataFrames.

Two frames come out of every report:

* **requests**, one row per successful request: ``benchmark`` (0-based index), ``benchmark_id``,
  ``rate`` (the benchmark's achieved request rate, req/s), ``arrival`` (when the load generator
  scheduled the request), ``start`` (when it was sent, i.e. when the server saw it),
  ``first_token``, ``last_token``, ``end`` (all seconds, relative to the benchmark's earliest
  ``arrival``/``start``), ``prompt_tokens``, ``output_tokens``, ``ttft``
  (``first_token - start``), ``tpot`` (the mean decode gap
  ``(last_token - first_token) / (output_tokens - 1)``, vLLM's TPOT and GuideLLM's
  ``inter_token_latency_ms``) and ``e2e`` (``end - start``), all in seconds.
* **benchmarks**, one row per benchmark (strategy run): strategy, target and achieved rate, mean
  concurrency, duration, mean lengths, and mean/p50/p90/p99 of ``ttft``, ``tpot`` and ``e2e``
  (seconds), taken from the report's own aggregates where it has them.

Units and definitions, field by field:

* GuideLLM (report schema ``metadata.version: 2``): per-request epoch-second timestamps in
  ``info.timings`` (``targeted_start``, ``request_start``, ``first_token_iteration``,
  ``last_token_iteration``, ``request_end``); ``time_to_first_token_ms`` and
  ``inter_token_latency_ms`` in milliseconds; ``request_latency`` in seconds.
  GuideLLM's ``time_per_output_token_ms`` divides ``last_token - start`` by all output tokens, so it
  *includes* the TTFT; it is kept as ``tpot_incl_ttft_mean`` in the benchmark frame only, never as
  ``tpot``.
* vLLM ``bench serve`` result JSON: flat aggregates in milliseconds (``mean_ttft_ms``,
  ``median_tpot_ms``, ``p99_e2el_ms``, ...), ``request_throughput`` in req/s and, when saved with
  details, per-request arrays: ``input_lens``, ``output_lens``, ``ttfts`` (s), ``itls`` (one
  list of chunk gaps per request, s), ``errors`` and, in recent versions, ``start_times`` (a
  monotonic clock, s). Without ``start_times`` the per-request latencies are known but not when
  requests were sent, so such a benchmark cannot be replayed.
"""

from __future__ import annotations

__all__ = [
    "BENCHMARK_COLUMNS",
    "REQUEST_COLUMNS",
    "Report",
    "load_report",
    "load_reports",
    "parse_report",
]

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sdsim.errors import ScenarioError
from sdsim.inputs import load_json, load_yaml
from sdsim.report_schema import (
    GuideLLMMetric,
    GuideLLMMetrics,
    GuideLLMReport,
    GuideLLMRequest,
    GuideLLMStat,
    VllmResult,
    validate_report,
)

REQUEST_COLUMNS = (
    "benchmark",
    "benchmark_id",
    "rate",
    "arrival",
    "start",
    "first_token",
    "last_token",
    "end",
    "prompt_tokens",
    "output_tokens",
    "ttft",
    "tpot",
    "e2e",
)

_STATS = ("mean", "p50", "p90", "p99")
_METRICS = ("ttft", "tpot", "e2e")

BENCHMARK_COLUMNS = (
    "benchmark",
    "benchmark_id",
    "source",
    "strategy",
    "target_rate",
    "rate",
    "concurrency",
    "requests",
    "duration",
    "prompt_tokens_mean",
    "output_tokens_mean",
    *(f"{m}_{s}" for m in _METRICS for s in _STATS),
    "tpot_incl_ttft_mean",
)

_NAN = float("nan")


@dataclass(frozen=True)
class Report:
    """A serving-benchmark report as two tidy frames.

    Attributes
    ----------
    requests
        One row per successful request (:data:`REQUEST_COLUMNS`).
    benchmarks
        One row per benchmark (:data:`BENCHMARK_COLUMNS`).
    source
        ``"guidellm"``, ``"vllm"`` or ``"mixed"``.
    path
        Where it was read from (the first file when several were combined).
    """

    requests: pd.DataFrame
    benchmarks: pd.DataFrame
    source: str
    path: str | None = None

    def resolve(self, which: int | str | None, field: str = "benchmark") -> int:
        """The 0-based index of a benchmark given by index, ``benchmark_id`` or ``None`` (first).

        Raises
        ------
        ScenarioError
            No such benchmark.
        """
        n = len(self.benchmarks)
        if which is None:
            return 0
        if isinstance(which, int | np.integer) and not isinstance(which, bool):
            if 0 <= int(which) < n:
                return int(which)
            raise ScenarioError(field, f"benchmark index {which} out of range (report has {n})")
        ids = [str(v) for v in self.benchmarks["benchmark_id"]]
        if str(which) in ids:
            return ids.index(str(which))
        if str(which).isdigit() and int(str(which)) < n:
            return int(str(which))
        raise ScenarioError(field, f"no benchmark {which!r}; known ids: {ids}")

    def benchmark_requests(self, which: int | str | None) -> pd.DataFrame:
        """The request rows of one benchmark, in order of ``start``."""
        i = self.resolve(which)
        df = self.requests[self.requests["benchmark"] == i]
        return df.sort_values("start", kind="stable").reset_index(drop=True)


# --------------------------------------------------------------------------- helpers


def _num(v: Any) -> float:
    """A float from a JSON value; None/strings that are not numbers give NaN."""
    if v is None or isinstance(v, bool):
        return _NAN
    try:
        return float(v)
    except (TypeError, ValueError):
        return _NAN


def _stats_from(x: np.ndarray, prefix: str, out: dict[str, Any]) -> None:
    x = x[np.isfinite(x)]
    if x.size == 0:
        for s in _STATS:
            out.setdefault(f"{prefix}_{s}", _NAN)
        return
    p50, p90, p99 = np.percentile(x, [50, 90, 99])
    for s, v in zip(_STATS, (float(x.mean()), p50, p90, p99), strict=True):
        if not math.isfinite(_num(out.get(f"{prefix}_{s}"))):
            out[f"{prefix}_{s}"] = float(v)


def _empty_requests() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="float64") for c in REQUEST_COLUMNS})


def _finish_frames(
    rows: list[dict[str, Any]], benches: list[dict[str, Any]], source: str, path: str | None
) -> Report:
    req = pd.DataFrame(rows, columns=list(REQUEST_COLUMNS)) if rows else _empty_requests()
    req["benchmark"] = req["benchmark"].astype(np.int64)
    req["benchmark_id"] = req["benchmark_id"].astype(str)
    for c in ("prompt_tokens", "output_tokens"):
        req[c] = req[c].astype(np.int64)
    for c in REQUEST_COLUMNS:
        if c not in ("benchmark", "benchmark_id", "prompt_tokens", "output_tokens"):
            req[c] = req[c].astype(np.float64)
    # fill what the report's aggregates lack from the per-request rows, and the rate column
    for b in benches:
        sub = req[req["benchmark"] == b["benchmark"]]
        for m in _METRICS:
            _stats_from(sub[m].to_numpy(dtype=np.float64), m, b)
        if not math.isfinite(_num(b.get("prompt_tokens_mean"))) and len(sub):
            b["prompt_tokens_mean"] = float(sub["prompt_tokens"].mean())
        if not math.isfinite(_num(b.get("output_tokens_mean"))) and len(sub):
            b["output_tokens_mean"] = float(sub["output_tokens"].mean())
        if not math.isfinite(_num(b.get("concurrency"))):
            # Little's law: mean number in flight = throughput x mean latency
            b["concurrency"] = _num(b.get("rate")) * _num(b.get("e2e_mean"))
        if not b.get("requests"):
            b["requests"] = len(sub)
        b["source"] = source
    bench = pd.DataFrame(benches, columns=list(BENCHMARK_COLUMNS))
    bench["benchmark"] = bench["benchmark"].astype(np.int64)
    bench["requests"] = bench["requests"].astype(np.int64)
    bench["benchmark_id"] = bench["benchmark_id"].astype(str)
    rate_of = dict(zip(bench["benchmark"], bench["rate"], strict=True))
    req["rate"] = req["benchmark"].map(rate_of).astype(np.float64)
    req = req.sort_values(["benchmark", "start"], kind="stable").reset_index(drop=True)
    return Report(requests=req, benchmarks=bench, source=source, path=path)


# --------------------------------------------------------------------------- GuideLLM


def _opt(v: float | None, scale: float = 1.0) -> float:
    return _NAN if v is None else float(v) * scale


def _stat(metric: GuideLLMMetric | None) -> GuideLLMStat:
    if metric is None or metric.successful is None:
        return GuideLLMStat()
    return metric.successful


def _guidellm_metric(metric: GuideLLMMetric | None, scale: float, prefix: str) -> dict[str, Any]:
    st = _stat(metric)
    if metric is None or metric.successful is None:
        return {}
    pct = st.percentiles or {}
    return {
        f"{prefix}_mean": _opt(st.mean, scale),
        f"{prefix}_p50": _opt(pct.get("p50", st.median), scale),
        f"{prefix}_p90": _opt(pct.get("p90"), scale),
        f"{prefix}_p99": _opt(pct.get("p99"), scale),
    }


def _guidellm_request(i: int, bid: str, r: GuideLLMRequest) -> dict[str, Any]:
    tm = r.timings
    start = _opt(tm.request_start if tm.request_start is not None else r.request_start_time)
    sched = _opt(tm.targeted_start)
    first = _opt(tm.first_token_iteration)
    last = _opt(tm.last_token_iteration)
    end = _opt(tm.request_end if tm.request_end is not None else r.request_end_time)
    out_tok = r.output_tokens or 0
    ttft = first - start
    if not math.isfinite(ttft):
        ttft = _opt(r.time_to_first_token_ms, 1e-3)
    e2e = end - start
    if not math.isfinite(e2e):
        e2e = _opt(r.request_latency)
    if out_tok > 1 and math.isfinite(last - first):
        tpot = (last - first) / (out_tok - 1)
    else:
        tpot = _opt(r.inter_token_latency_ms, 1e-3) if out_tok > 1 else _NAN
    return {
        "benchmark": i,
        "benchmark_id": bid,
        "arrival": sched if math.isfinite(sched) else start,
        "start": start,
        "first_token": first,
        "last_token": last,
        "end": end,
        "prompt_tokens": r.prompt_tokens or 0,
        "output_tokens": out_tok,
        "ttft": ttft,
        "tpot": tpot,
        "e2e": e2e,
    }


def _parse_guidellm(data: GuideLLMReport, path: str | None) -> Report:
    rows: list[dict[str, Any]] = []
    benches: list[dict[str, Any]] = []
    for i, b in enumerate(data.benchmarks):
        cfg = b.config
        strat = cfg.strategy if cfg is not None and cfg.strategy is not None else None
        stype = strat.type_ if strat is not None else "unknown"
        target = _opt(strat.rate) if strat is not None else _NAN
        if stype == "synchronous":
            target = _NAN
        bid = str(cfg.id_ if cfg is not None and cfg.id_ is not None else i)
        successful = b.requests.successful if b.requests is not None else []
        recs = [_guidellm_request(i, bid, r) for r in successful]
        if recs:
            origin = float(np.nanmin([[r["arrival"], r["start"]] for r in recs]))
            if math.isfinite(origin):
                for r in recs:
                    for c in ("arrival", "start", "first_token", "last_token", "end"):
                        r[c] = r[c] - origin
        rows.extend(recs)
        m = b.metrics if b.metrics is not None else GuideLLMMetrics()
        rec: dict[str, Any] = {
            "benchmark": i,
            "benchmark_id": bid,
            "strategy": stype,
            "target_rate": target,
            "rate": _opt(_stat(m.requests_per_second).mean),
            "concurrency": _opt(_stat(m.request_concurrency).mean),
            "requests": len(recs),
            "duration": _opt(b.duration),
            "prompt_tokens_mean": _opt(_stat(m.prompt_token_count).mean),
            "output_tokens_mean": _opt(_stat(m.output_token_count).mean),
        }
        rec.update(_guidellm_metric(m.time_to_first_token_ms, 1e-3, "ttft"))
        rec.update(_guidellm_metric(m.inter_token_latency_ms, 1e-3, "tpot"))
        rec.update(_guidellm_metric(m.request_latency, 1.0, "e2e"))
        rec["tpot_incl_ttft_mean"] = _opt(_stat(m.time_per_output_token_ms).mean, 1e-3)
        benches.append(rec)
    return _finish_frames(rows, benches, "guidellm", path)


# --------------------------------------------------------------------------- vLLM


def _vllm_pct(data: VllmResult, metric: str, p: str) -> float:
    v = getattr(data, f"p{p}_{metric}_ms")
    if v is None and p == "50":
        v = getattr(data, f"median_{metric}_ms")
    return _opt(v, 1e-3)


def _parse_vllm(data: VllmResult, path: str | None, index: int = 0) -> Report:
    rate_cfg = _opt(data.request_rate)
    burst = _opt(data.burstiness)
    if not math.isfinite(rate_cfg):
        strategy = "throughput"
    elif math.isfinite(burst) and burst != 1.0:
        strategy = "gamma"
    else:
        strategy = "poisson"
    bid = str(data.label or (Path(path).stem if path else index))
    rows: list[dict[str, Any]] = []
    ttfts = data.ttfts or []
    n = len(ttfts)
    ins = data.input_lens or [0] * n
    outs = data.output_lens or [0] * n
    itls = data.itls or [None] * n
    errors = data.errors or [""] * n
    starts = data.start_times or [None] * n
    for j in range(n):
        out_tok = outs[j]
        ttft = _opt(ttfts[j])
        if errors[j] or out_tok < 1 or not ttft > 0:
            continue  # a failed request: vLLM records zeros for it
        gaps = itls[j] or []
        decode = float(np.sum(np.asarray(gaps, dtype=np.float64))) if gaps else _NAN
        st = _opt(starts[j])
        first = st + ttft
        last = first + decode
        rows.append(
            {
                "benchmark": index,
                "benchmark_id": bid,
                "arrival": st,
                "start": st,
                "first_token": first,
                "last_token": last,
                "end": last,
                "prompt_tokens": ins[j],
                "output_tokens": out_tok,
                "ttft": ttft,
                "tpot": decode / (out_tok - 1) if out_tok > 1 else _NAN,
                "e2e": ttft + decode if math.isfinite(decode) else _NAN,
            }
        )
    starts_f = [r["start"] for r in rows if math.isfinite(r["start"])]
    if starts_f:
        origin = min(starts_f)
        for r in rows:
            for c in ("arrival", "start", "first_token", "last_token", "end"):
                r[c] = r[c] - origin
    done = data.completed or 0
    rec: dict[str, Any] = {
        "benchmark": index,
        "benchmark_id": bid,
        "strategy": strategy,
        "target_rate": rate_cfg,
        "rate": _opt(data.request_throughput),
        "concurrency": _NAN,
        "requests": done,
        "duration": _opt(data.duration),
        "prompt_tokens_mean": _opt(data.total_input_tokens) / done if done else _NAN,
        "output_tokens_mean": _opt(data.total_output_tokens) / done if done else _NAN,
        "tpot_incl_ttft_mean": _NAN,
    }
    for metric, key in (("ttft", "ttft"), ("tpot", "tpot"), ("e2e", "e2el")):
        rec[f"{metric}_mean"] = _opt(getattr(data, f"mean_{key}_ms"), 1e-3)
        for p in ("50", "90", "99"):
            rec[f"{metric}_p{p}"] = _vllm_pct(data, key, p)
    return _finish_frames(rows, [rec], "vllm", path)


# --------------------------------------------------------------------------- entry points


def parse_report(data: Any, path: str | None = None, field: str = "report") -> Report:
    """Turn parsed report data (a GuideLLM or vLLM mapping) into a :class:`Report`.

    The data is validated against the typed schema of :mod:`sdsim.report_schema` first.

    Parameters
    ----------
    data
        The mapping read from the JSON or YAML file.
    path
        Where it came from (used for the vLLM benchmark id and error messages).
    field
        Prefix of the field errors name (``report``; ``workload.report`` for a replay).

    Raises
    ------
    ScenarioError
        Not a report of a known kind, an unsupported schema version, or a field of the wrong type
        or out of range (named: ``report.benchmarks[0].requests.successful[3].output_tokens``).
    """
    model = validate_report(data, field, path or "")
    if isinstance(model, GuideLLMReport):
        return _parse_guidellm(model, path)
    assert isinstance(model, VllmResult)
    return _parse_vllm(model, path)


def _read(path: str | Path, field: str = "report") -> Any:
    p = Path(path)
    if not p.exists():
        raise ScenarioError(field, f"file not found: {path}")
    if p.is_dir():
        raise ScenarioError(field, f"{path} is a directory, expected a JSON or YAML report")
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(field, f"cannot read {path}: {exc.__class__.__name__}") from None
    if p.suffix.lower() in (".yaml", ".yml"):
        try:
            return load_yaml(text, field)
        except ScenarioError as exc:
            raise ScenarioError(exc.field, f"{exc.message} in {path}") from None
    try:
        # vLLM writes NaN for an undefined statistic: accepted, then read as absent
        return load_json(text, field, allow_nan=True)
    except ScenarioError as exc:
        raise ScenarioError(exc.field, f"{exc.message} in {path}") from None


_CACHE: dict[tuple[str, float, int], Report] = {}


def load_report(path: str | Path, field: str = "report") -> Report:
    """Read one GuideLLM (JSON or YAML) or vLLM ``bench serve`` (JSON) report.

    Parameters
    ----------
    path
        The report file.
    field
        Prefix of the field errors name.

    Returns
    -------
    Report
        Requests and benchmarks frames (times in seconds). Reads are cached by path, size and
        modification time, so replaying several benchmarks of one file parses it once.

    Raises
    ------
    ScenarioError
        Missing or unreadable file, or not a report of a known kind.
    """
    p = Path(path)
    try:
        st = p.stat()
        key: tuple[str, float, int] | None = (str(p.resolve()), st.st_mtime, st.st_size)
    except OSError:
        key = None
    if key is not None and key in _CACHE:
        return _CACHE[key]
    rep = parse_report(_read(p, field), str(path), field)
    if key is not None:
        if len(_CACHE) > 16:
            _CACHE.clear()
        _CACHE[key] = rep
    return rep


def load_reports(paths: Sequence[str | Path]) -> Report:
    """Read several reports (e.g. one vLLM result per rate) as one, benchmarks renumbered.

    Parameters
    ----------
    paths
        Report files, in the order their benchmarks should be numbered.
    """
    if not paths:
        raise ScenarioError("report", "no report files given")
    reps = [load_report(p) for p in paths]
    if len(reps) == 1:
        return reps[0]
    req_parts = []
    bench_parts = []
    offset = 0
    for rep in reps:
        r = rep.requests.copy()
        b = rep.benchmarks.copy()
        r["benchmark"] += offset
        b["benchmark"] += offset
        offset += len(b)
        req_parts.append(r)
        bench_parts.append(b)
    bench = pd.concat(bench_parts, ignore_index=True)
    ids = bench["benchmark_id"]
    if ids.duplicated().any():
        bench["benchmark_id"] = [f"{v}#{i}" for i, v in zip(bench["benchmark"], ids, strict=True)]
        remap = dict(zip(bench["benchmark"], bench["benchmark_id"], strict=True))
        for r in req_parts:
            r["benchmark_id"] = r["benchmark"].map(remap)
    sources = {rep.source for rep in reps}
    return Report(
        requests=pd.concat(req_parts, ignore_index=True),
        benchmarks=bench,
        source=sources.pop() if len(sources) == 1 else "mixed",
        path=str(paths[0]),
    )
