"""The workload section of a scenario (``workload:``): length and time laws, the request stream,
shared system prompts and multi-turn sessions.

Validated, frozen pydantic models (:class:`sdsim.spec_base.Frozen`); :mod:`sdsim.scenario`
assembles them into a :class:`~sdsim.scenario.Scenario` (and re-exports them), and
:mod:`sdsim.workload` draws the requests from them.
"""

from __future__ import annotations

__all__ = [
    "MAX_REQUESTS",
    "CcdfLength",
    "EmpiricalLength",
    "ExponentialTime",
    "FixedLength",
    "FixedTime",
    "GeometricLength",
    "LengthSpec",
    "LognormalLength",
    "LognormalTime",
    "MmppSpec",
    "SessionSpec",
    "SharedPrefixSpec",
    "TimeSpec",
    "TraceLength",
    "UniformLength",
    "WorkloadSpec",
]

import math
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from sdsim.errors import ScenarioError
from sdsim.spec_base import Frozen as _Frozen
from sdsim.spec_base import PathStr
from sdsim.traces import ccdf_law, trace_lengths

# A run's workload arrays and streaming statistics take ~70 bytes per request (~0.7 GB here).
MAX_REQUESTS = 10_000_000


# --------------------------------------------------------------------------- lengths


class FixedLength(_Frozen):
    """Every request has the same length."""

    dist: Literal["fixed"] = "fixed"
    value: int = Field(ge=1, description="tokens")

    @property
    def mean(self) -> float:
        return float(self.value)

    @property
    def max(self) -> int:
        return self.value


class UniformLength(_Frozen):
    """Integer lengths uniform on [low, high]."""

    dist: Literal["uniform"]
    low: int = Field(ge=1)
    high: int = Field(ge=1)

    @model_validator(mode="after")
    def _order(self) -> UniformLength:
        if self.high < self.low:
            raise ScenarioError("high", f"must be >= low (low={self.low}, high={self.high})")
        return self

    @property
    def mean(self) -> float:
        return (self.low + self.high) / 2

    @property
    def max(self) -> int:
        return self.high


class LognormalLength(_Frozen):
    """Lognormal lengths with the given mean and coefficient of variation, rounded, clipped."""

    dist: Literal["lognormal"]
    mean: float = Field(gt=0)
    cv: float = Field(gt=0, le=10)
    min: int = Field(default=1, ge=1)
    max: int = Field(default=32768, ge=1)

    @model_validator(mode="after")
    def _order(self) -> LognormalLength:
        if self.max < self.min:
            raise ScenarioError("max", f"must be >= min (min={self.min}, max={self.max})")
        return self


class GeometricLength(_Frozen):
    """Geometric lengths on 1, 2, ... with the given mean (the discrete exponential law).

    Used to make service times memoryless, e.g. to reduce the engine to M/M/1 in tests.
    """

    dist: Literal["geometric"]
    mean: float = Field(ge=1)
    max: int = Field(default=32768, ge=1, description="draws above it are clipped")


class EmpiricalLength(_Frozen):
    """Lengths drawn uniformly at random from a list (e.g. measured from a dataset)."""

    dist: Literal["empirical"]
    values: list[Annotated[int, Field(ge=1)]] = Field(min_length=1)

    @property
    def mean(self) -> float:
        return float(sum(self.values)) / len(self.values)

    @property
    def max(self) -> int:
        return max(self.values)


class TraceLength(_Frozen):
    """Lengths drawn uniformly at random from one column of a request trace CSV (the empirical
    law of a real trace, e.g. Vidur's ``splitwise_conv.csv``), read when the scenario loads.

    ``column`` is ``prompt_tokens`` or ``output_tokens`` (Vidur's ``num_prefill_tokens`` and
    ``num_decode_tokens`` are read as those).
    """

    dist: Literal["trace"]
    path: PathStr = Field(description="request CSV (sdsim.traces.read_trace's columns)")
    column: Literal["prompt_tokens", "output_tokens"]

    @model_validator(mode="after")
    def _readable(self) -> TraceLength:
        try:
            trace_lengths(self.path, self.column)
        except ScenarioError as exc:
            raise ValueError(exc.message) from None
        return self

    @property
    def values(self) -> Any:
        """The column's lengths (a numpy array, read once per file)."""
        return trace_lengths(self.path, self.column)

    @property
    def mean(self) -> float:
        return float(self.values.mean())

    @property
    def max(self) -> int:
        return int(self.values.max())


