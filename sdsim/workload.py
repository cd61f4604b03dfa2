"""Workload: arrival times, prompt and output lengths, and per-request acceptance probability.

Everything is generated up front as arrays (one entry per request, in arrival order), each from its
own random stream, so changing the draft length, the server or the cost model never changes the
requests (common random numbers).
"""

from __future__ import annotations

__all__ = ["Workload", "generate_workload", "read_trace", "replay_frame"]

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd

from sdsim.errors import ScenarioError
from sdsim.report_formats import load_report
from sdsim.rng import stream
from sdsim.scenario import BetaAlpha, Scenario
from sdsim.traces import read_trace
from sdsim.traffic import sample_lengths, session_arrays, shared_prefixes


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
    prefix_group, prefix_len
        Per request, the shared prefix (system prompt) its prompt starts with (-1: none) and that
        prefix's tokens; ``None`` when no request shares one.
    conv, next_turn, think, session, turn
        Multi-turn sessions (``None`` without): the requests are the turns, session by session;
        ``arrival`` is known for first turns only (NaN for the others, which are sent
        ``think[i]`` seconds after turn ``i``'s answer, closed-loop). ``conv`` is the
        conversation (= session) id, ``next_turn`` the index of the next turn (-1: the last),
        ``session`` and ``turn`` (from 0) label the records.
    """

    arrival: npt.NDArray[np.float64]
    prompt: npt.NDArray[np.int64]
    output: npt.NDArray[np.int64]
    alpha: npt.NDArray[np.float64] | None
    prefix_group: npt.NDArray[np.int64] | None = None
    prefix_len: npt.NDArray[np.int64] | None = None
    conv: npt.NDArray[np.int64] | None = None
    next_turn: npt.NDArray[np.int64] | None = None
    think: npt.NDArray[np.float64] | None = None
    session: npt.NDArray[np.int64] | None = None
    turn: npt.NDArray[np.int64] | None = None

    def __len__(self) -> int:
        return int(self.arrival.shape[0])


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
    else:  # validated by the scenario
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
    if w.sessions is not None:
        arrays = session_arrays(scn, s)
        return Workload(**arrays, alpha=_alpha(scn, s, arrays["arrival"].shape[0]))
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
    group = plen = None
    if w.shared_prefix is not None:
        group, plen = shared_prefixes(w.shared_prefix, arrival.shape[0], s)
        prompt = prompt + plen  # the system prompt comes first
    return Workload(
        arrival=arrival,
        prompt=prompt,
        output=output,
        alpha=_alpha(scn, s, arrival.shape[0]),
        prefix_group=group,
        prefix_len=plen,
    )


def _alpha(scn: Scenario, seed: int, n: int) -> npt.NDArray[np.float64] | None:
    """Per-request acceptance probability (stream ``alpha``), ``None`` for per-position alpha."""
    a = scn.acceptance.alpha
    if isinstance(a, BetaAlpha):
        return stream(seed, "alpha").beta(a.a, a.b, size=n)
    if not isinstance(a, list):
        return np.full(n, float(a))
    return None
