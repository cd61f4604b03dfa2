"""Workload: arrival times, prompt and output lengths, and per-request acceptance probability.

Everything is generated up front as arrays (one entry per request, in arrival order), each from its
own random stream, so changing the draft length, the server or the cost model never changes the
requests (common random numbers).
"""

from __future__ import annotations

__all__ = ["Workload", "generate_workload", "read_trace", "replay_frame", "sample_lengths"]

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd

from sdsim.errors import ScenarioError
from sdsim.report_formats import load_report
from sdsim.rng import stream
from sdsim.scenario import (
    BetaAlpha,
    EmpiricalLength,
    FixedLength,
    GeometricLength,
    LengthSpec,
    LognormalLength,
    Scenario,
    UniformLength,
)


@dataclass(frozen=True)
class Workload:
    """Requests as arrays, one entry per request, sorted by arrival time.

    Attributes
    ----------
    arrival
        Arrival times (s).
    prompt
        Prompt tokens.
    output
        Output tokens (>= 1).
    alpha
        Per-request acceptance probability, or ``None`` when acceptance is the same for all.
    """

    arrival: npt.NDArray[np.float64]
    prompt: npt.NDArray[np.int64]
    output: npt.NDArray[np.int64]
    alpha: npt.NDArray[np.float64] | None

    def __len__(self) -> int:
        return int(self.arrival.shape[0])


def sample_lengths(spec: LengthSpec, n: int, rng: np.random.Generator) -> npt.NDArray[np.int64]:
    """Draw n lengths from a length law.

    Parameters
    ----------
    spec
        Fixed, uniform, lognormal (mean, cv; rounded and clipped to [min, max]) or empirical.
    n
        How many.
    rng
        The stream for this source.
    """
    if isinstance(spec, FixedLength):
        return np.full(n, spec.value, dtype=np.int64)
    if isinstance(spec, UniformLength):
        return rng.integers(spec.low, spec.high + 1, size=n, dtype=np.int64)
    if isinstance(spec, LognormalLength):
        # Moment-matched: sigma^2 = ln(1 + cv^2), mu = ln(mean) - sigma^2 / 2.
        s2 = float(np.log1p(spec.cv**2))
        mu = float(np.log(spec.mean)) - s2 / 2
        x = rng.lognormal(mu, np.sqrt(s2), size=n)
        return np.clip(np.rint(x), spec.min, spec.max).astype(np.int64)
    if isinstance(spec, GeometricLength):
        return np.minimum(rng.geometric(1.0 / spec.mean, size=n), spec.max).astype(np.int64)
    if isinstance(spec, EmpiricalLength):
        vals = np.asarray(spec.values, dtype=np.int64)
        return vals[rng.integers(0, vals.shape[0], size=n)]
    raise TypeError(f"unknown length law {spec!r}")