class CcdfLength(_Frozen):
    """A discrete law given by its survival function ``P(L >= value)`` at a few integer values
    (a CSV: a ``ccdf`` column and one column of values, e.g. a published distribution read at
    those points; ``sdsim/data/conversations/``), log-linear between them, decaying beyond the
    last point as over the last segment, clipped at ``max`` (:func:`sdsim.traces.ccdf_law`).

    For ``workload.sessions.turns`` (turns per conversation) and shared-prefix lengths; the
    closed-form model does not read it as a prompt or answer law.
    """

    dist: Literal["ccdf"]
    path: PathStr = Field(description="CSV: `ccdf` (P(L >= value)) and one column of values")
    max: int = Field(default=1000, ge=1, le=10_000_000, description="draws above it are clipped")

    @model_validator(mode="after")
    def _readable(self) -> CcdfLength:
        try:
            ccdf_law(self.path, self.max)
        except ScenarioError as exc:
            raise ValueError(exc.message) from None
        return self

    def law(self) -> tuple[Any, Any]:
        """(values, probabilities): every integer from the table's first value to ``max``."""
        return ccdf_law(self.path, self.max)

    @property
    def mean(self) -> float:
        v, p = self.law()
        return float(v @ p)


LengthSpec = Annotated[
    FixedLength
    | UniformLength
    | LognormalLength
    | GeometricLength
    | EmpiricalLength
    | TraceLength
    | CcdfLength,
    Field(discriminator="dist"),
]


def _length_shorthand(v: Any) -> Any:
    # `prompt_tokens: 512` is the common case; expand it to the fixed law.
    if isinstance(v, bool):
        raise ValueError("must be a token count or a length law, not a boolean")
    if isinstance(v, int):
        return {"dist": "fixed", "value": v}
    if isinstance(v, float):
        if not math.isfinite(v) or v != int(v):
            raise ValueError("must be a whole number of tokens")
        return {"dist": "fixed", "value": int(v)}
    if isinstance(v, dict) and "dist" not in v and "value" in v:
        return {"dist": "fixed", **v}
    return v


class ExponentialTime(_Frozen):
    """Exponential times with the given mean (s)."""

    dist: Literal["exponential"] = "exponential"
    mean: float = Field(gt=0, le=1e6, description="s")


class FixedTime(_Frozen):
    """The same time every time (s)."""

    dist: Literal["fixed"]
    value: float = Field(ge=0, le=1e6, description="s")


class LognormalTime(_Frozen):
    """Lognormal times with the given mean (s) and coefficient of variation."""

    dist: Literal["lognormal"]
    mean: float = Field(gt=0, le=1e6, description="s")
    cv: float = Field(gt=0, le=10)


TimeSpec = Annotated[ExponentialTime | FixedTime | LognormalTime, Field(discriminator="dist")]


class SharedPrefixSpec(_Frozen):
    """Shared system prompts: ``prompts`` distinct prefixes, each of a length drawn once from
    ``tokens``, prepended to the prompts of a ``share`` of the requests (sessions: to their
    conversation), which one by a popularity law: ``zipf`` (prompt i, from 1, with probability
    proportional to ``1 / i**zipf_s``) or ``uniform``."""

    prompts: int = Field(ge=1, le=1_000_000, description="distinct system prompts")
    tokens: LengthSpec = Field(description="length law of each prompt (drawn once per prompt)")
    popularity: Literal["zipf", "uniform"] = "zipf"
    zipf_s: float = Field(default=1.0, ge=0, le=10, description="Zipf exponent")
    share: float = Field(default=1.0, ge=0, le=1, description="share of requests with one")

    @field_validator("tokens", mode="before")
    @classmethod
    def _expand(cls, v: Any) -> Any:
        return _length_shorthand(v)


class SessionSpec(_Frozen):
    """Multi-turn sessions, closed-loop: sessions start by the workload's arrival process at
    ``rate / (mean turns)`` per second (so ``workload.rate`` stays the request rate); each sends
    ``turns`` requests, the next one ``think_time_s`` after the previous answer finished, its
    prompt the conversation so far (shared prefix, every earlier prompt and answer) plus new user
    tokens (``workload.prompt_tokens``); answers are ``workload.output_tokens`` long. A session
    ends early rather than send a turn whose prompt + answer exceed ``max_context`` tokens
    (default: the target's context, or what the KV cache holds for one request if less)."""

    turns: LengthSpec = Field(description="turns per session (a length law, >= 1)")
    think_time_s: TimeSpec = ExponentialTime(mean=10.0)
    max_context: int | None = Field(default=None, ge=2, le=10_000_000, description="tokens")

    @field_validator("turns", mode="before")
    @classmethod
    def _expand(cls, v: Any) -> Any:
        return _length_shorthand(v)


