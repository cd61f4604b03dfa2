"""Records → DataFrames → summary statistics.

Conventions (the glossary users read results by):

* **Warm-up** is by arrival: the first ``warmup_requests`` requests (in arrival order) are excluded
  from latency statistics. The **measurement window** runs from the arrival of the first measured
  request to the arrival of the last request; levels (batch size, number in system) are
  time-weighted over it, idle time counting as zero, and throughput counts completions inside it.
* ``e2e = finish - arrival``, ``ttft = first_token - arrival``,
  ``tpot = (finish - first_token) / (output_tokens - 1)`` (undefined for one-token outputs),
  ``queue_delay = first_scheduled - arrival``.
* ``draft_acceptance_rate`` = accepted / drafted tokens over the measured requests: the rate
  servers report, not the model's ``acceptance.alpha`` (see :mod:`sdsim.acceptance`).
* ``little_residual = (in_system_mean - lambda_obs * e2e_mean) / in_system_mean`` with
  ``lambda_obs`` the observed arrival rate in the window: Little's law says it tends to 0.
* **Aborted** requests (``aborted``: their client went away; ``finish`` is when they left the
  engine) are counted (``aborted``) and are in the system until they leave, but are not completions:
  latencies, throughput and token statistics cover completed requests only.
* ``stable`` is the verdict of a statistical test on the growth of the number in system
  (:mod:`sdsim.stability`): true, false, or ``None`` when the run is too short to judge;
  ``stability`` says which in words, ``stability_p`` is the test's p-value and
  ``queue_growth_rps`` the growth it measured.
"""

from __future__ import annotations

__all__ = [
    "REQUEST_FIELDS",
    "SUMMARY_KEYS",
    "build_requests_frame",
    "build_steps_frame",
    "prefix_stats",
    "summarize",
    "t_confidence_interval",
    "time_average_in_system",
]

import math
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from sdsim._version import __version__
from sdsim.engine.schema import ABORT_DONE
from sdsim.records import SimRun
from sdsim.scenario import SloSpec
from sdsim.slo import slo_bounds, slo_stats
from sdsim.stability import judge_stability, saturation_stop, stability_grid, stability_summary

REQUEST_FIELDS = (
    "arrival",
    "first_scheduled",
    "first_token",
    "finish",
    "prompt_tokens",
    "output_tokens",
    "steps",
    "drafted",
    "accepted",
    "preemptions",
    "cached_tokens",
)

SUMMARY_KEYS = (
    "completed",
    "throughput_rps",
    "throughput_tps",
    *(f"{m}_{s}" for m in ("e2e", "ttft", "tpot") for s in ("mean", "p50", "p90", "p99")),
    "tokens_per_step_mean",
    "batch_mean",
    "in_system_mean",
    "little_residual",
    "stable",
    "preemptions",
    "goodput_rps",
    "slo_attainment",
    "slo_met",
    "seed",
)


def build_requests_frame(run: SimRun, warmup: int) -> pd.DataFrame:
    """One row per request with the docs/design.md record fields and derived latencies."""
    t = run.table
    df = pd.DataFrame(
        {
            "request_id": np.arange(t.n, dtype=np.int64),
            "arrival": t.arrival,
            "first_scheduled": t.first_scheduled,
            "first_token": t.first_token,
            "finish": t.finish,
            "prompt_tokens": t.prompt,
            "output_tokens": t.output,
            "steps": t.steps,
            "drafted": t.drafted,
            "accepted": t.accepted,
            "preemptions": t.preemptions,
            "cached_tokens": t.cached_tokens,
            "replica": t.replica,
        }
    )
    if (t.conv >= 0).any():  # multi-turn sessions: which conversation, which turn
        df["session"] = t.conv
        df["turn"] = t.turn
    if t.alpha is not None:
        df["alpha"] = t.alpha
    df["ttft"] = df["first_token"] - df["arrival"]
    df["e2e"] = df["finish"] - df["arrival"]
    with np.errstate(divide="ignore", invalid="ignore"):
        tpot = (df["finish"] - df["first_token"]) / (df["output_tokens"] - 1)
    df["tpot"] = tpot.where(df["output_tokens"] > 1)
    df["queue_delay"] = df["first_scheduled"] - df["arrival"]
    df["warmup"] = df["request_id"] < warmup
    df["aborted"] = t.aborted == ABORT_DONE
    return df


def build_steps_frame(run: SimRun) -> pd.DataFrame:
    """One row per engine step (docs/design.md step fields plus k, accepted, emitted, replica)."""
    return pd.DataFrame(run.steps)


def time_average_in_system(
    arrival: npt.NDArray[np.float64], finish: npt.NDArray[np.float64], t0: float, t1: float
) -> float:
    """Time-average number of requests in system over [t0, t1] (unfinished ones stay in)."""
    if t1 <= t0:
        return float("nan")
    fin = np.where(np.isnan(finish), np.inf, finish)
    # integral of N(t) = sum over requests of overlap([arrival, finish], [t0, t1])
    lo = np.maximum(arrival, t0)
    hi = np.minimum(fin, t1)
    return float(np.clip(hi - lo, 0, None).sum() / (t1 - t0))


