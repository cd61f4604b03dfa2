"""Workloads shaped like real traffic: shared system prompts and multi-turn sessions.

:func:`shared_prefixes` gives each request a shared system prompt (``workload.shared_prefix``):
``prompts`` distinct prefixes, each with a length drawn once, chosen by a Zipf (or uniform)
popularity law and prepended to the prompt. :func:`session_arrays` turns the requests into the
turns of multi-turn conversations (``workload.sessions``): sessions start by the workload's
arrival process at ``rate / mean turns`` per second; turn t's prompt is the conversation so far
(the shared prefix, every earlier prompt and answer) plus new user tokens; the next turn is sent
a think time after the answer finished (closed loop: the engine schedules it,
:mod:`sdsim.engine.sessions`). The engine reads the structure as prefix identities, not token
text (:mod:`sdsim.engine.kvcache`): a request's shared prefix id and length, and its
conversation id.

Each random source has its own stream (:func:`sdsim.rng.stream`), so changing the server never
changes the requests.
"""

from __future__ import annotations

__all__ = [
    "ConversationPlan",
    "conversation_plan",
    "max_context",
    "prefix_lengths",
    "prefix_popularity",
    "sample_lengths",
    "sample_times",
    "session_arrays",
    "shared_prefixes",
    "zipf_weights",
]

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from sdsim.errors import ScenarioError
from sdsim.rng import stream
from sdsim.scenario import (
    EmpiricalLength,
    ExponentialTime,
    FixedLength,
    FixedTime,
    GeometricLength,
    LengthSpec,
    LognormalLength,
    LognormalTime,
    Scenario,
    SharedPrefixSpec,
    TimeSpec,
    TraceLength,
    UniformLength,
)
from sdsim.workload_spec import CcdfLength

_I64 = npt.NDArray[np.int64]
_F64 = npt.NDArray[np.float64]


def sample_lengths(spec: LengthSpec, n: int, rng: np.random.Generator) -> npt.NDArray[np.int64]:
    """Draw n lengths from a length law.

    Parameters
    ----------
    spec
        Fixed, uniform, lognormal (mean, cv; rounded and clipped to [min, max]), geometric,
        empirical, a trace column (drawn uniformly, with replacement), or a survival table
        (by inversion of its cumulative law).
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
    if isinstance(spec, EmpiricalLength | TraceLength):
        vals = np.asarray(spec.values, dtype=np.int64)
        return vals[rng.integers(0, vals.shape[0], size=n)]
    if isinstance(spec, CcdfLength):
        values, probs = spec.law()
        cdf = np.cumsum(probs)
        idx = np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right")
        return values[np.minimum(idx, values.shape[0] - 1)]
    raise TypeError(f"unknown length law {spec!r}")


def zipf_weights(n: int, s: float) -> _F64:
    """Popularity of ``n`` items under Zipf's law: item i (from 1) has weight ``i**-s``,
    normalised (``s = 0``: uniform)."""
    w = np.arange(1, n + 1, dtype=np.float64) ** -float(s)
    return w / w.sum()


def prefix_popularity(spec: SharedPrefixSpec) -> _F64:
    """The probability of each shared prefix among the requests that carry one."""
    if spec.popularity == "uniform":
        return np.full(spec.prompts, 1.0 / spec.prompts)
    return zipf_weights(spec.prompts, spec.zipf_s)


def prefix_lengths(spec: SharedPrefixSpec, seed: int) -> _I64:
    """The shared prefixes' lengths (tokens), drawn once per run (stream ``prefix_tokens``)."""
    return sample_lengths(spec.tokens, spec.prompts, stream(seed, "prefix_tokens"))


def shared_prefixes(spec: SharedPrefixSpec, n: int, seed: int) -> tuple[_I64, _I64]:
    """Which shared prefix each of ``n`` requests (or sessions) starts with, and its length.

    Returns
    -------
    group, length
        Per request: the prefix id (-1: none, for the ``1 - share`` without one) and its tokens
        (0 without one). The prefixes' lengths are drawn once (stream ``prefix_tokens``), the
        choices from the popularity law (stream ``prefix_choice``).
    """
    lengths = prefix_lengths(spec, seed)
    rng = stream(seed, "prefix_choice")
    group = rng.choice(spec.prompts, size=n, p=prefix_popularity(spec)).astype(np.int64)
    if spec.share < 1.0:
        group[rng.random(n) >= spec.share] = -1
    length = np.where(group >= 0, lengths[np.maximum(group, 0)], 0).astype(np.int64)
    return group, length