def read_trace(path: str | Path, require_arrival: bool = True) -> pd.DataFrame:
    """Read a request trace CSV: ``arrival`` (s), ``prompt_tokens``, ``output_tokens``.

    Column aliases accepted: ``arrived_at``/``arrival_time``/``timestamp`` for arrival,
    ``num_prefill_tokens`` for prompt and ``num_decode_tokens`` for output (Vidur's trace files).
    Other columns are ignored.

    Parameters
    ----------
    path
        The CSV file.
    require_arrival
        When true (replaying a trace's timing), a trace without an arrival column is rejected.
        When false (replaying only its lengths, e.g. Vidur's arXiv summarisation statistics,
        which have no times), a missing arrival column gives ``arrival`` = NaN.

    Raises
    ------
    ScenarioError
        Missing file or columns, negative or unsorted times, non-positive lengths.
    """
    p = Path(path)
    if not p.exists():
        raise ScenarioError("workload.trace", f"trace file not found: {path}")
    try:
        df = pd.read_csv(p)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ScenarioError(
            "workload.trace", f"cannot parse CSV: {exc.__class__.__name__}"
        ) from None
    aliases = {
        "arrival": ("arrival", "arrived_at", "arrival_time", "timestamp"),
        "prompt_tokens": ("prompt_tokens", "num_prefill_tokens"),
        "output_tokens": ("output_tokens", "num_decode_tokens"),
    }
    out = {}
    has_arrival = True
    for name, options in aliases.items():
        col = next((c for c in options if c in df.columns), None)
        if col is None:
            if name == "arrival" and not require_arrival:
                out[name] = np.full(len(df), np.nan)
                has_arrival = False
                continue
            hint = ""
            if name == "arrival":
                hint = (
                    "; to replay only its lengths, set workload.arrival to poisson, gamma or "
                    "constant and keep workload.trace"
                )
            raise ScenarioError(
                "workload.trace",
                f"missing column {name!r} (one of {list(options)}) in {path}{hint}",
            )
        out[name] = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=np.float64)
    arr = out["arrival"]
    if arr.size == 0:
        raise ScenarioError("workload.trace", f"no requests in {path}")
    for name, values in out.items():
        if name == "arrival" and not has_arrival:
            continue
        if not np.all(np.isfinite(values)):
            raise ScenarioError("workload.trace", f"column {name!r} has non-numeric or NaN values")
    if has_arrival:
        if np.any(arr < 0):
            raise ScenarioError("workload.trace", "arrival times must be >= 0")
        if np.any(np.diff(arr) < 0):
            raise ScenarioError("workload.trace", "arrival times must be sorted (non-decreasing)")
    for name in ("prompt_tokens", "output_tokens"):
        if np.any(out[name] < 1):
            raise ScenarioError("workload.trace", f"column {name!r} must be >= 1")
    return pd.DataFrame(
        {
            "arrival": arr,
            "prompt_tokens": out["prompt_tokens"].astype(np.int64),
            "output_tokens": out["output_tokens"].astype(np.int64),
        }
    )


def _arrivals(scn: Scenario, seed: int) -> npt.NDArray[np.float64]:
    w = scn.workload
    n = w.num_requests
    rng = stream(seed, "arrivals")
    if w.arrival == "poisson":
        gaps = rng.exponential(1.0 / w.rate, size=n)  # exponential gaps, never clipped
    elif w.arrival == "constant":
        gaps = np.full(n, 1.0 / w.rate)
    elif w.arrival == "gamma":
        shape = 1.0 / w.cv**2
        gaps = rng.gamma(shape, 1.0 / (w.rate * shape), size=n)
    elif w.arrival == "mmpp":
        return _mmpp_arrivals(w.mmpp.rates(w.rate), w.mmpp.durations(), n, rng)
    else:  # pragma: no cover - validated by the scenario
        raise ScenarioError("workload.arrival", f"unsupported arrival {w.arrival!r}")
    return np.cumsum(gaps)


def _mmpp_arrivals(
    rates: tuple[float, float], durations: tuple[float, float], n: int, rng: np.random.Generator
) -> npt.NDArray[np.float64]:
    """The first ``n`` arrival times of a two-state MMPP started in its stationary state.

    States alternate (quiet 0, burst 1), each held for an exponential time with the given
    mean; during a state, arrivals are Poisson at its rate: their count is Poisson(rate x
    duration) and their times uniform within the state. States are drawn in blocks until ``n``
    arrivals are reached.
    """
    p_burst = durations[1] / (durations[0] + durations[1])
    state = int(rng.random() < p_burst)
    t0 = 0.0
    out: list[npt.NDArray[np.float64]] = []
    have = 0
    mean_rate = (rates[0] * durations[0] + rates[1] * durations[1]) / sum(durations)
    while have < n:
        # enough states for the arrivals still wanted (about 2 per cycle), at least 64
        cycles = (n - have) / max(mean_rate * sum(durations), 1e-12)
        m = int(min(max(2 * cycles * 1.2 + 64, 64), 1_000_000))
        st = (state + np.arange(m)) % 2
        means = np.where(st == 1, durations[1], durations[0])
        dur = rng.exponential(means)
        start = t0 + np.concatenate(([0.0], np.cumsum(dur)[:-1]))
        counts = rng.poisson(np.where(st == 1, rates[1], rates[0]) * dur)
        idx = np.repeat(np.arange(m), counts)
        times = start[idx] + rng.random(idx.shape[0]) * dur[idx]
        out.append(np.sort(times))
        have += int(times.shape[0])
        t0 = float(start[-1] + dur[-1])
        state = (state + m) % 2
    return np.concatenate(out)[:n]