def _quantiles(x: npt.NDArray[np.float64], prefix: str, out: dict[str, Any]) -> None:
    x = x[np.isfinite(x)]
    if x.size == 0:
        for s in ("mean", "p50", "p90", "p99"):
            out[f"{prefix}_{s}"] = float("nan")
        return
    out[f"{prefix}_mean"] = float(x.mean())
    p50, p90, p99 = np.percentile(x, [50, 90, 99])
    out[f"{prefix}_p50"] = float(p50)
    out[f"{prefix}_p90"] = float(p90)
    out[f"{prefix}_p99"] = float(p99)


def _overlap_weights(
    start: npt.NDArray[np.float64], dur: npt.NDArray[np.float64], t0: float, t1: float
) -> npt.NDArray[np.float64]:
    return np.clip(np.minimum(start + dur, t1) - np.maximum(start, t0), 0, None)


def summarize(
    run: SimRun,
    requests: pd.DataFrame,
    steps: pd.DataFrame,
    warmup: int,
    seed: int,
    slo: SloSpec | None = None,
) -> dict[str, Any]:
    """The summary dict (docs/design.md keys plus diagnostics, goodput and SLO attainment).

    Parameters
    ----------
    run
        Raw run (for end time and stop reason).
    requests, steps
        Frames from :func:`build_requests_frame` and :func:`build_steps_frame`.
    warmup
        Requests excluded from statistics.
    seed
        Recorded in the summary.
    slo
        The scenario's SLOs (:mod:`sdsim.slo`: ``goodput_rps``, ``slo_met``, attainment and
        margin per SLO); ``None``: none set.
    """
    n = len(requests)
    warmup = min(warmup, max(n - 1, 0))
    meas = requests.iloc[warmup:]
    aborted = requests["aborted"].to_numpy()
    done = meas[meas["finish"].notna() & ~meas["aborted"]]
    arrival = requests["arrival"].to_numpy()
    finish = requests["finish"].to_numpy()
    t0 = float(arrival[warmup]) if n else 0.0
    t1 = float(arrival[-1]) if n else 0.0
    if run.stopped_early:
        t1 = min(t1, run.end_time)
    span = t1 - t0
    out: dict[str, Any] = {}
    out["completed"] = int((np.isfinite(finish) & ~aborted).sum())
    out["measured"] = len(done)
    out["aborted"] = int(aborted.sum())
    if span > 0:
        in_win = (finish >= t0) & (finish <= t1) & ~aborted
        out["throughput_rps"] = float(in_win.sum() / span)
    else:
        dur = run.end_time - t0
        out["throughput_rps"] = float(len(done) / dur) if dur > 0 else float("nan")
    for m in ("e2e", "ttft", "tpot"):
        _quantiles(done[m].to_numpy(dtype=np.float64), m, out)
    out["queue_delay_mean"] = float(done["queue_delay"].mean()) if len(done) else float("nan")
    st = done["steps"].to_numpy()
    acc = done["accepted"].to_numpy()
    out["tokens_per_step_mean"] = float((st.sum() + acc.sum()) / st.sum()) if st.sum() else math.nan
    drafted = float(done["drafted"].sum())
    out["draft_acceptance_rate"] = float(acc.sum() / drafted) if drafted else float("nan")

    start = steps["start"].to_numpy()
    sdur = steps["duration"].to_numpy()
    if span > 0 and len(steps):
        w = _overlap_weights(start, sdur, t0, t1)
        out["batch_mean"] = float((steps["num_seqs"].to_numpy() * w).sum() / span)
        # per replica: steps of N replicas overlap in time
        replicas = int((getattr(run, "info", {}) or {}).get("replicas", 1) or 1)
        out["busy_fraction"] = float(w.sum() / span / replicas)
        emitted_in = (start + sdur >= t0) & (start + sdur <= t1)
        out["throughput_tps"] = float(steps["emitted"].to_numpy()[emitted_in].sum() / span)
        waiting_mean = float((steps["waiting"].to_numpy() * w).sum() / max(w.sum(), 1e-300))
    else:
        out["batch_mean"] = float("nan")
        out["busy_fraction"] = float("nan")
        out["throughput_tps"] = float("nan")
        waiting_mean = float("nan")
    out["waiting_mean"] = waiting_mean
    out["in_system_mean"] = time_average_in_system(arrival, finish, t0, t1)
    lam_obs = float(((arrival >= t0) & (arrival <= t1)).sum() / span) if span > 0 else math.nan
    out["arrival_rate_obs"] = lam_obs
    ism = out["in_system_mean"]
    sojourn = out["e2e_mean"]
    if aborted.any():  # aborted requests were in the system too
        left = meas[meas["finish"].notna()]
        sojourn = float(left["e2e"].mean()) if len(left) else math.nan
    out["little_residual"] = (
        float((ism - lam_obs * sojourn) / ism) if ism and math.isfinite(ism) else math.nan
    )
    verdict = judge_stability(
        _in_system_at(arrival, finish, stability_grid(t0, t1)),
        t0,
        t1,
        int(((arrival >= t0) & (arrival <= t1)).sum()),
        saturation_stop(run.stopped_early, run.stop_reason),
    )
    out.update(stability_summary(verdict))
    out["stop_reason"] = run.stop_reason
    out["preemptions"] = int(requests["preemptions"].sum())
    out["preempted_requests"] = int((requests["preemptions"] > 0).sum())
    _engine_facts(run, steps, t0, t1, out)
    out.update(
        prefix_stats(
            int(done["cached_tokens"].sum()),
            int(done["prompt_tokens"].sum()),
            int(steps["prefill_tokens"].sum()) if len(steps) else 0,
            int(steps["cached_tokens"].sum()) if len(steps) else 0,
        )
    )
    out.update(
        slo_stats(
            slo_bounds(slo) if slo is not None else {},
            done["e2e"].to_numpy(dtype=np.float64),
            done["ttft"].to_numpy(dtype=np.float64),
            done["tpot"].to_numpy(dtype=np.float64),
            len(meas),
            out,
        )
    )
    out["steps"] = len(steps)
    out["duration_s"] = float(run.end_time)
    out["seed"] = int(seed)
    out["sdsim_version"] = __version__
    return out