def sample_times(spec: TimeSpec, n: int, rng: np.random.Generator) -> _F64:
    """Draw ``n`` times (s) from a time law (exponential, fixed, or lognormal by mean and CV)."""
    if isinstance(spec, ExponentialTime):
        return rng.exponential(spec.mean, size=n)
    if isinstance(spec, FixedTime):
        return np.full(n, float(spec.value))
    if isinstance(spec, LognormalTime):
        s2 = float(np.log1p(spec.cv**2))
        return rng.lognormal(float(np.log(spec.mean)) - s2 / 2, np.sqrt(s2), size=n)
    raise TypeError(f"unknown time law {spec!r}")  # validated


def max_context(scn: Scenario) -> int:
    """Tokens (prompt + answer) a turn may reach: ``workload.sessions.max_context``, or the
    target's context, or what the KV cache holds for one request if that is less."""
    from sdsim.memory import kv_capacity
    from sdsim.models import resolve_model

    sess = scn.workload.sessions
    if sess is not None and sess.max_context is not None:
        return int(sess.max_context)
    most = int(resolve_model(scn.target, "target").max_context)
    cap = kv_capacity(scn)
    if cap.blocks is not None:
        k_top = scn.spec.k if scn.spec.policy == "fixed" else max(scn.spec.k, scn.spec.k_max)
        most = min(most, cap.blocks * cap.block_size - k_top + 1)
    return most


@dataclass(frozen=True)
class ConversationPlan:
    """Sessions' turns, session by session, before any arrival time is drawn.

    Attributes
    ----------
    turns
        Turns of each session (a session ends early rather than exceed the context).
    prompt, output
        Per turn: the prompt (the conversation so far plus the new user tokens) and the answer.
    user
        Per turn: the new user tokens.
    think
        Per turn: the think time (s) before the next turn is sent, after this turn's answer.
    group, prefix
        Per session: its shared prefix id (-1: none) and that prefix's tokens.
    """

    turns: _I64
    prompt: _I64
    output: _I64
    user: _I64
    think: _F64
    group: _I64
    prefix: _I64

    @property
    def sessions(self) -> int:
        """Sessions in the plan."""
        return int(self.turns.shape[0])

    @property
    def first(self) -> _I64:
        """Index of each session's first turn."""
        return np.concatenate([[0], np.cumsum(self.turns)[:-1]]).astype(np.int64)


def conversation_plan(
    scn: Scenario, seed: int, num_requests: int | None = None
) -> ConversationPlan:
    """Draw sessions until they hold ``num_requests`` turns (the last one cut short).

    Each session draws its turn count (stream ``turns``) and its shared prefix; each turn its new
    user tokens (``prompt_tokens``), answer (``output_tokens``) and think time (``think``). A
    session stops before a turn whose prompt + answer would exceed :func:`max_context`.

    Raises
    ------
    ScenarioError
        When the first turn of a session cannot fit the context (``workload.sessions``).
    """
    w = scn.workload
    sess = w.sessions
    if sess is None:
        raise ValueError("the workload has no sessions")
    n = w.num_requests if num_requests is None else int(num_requests)
    limit = max_context(scn)
    rng_turns = stream(seed, "turns")
    rng_user = stream(seed, "prompt_tokens")
    rng_out = stream(seed, "output_tokens")
    rng_think = stream(seed, "think")
    turns_l: list[_I64] = []
    prompt_l: list[_I64] = []
    output_l: list[_I64] = []
    user_l: list[_I64] = []
    think_l: list[_F64] = []
    group_l: list[_I64] = []
    prefix_l: list[_I64] = []
    have = 0
    start = 0  # sessions drawn so far (the prefix choice of session i is draw i)
    mean_turns = max(float(sess.turns.mean), 1.0)
    while have < n:
        m = int(max(64, np.ceil((n - have) / mean_turns * 1.2)))
        k = np.maximum(sample_lengths(sess.turns, m, rng_turns), 1)
        total = int(k.sum())
        user = sample_lengths(w.prompt_tokens, total, rng_user)
        out = sample_lengths(w.output_tokens, total, rng_out)
        think = sample_times(sess.think_time_s, total, rng_think)
        if w.shared_prefix is not None:
            g, plen = shared_prefixes(w.shared_prefix, start + m, seed)
            g, plen = g[start:], plen[start:]
        else:
            g = np.full(m, -1, dtype=np.int64)
            plen = np.zeros(m, dtype=np.int64)
        start += m
        kept, prompt = _grow_conversations(k, user, out, plen, limit)
        if (kept == 0).any():
            raise ScenarioError(
                "workload.sessions",
                f"a first turn (shared prefix + prompt + output) exceeds the context of "
                f"{limit} tokens; shorten the lengths or raise sessions.max_context",
            )
        sel = np.concatenate([np.arange(f, f + c) for f, c in zip(_firsts(k), kept, strict=True)])
        # keep whole sessions up to n turns, the last one cut short
        cum = np.cumsum(kept)
        last = int(np.searchsorted(cum, n - have, side="left"))
        last = min(last, m - 1)
        keep_s = kept[: last + 1].copy()
        over = int(keep_s.sum()) - (n - have)
        if over > 0:
            keep_s[-1] -= over
        idx = sel[: int(keep_s.sum())]
        turns_l.append(keep_s)
        prompt_l.append(prompt[idx])
        output_l.append(out[idx])
        user_l.append(user[idx])
        think_l.append(think[idx])
        group_l.append(g[: last + 1])
        prefix_l.append(plen[: last + 1])
        have += int(keep_s.sum())
    return ConversationPlan(
        turns=np.concatenate(turns_l),
        prompt=np.concatenate(prompt_l),
        output=np.concatenate(output_l),
        user=np.concatenate(user_l),
        think=np.concatenate(think_l),
        group=np.concatenate(group_l),
        prefix=np.concatenate(prefix_l),
    )