class MmppSpec(_Frozen):
    """Two-state Markov-modulated Poisson arrivals: quiet spells and bursts.

    The process alternates between a quiet and a burst state, each held for an exponential
    time, with Poisson arrivals at the state's rate. Given the mean rate ``workload.rate``,
    the burst rate is ``rate / (burst_fraction + (1 - burst_fraction) low_ratio)`` and the
    quiet one ``low_ratio`` times that; a burst lasts ``burst_fraction x cycle_s`` on average,
    a quiet spell the rest of the cycle.
    """

    low_ratio: float = Field(
        default=0.25, ge=0, lt=1, description="quiet rate / burst rate (0: on-off arrivals)"
    )
    burst_fraction: float = Field(
        default=0.2, ge=1e-3, le=0.999, description="long-run share of time spent in bursts"
    )
    cycle_s: float = Field(
        default=10.0, ge=1e-3, le=1e6, description="mean length of one quiet spell + burst (s)"
    )

    def rates(self, mean_rate: float) -> tuple[float, float]:
        """(quiet, burst) arrival rates for a mean rate (req/s)."""
        hi = mean_rate / (self.burst_fraction + (1.0 - self.burst_fraction) * self.low_ratio)
        return self.low_ratio * hi, hi

    def durations(self) -> tuple[float, float]:
        """Mean (quiet, burst) state durations (s)."""
        return (1.0 - self.burst_fraction) * self.cycle_s, self.burst_fraction * self.cycle_s


class WorkloadSpec(_Frozen):
    """Requests: when they arrive and how long they are.

    ``arrival: trace`` reads arrival times and lengths from a CSV (``trace``); ``arrival: replay``
    takes them from one benchmark of a GuideLLM or vLLM report (``report``, ``benchmark``);
    ``arrival: mmpp`` alternates quiet spells and bursts (``mmpp``).
    ``shared_prefix`` prepends shared system prompts; ``sessions`` makes the requests turns of
    multi-turn conversations (:mod:`sdsim.traffic`).
    """

    arrival: Literal["poisson", "constant", "gamma", "mmpp", "trace", "replay"] = "poisson"
    rate: float = Field(default=4.0, gt=0, le=1e6, description="requests per second")
    cv: float = Field(default=1.0, ge=1e-4, le=100, description="gap CV for gamma arrivals")
    mmpp: MmppSpec = Field(
        default_factory=MmppSpec, description="burst shape for mmpp arrivals"
    )
    num_requests: int = Field(
        default=2000,
        ge=1,
        le=MAX_REQUESTS,
        description=f"requests to simulate (at most {MAX_REQUESTS:,}: about 1 GB and tens of "
        "minutes with --summary-only)",
    )
    prompt_tokens: LengthSpec = FixedLength(value=512)
    output_tokens: LengthSpec = FixedLength(value=256)
    trace: PathStr | None = Field(
        default=None,
        description="request CSV: with arrival: trace its times and lengths are replayed; with "
        "another arrival process only its lengths (in order, cycling)",
    )
    report: PathStr | None = Field(
        default=None, description="GuideLLM/vLLM report for arrival: replay"
    )
    benchmark: int | str | None = Field(
        default=None,
        description="benchmark of `report` to replay: 0-based index or benchmark id (default 0)",
    )
    shared_prefix: SharedPrefixSpec | None = None
    sessions: SessionSpec | None = None

    @field_validator("prompt_tokens", "output_tokens", mode="before")
    @classmethod
    def _expand_lengths(cls, v: Any) -> Any:
        return _length_shorthand(v)

    @model_validator(mode="after")
    def _trace_needs_file(self) -> WorkloadSpec:
        for name in ("prompt_tokens", "output_tokens"):
            if isinstance(getattr(self, name), CcdfLength):
                raise ScenarioError(
                    name,
                    "dist 'ccdf' is for sessions.turns and shared_prefix.tokens; prompt and answer "
                    "lengths take fixed, uniform, lognormal, geometric, empirical or trace",
                )
        if self.arrival == "trace" and not self.trace:
            raise ScenarioError("trace", "arrival 'trace' needs `trace:` (path to a CSV)")
        if self.arrival == "replay" and not self.report:
            raise ScenarioError(
                "report", "arrival 'replay' needs `report:` (path to a GuideLLM/vLLM report)"
            )
        if self.sessions is not None and (self.arrival in ("trace", "replay") or self.trace):
            raise ValueError(
                "sessions: start times come from arrival poisson, gamma or constant, lengths from "
                "length laws (a trace's columns: {dist: trace, path: ..., column: ...})"
            )
        return self