def _engine_facts(
    run: SimRun, steps: pd.DataFrame, t0: float, t1: float, out: dict[str, Any]
) -> None:
    """Overheads, draft length and KV use: what the analytic model needs to mirror the engine.

    Adds ``api_delay_s`` (per-request delay before admission), ``overhead_s_mean`` (CPU overhead
    per step, mean over steps), ``k_mean`` (draft length per decoding request-step; the adaptive
    policy's average choice), ``kv_blocks_total`` (per replica, ``None`` = unlimited),
    ``kv_peak_blocks`` and ``kv_util_mean`` (time-weighted blocks in use / capacity over the
    window, all replicas; NaN when unlimited) and ``replicas``.
    """
    out.update(getattr(run, "info", {}) or {})
    n = len(steps)
    out["overhead_s_mean"] = float(steps["overhead_s"].mean()) if n else math.nan
    dec = steps["decode_seqs"].to_numpy() if n else np.zeros(0)
    out["k_mean"] = (
        float((steps["k"].to_numpy() * dec).sum() / dec.sum()) if n and dec.sum() else math.nan
    )
    total = out.get("kv_blocks_total")
    span = t1 - t0
    if total and n and span > 0:
        w = _overlap_weights(steps["start"].to_numpy(), steps["duration"].to_numpy(), t0, t1)
        used = (steps["kv_blocks_used"].to_numpy() * w).sum()
        out["kv_util_mean"] = float(used / (span * total * int(out.get("replicas", 1) or 1)))
    else:
        out["kv_util_mean"] = math.nan


def prefix_stats(cached: int, prompt: int, computed: int, saved: int) -> dict[str, Any]:
    """The prefix cache's summary figures.

    Parameters
    ----------
    cached, prompt
        Prompt tokens served from the cache at first admission, and all prompt tokens, over the
        measured completed requests.
    computed, saved
        Prefill tokens computed, and taken from the cache by admissions (re-admissions after a
        preemption included), over every step of the run.

    Returns
    -------
    dict
        ``prefix_hit_rate`` (``cached / prompt``: the share of prompt tokens served from the
        cache), ``prefill_tokens_requested`` (computed + saved), ``prefill_tokens_computed``,
        ``prefill_saved_fraction`` (saved / requested).
    """
    requested = computed + saved
    return {
        "prefix_hit_rate": float(cached / prompt) if prompt else math.nan,
        "prefill_tokens_requested": int(requested),
        "prefill_tokens_computed": int(computed),
        "prefill_saved_fraction": float(saved / requested) if requested else math.nan,
    }


def _in_system_at(
    arrival: npt.NDArray[np.float64], finish: npt.NDArray[np.float64], grid: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """Requests in the system (arrived, not finished) at each time of ``grid``."""
    fin = np.sort(np.where(np.isnan(finish), np.inf, finish))
    n_t = np.searchsorted(np.sort(arrival), grid, side="right") - np.searchsorted(
        fin, grid, side="right"
    )
    return n_t.astype(np.float64)


def t_confidence_interval(values: Any, confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and t-based confidence interval across replications.

    Parameters
    ----------
    values
        One value per replication.
    confidence
        Two-sided level.

    Returns
    -------
    mean, low, high
        ``low == high == mean`` with a single replication (no spread to estimate).
    """
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return (math.nan, math.nan, math.nan)
    m = float(x.mean())
    if x.size < 2:
        return (m, m, m)
    from scipy import stats  # lazy: scipy's import costs ~1 s and most runs never need it

    half = float(stats.t.ppf(0.5 + confidence / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return (m, m - half, m + half)