def _firsts(k: _I64) -> _I64:
    return np.concatenate([[0], np.cumsum(k)[:-1]]).astype(np.int64)


def _grow_conversations(
    turns: _I64, user: _I64, out: _I64, prefix: _I64, limit: int
) -> tuple[_I64, _I64]:
    """Prompts of every drawn turn (the conversation so far + new user tokens) and how many
    turns of each session fit ``limit`` (prompt + answer), counted from the first."""
    first = _firsts(turns)
    session = np.repeat(np.arange(turns.shape[0]), turns)
    step = user + out
    csum = np.cumsum(step)
    before = csum - step - (csum - step)[first][session]  # earlier turns' tokens, per session
    prompt = prefix[session] + before + user
    fits = prompt + out <= limit
    # a session keeps its turns up to the first that does not fit
    bad = np.where(fits, 0, 1)
    seen = np.cumsum(bad) - (np.cumsum(bad) - bad)[first][session]
    ok = seen == 0
    kept = np.bincount(session, weights=ok, minlength=turns.shape[0]).astype(np.int64)
    return kept, prompt.astype(np.int64)


def session_arrays(scn: Scenario, seed: int) -> dict[str, Any]:
    """The requests of a session workload: turns, session by session, as the
    :class:`sdsim.workload.Workload` fields (``alpha`` aside).

    Session start times come from the workload's arrival process (stream ``arrivals``) at
    ``rate / mean turns`` per second, the mean over the drawn sessions, so the request rate is
    ``workload.rate``; later turns' arrivals are NaN (the engine sends them, closed loop).
    """
    w = scn.workload
    plan = conversation_plan(scn, seed)
    s = plan.sessions
    rate = w.rate / float(plan.turns.mean())
    rng = stream(seed, "arrivals")
    if w.arrival == "poisson":
        gaps = rng.exponential(1.0 / rate, size=s)
    elif w.arrival == "constant":
        gaps = np.full(s, 1.0 / rate)
    else:  # gamma (sessions with other arrivals are refused by the scenario)
        shape = 1.0 / w.cv**2
        gaps = rng.gamma(shape, 1.0 / (rate * shape), size=s)
    n = int(plan.turns.sum())
    first = plan.first
    session = np.repeat(np.arange(s, dtype=np.int64), plan.turns)
    arrival = np.full(n, np.nan)
    arrival[first] = np.cumsum(gaps)
    next_turn = np.arange(1, n + 1, dtype=np.int64)
    next_turn[first + plan.turns - 1] = -1
    return {
        "arrival": arrival,
        "prompt": plan.prompt,
        "output": plan.output,
        "prefix_group": plan.group[session],
        "prefix_len": plan.prefix[session],
        "conv": session,
        "next_turn": next_turn,
        "think": plan.think,
        "session": session,
        "turn": np.arange(n, dtype=np.int64) - first[session],
    }