def replay_frame(report: str | Path, benchmark: int | str | None = None) -> pd.DataFrame:
    """Arrival times and lengths of one benchmark, ready for the engine.

    Parameters
    ----------
    report
        GuideLLM or vLLM report file.
    benchmark
        0-based index or ``benchmark_id``; ``None`` is the first benchmark.

    Returns
    -------
    pandas.DataFrame
        ``arrival`` (the request's ``start`` in the report, s), ``prompt_tokens``,
        ``output_tokens``, sorted by arrival.

    Raises
    ------
    ScenarioError
        Unknown benchmark, no per-request start times, or lengths below one token.
    """
    rep = load_report(report, "workload.report")
    i = rep.resolve(benchmark, field="workload.benchmark")
    df = rep.benchmark_requests(i)
    if df.empty:
        raise ScenarioError("workload.benchmark", f"benchmark {i} has no per-request records")
    start = df["start"].to_numpy(dtype=np.float64)
    if not np.all(np.isfinite(start)):
        raise ScenarioError(
            "workload.report",
            f"benchmark {i} has no per-request start times (vLLM: save with --save-detailed "
            "from a version that writes start_times); it cannot be replayed",
        )
    for c in ("prompt_tokens", "output_tokens"):
        if (df[c] < 1).any():
            raise ScenarioError("workload.report", f"benchmark {i}: some {c} are below 1")
    return pd.DataFrame(
        {
            "arrival": start,
            "prompt_tokens": df["prompt_tokens"].to_numpy(dtype=np.int64),
            "output_tokens": df["output_tokens"].to_numpy(dtype=np.int64),
        }
    )


def generate_workload(scn: Scenario, seed: int | None = None) -> Workload:
    """Generate the requests of a scenario.

    Parameters
    ----------
    scn
        The scenario.
    seed
        Run seed; defaults to ``scn.seed``.

    Returns
    -------
    Workload
        Arrays in arrival order.
    """
    s = scn.seed if seed is None else int(seed)
    w = scn.workload
    if w.arrival == "replay":
        assert w.report is not None
        df = replay_frame(w.report, w.benchmark)
        if w.num_requests < len(df):
            df = df.iloc[: w.num_requests]
        arrival = df["arrival"].to_numpy(dtype=np.float64)
        prompt = df["prompt_tokens"].to_numpy(dtype=np.int64)
        output = df["output_tokens"].to_numpy(dtype=np.int64)
    elif w.arrival == "trace":
        assert w.trace is not None
        df = read_trace(w.trace)
        if w.num_requests < len(df):
            df = df.iloc[: w.num_requests]
        arrival = df["arrival"].to_numpy(dtype=np.float64)
        prompt = df["prompt_tokens"].to_numpy(dtype=np.int64)
        output = df["output_tokens"].to_numpy(dtype=np.int64)
    elif w.trace:
        # Lengths replayed from the trace in its order (cycling when it is shorter than
        # num_requests), arrival times from the scenario's process: how traces without times
        # (Vidur's arXiv summarisation lengths) are used, and how a timed trace is replayed at
        # another load.
        df = read_trace(w.trace, require_arrival=False)
        rows = np.arange(w.num_requests) % len(df)
        arrival = _arrivals(scn, s)
        prompt = df["prompt_tokens"].to_numpy(dtype=np.int64)[rows]
        output = df["output_tokens"].to_numpy(dtype=np.int64)[rows]
    else:
        arrival = _arrivals(scn, s)
        prompt = sample_lengths(w.prompt_tokens, w.num_requests, stream(s, "prompt_tokens"))
        output = sample_lengths(w.output_tokens, w.num_requests, stream(s, "output_tokens"))
    alpha: npt.NDArray[np.float64] | None = None
    a = scn.acceptance.alpha
    if isinstance(a, BetaAlpha):
        alpha = stream(s, "alpha").beta(a.a, a.b, size=arrival.shape[0])
    elif not isinstance(a, list):
        alpha = np.full(arrival.shape[0], float(a))
    return Workload(arrival=arrival, prompt=prompt, output=output, alpha=alpha)
