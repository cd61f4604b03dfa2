"""The workload section of a scenario: length laws and the request stream (``workload:``).

Validated, frozen pydantic models (:class:`sdsim.spec_base.Frozen`); :mod:`sdsim.scenario`
assembles them into a :class:`~sdsim.scenario.Scenario` (and re-exports them), and
:mod:`sdsim.workload` draws the requests from them.
"""

from __future__ import annotations

__all__ = [
    "EmpiricalLength",
    "FixedLength",
    "GeometricLength",
    "LengthSpec",
    "LognormalLength",
    "UniformLength",
    "WorkloadSpec",
]

import math
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from sdsim.spec_base import Frozen as _Frozen

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
            raise ValueError(f"high must be >= low (low={self.low}, high={self.high})")
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
            raise ValueError(f"max must be >= min (min={self.min}, max={self.max})")
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


LengthSpec = Annotated[
    FixedLength | UniformLength | LognormalLength | GeometricLength | EmpiricalLength,
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


class WorkloadSpec(_Frozen):
    """Requests: when they arrive and how long they are.

    ``arrival: trace`` reads arrival times and lengths from a CSV (``trace``); ``arrival: replay``
    takes them from one benchmark of a GuideLLM or vLLM report (``report``, ``benchmark``).
    """

    arrival: Literal["poisson", "constant", "gamma", "trace", "replay"] = "poisson"
    rate: float = Field(default=4.0, gt=0, le=1e6, description="requests per second")
    cv: float = Field(default=1.0, gt=0, le=100, description="gap CV for gamma arrivals")
    num_requests: int = Field(default=2000, ge=1, le=100_000_000)
    prompt_tokens: LengthSpec = FixedLength(value=512)
    output_tokens: LengthSpec = FixedLength(value=256)
    trace: str | None = Field(
        default=None,
        description="request CSV: with arrival: trace its times and lengths are replayed; with "
        "another arrival process only its lengths (in order, cycling)",
    )
    report: str | None = Field(default=None, description="GuideLLM/vLLM report for arrival: replay")
    benchmark: int | str | None = Field(
        default=None,
        description="benchmark of `report` to replay: 0-based index or benchmark id (default 0)",
    )

    @field_validator("prompt_tokens", "output_tokens", mode="before")
    @classmethod
    def _expand_lengths(cls, v: Any) -> Any:
        return _length_shorthand(v)

    @model_validator(mode="after")
    def _trace_needs_file(self) -> WorkloadSpec:
        if self.arrival == "trace" and not self.trace:
            raise ValueError("arrival 'trace' needs `trace:` (path to a CSV)")
        if self.arrival == "replay" and not self.report:
            raise ValueError("arrival 'replay' needs `report:` (path to a GuideLLM/vLLM report)")
        return self
