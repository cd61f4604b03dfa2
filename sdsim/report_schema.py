"""The typed schema of the serving-benchmark reports sdsim reads: GuideLLM (``metadata.version``
2) and vLLM ``bench serve`` result JSON.

Every field :mod:`sdsim.report_formats` uses is declared here with its type and a physical range,
so a malformed report is refused with one line naming the field inside the file
(``benchmarks[0].requests.successful[3].output_tokens: ...``) instead of a traceback or silently
wrong numbers. Fields sdsim does not use are ignored, so reports from newer versions with more
fields still load. The ranges are wide (any real benchmark fits) but finite:

* token counts: integers in ``[0, 10**8]``;
* durations: seconds in ``[0, 10**7]`` (about four months), milliseconds in ``[0, 10**10]``;
* timestamps (epoch or monotonic seconds): ``[0, 10**11]``;
* rates: ``[0, 10**7]`` per second.

A per-request record's timings must run forward (``request_start <= first_token <= last_token <=
request_end``, to within a millisecond of clock jitter): swapped times would give negative
latencies. An aggregate the tool wrote as NaN (vLLM's ``json.dump`` does when a statistic is
undefined) counts as absent; a per-request value must be a real number.
"""

from __future__ import annotations

__all__ = [
    "GuideLLMBenchmark",
    "GuideLLMReport",
    "GuideLLMRequest",
    "VllmResult",
    "validate_report",
]

import math
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from sdsim.errors import ScenarioError, format_validation_error

# Clock jitter allowed between a request's timestamps (taken by different threads of the tool).
TIMING_SLACK_S = 1e-3


def _nan_is_absent(v: Any) -> Any:
    return None if isinstance(v, float) and math.isnan(v) else v


Tokens = Annotated[int, Field(ge=0, le=10**8)]
Seconds = Annotated[float, Field(ge=0, le=1e7)]
Millis = Annotated[float, Field(ge=0, le=1e10)]
Stamp = Annotated[float, Field(ge=0, le=1e11)]
Rate = Annotated[float, Field(ge=0, le=1e7)]
# aggregates may be NaN (undefined statistic): read as absent
AggSeconds = Annotated[Seconds | None, BeforeValidator(_nan_is_absent)]
AggMillis = Annotated[Millis | None, BeforeValidator(_nan_is_absent)]
AggRate = Annotated[Rate | None, BeforeValidator(_nan_is_absent)]
AggCount = Annotated[float | None, Field(ge=0, le=1e12), BeforeValidator(_nan_is_absent)]


class _Lenient(BaseModel):
    """Known fields typed and bounded; unknown fields ignored (newer tool versions add many)."""

    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)


# --------------------------------------------------------------------------- GuideLLM


class GuideLLMTimings(_Lenient):
    """``info.timings`` of one request: epoch seconds."""

    targeted_start: Stamp | None = None
    request_start: Stamp | None = None
    first_token_iteration: Stamp | None = None
    last_token_iteration: Stamp | None = None
    request_end: Stamp | None = None

    @model_validator(mode="after")
    def _forward(self) -> GuideLLMTimings:
        order = ("request_start", "first_token_iteration", "last_token_iteration", "request_end")
        seen: tuple[str, float] | None = None
        for name in order:
            v = getattr(self, name)
            if v is None:
                continue
            if seen is not None and v < seen[1] - TIMING_SLACK_S:
                raise ScenarioError(
                    name, f"{v!r} is before {seen[0]} ({seen[1]!r}): timings must run forward"
                )
            seen = (name, v)
        return self


class GuideLLMInfo(_Lenient):
    """``info`` of one request."""

    timings: GuideLLMTimings | None = None


class GuideLLMRequest(_Lenient):
    """One successful request of a GuideLLM benchmark."""

    info: GuideLLMInfo | None = None
    request_start_time: Stamp | None = None
    request_end_time: Stamp | None = None
    prompt_tokens: Tokens | None = None
    output_tokens: Tokens | None = None
    request_latency: Seconds | None = None
    time_to_first_token_ms: Millis | None = None
    inter_token_latency_ms: Millis | None = None

    @property
    def timings(self) -> GuideLLMTimings:
        """The request's timings (all absent when the record has none)."""
        if self.info is not None and self.info.timings is not None:
            return self.info.timings
        return GuideLLMTimings()


class GuideLLMStat(_Lenient):
    """One distribution summary (``metrics.<name>.successful``)."""

    mean: AggCount = None
    median: AggCount = None
    percentiles: dict[str, AggCount] | None = None


class GuideLLMMetric(_Lenient):
    """``metrics.<name>``: only the successful requests' statistics are read."""

    successful: GuideLLMStat | None = None


class GuideLLMMetrics(_Lenient):
    """The aggregates of one benchmark sdsim reads."""

    requests_per_second: GuideLLMMetric | None = None
    request_concurrency: GuideLLMMetric | None = None
    prompt_token_count: GuideLLMMetric | None = None
    output_token_count: GuideLLMMetric | None = None
    time_to_first_token_ms: GuideLLMMetric | None = None
    inter_token_latency_ms: GuideLLMMetric | None = None
    time_per_output_token_ms: GuideLLMMetric | None = None
    request_latency: GuideLLMMetric | None = None


class GuideLLMStrategy(_Lenient):
    """``config.strategy``: the load pattern."""

    type_: str = "unknown"
    rate: AggRate = None


class GuideLLMConfig(_Lenient):
    """``config`` of one benchmark."""

    id_: str | int | None = None
    strategy: GuideLLMStrategy | None = None


class GuideLLMRequests(_Lenient):
    """``requests``: only the successful ones are read."""

    successful: list[GuideLLMRequest] = Field(default_factory=list)

    @field_validator("successful", mode="before")
    @classmethod
    def _null_is_empty(cls, v: Any) -> Any:
        return [] if v is None else v


class GuideLLMBenchmark(_Lenient):
    """One entry of ``benchmarks[]`` (one strategy run)."""

    config: GuideLLMConfig | None = None
    requests: GuideLLMRequests | None = None
    metrics: GuideLLMMetrics | None = None
    duration: AggSeconds = None


class GuideLLMMetadata(_Lenient):
    """``metadata``: the report schema version."""

    version: int


class GuideLLMReport(_Lenient):
    """A GuideLLM ``benchmarks.json`` / ``.yaml`` report (schema ``metadata.version: 2``)."""

    metadata: GuideLLMMetadata
    benchmarks: list[GuideLLMBenchmark] = Field(min_length=1)

    @field_validator("metadata")
    @classmethod
    def _version(cls, v: GuideLLMMetadata) -> GuideLLMMetadata:
        if v.version != 2:
            raise ScenarioError(
                "version", f"report schema version {v.version!r} is not supported (2 is)"
            )
        return v


# --------------------------------------------------------------------------- vLLM

def _rate(v: Any) -> Any:
    # vLLM writes request_rate as Infinity (or the string "inf") for a throughput run
    if isinstance(v, str) and v.strip().lower() in ("inf", "infinity"):
        return None
    if isinstance(v, float) and (math.isinf(v) or math.isnan(v)):
        return None
    return v


class _VllmAggregates(_Lenient):
    """vLLM's latency aggregates, milliseconds (``mean_ttft_ms``, ``p99_e2el_ms``, ...)."""

    mean_ttft_ms: AggMillis = None
    median_ttft_ms: AggMillis = None
    p50_ttft_ms: AggMillis = None
    p90_ttft_ms: AggMillis = None
    p99_ttft_ms: AggMillis = None
    mean_tpot_ms: AggMillis = None
    median_tpot_ms: AggMillis = None
    p50_tpot_ms: AggMillis = None
    p90_tpot_ms: AggMillis = None
    p99_tpot_ms: AggMillis = None
    mean_e2el_ms: AggMillis = None
    median_e2el_ms: AggMillis = None
    p50_e2el_ms: AggMillis = None
    p90_e2el_ms: AggMillis = None
    p99_e2el_ms: AggMillis = None


class VllmResult(_VllmAggregates):
    """A vLLM ``bench serve`` result JSON (``--save-result``, with or without details)."""

    request_rate: Annotated[Rate | None, BeforeValidator(_rate)] = None
    burstiness: Annotated[float | None, Field(gt=0, le=1e6), BeforeValidator(_nan_is_absent)] = (
        None
    )
    label: str | None = None
    completed: Annotated[int | None, Field(ge=0, le=10**9)] = None
    duration: AggSeconds = None
    request_throughput: AggRate = None
    total_input_tokens: AggCount = None
    total_output_tokens: AggCount = None
    input_lens: list[Tokens] | None = None
    output_lens: list[Tokens] | None = None
    ttfts: list[Annotated[Seconds | None, BeforeValidator(_nan_is_absent)]] | None = None
    itls: list[list[Seconds] | None] | None = None
    errors: list[str | None] | None = None
    start_times: list[Annotated[Stamp | None, BeforeValidator(_nan_is_absent)]] | None = None

    @model_validator(mode="after")
    def _same_lengths(self) -> VllmResult:
        if not self.ttfts:
            return self
        n = len(self.ttfts)
        for name in ("input_lens", "output_lens", "itls", "errors", "start_times"):
            v = getattr(self, name)
            if v is not None and v and len(v) != n:
                raise ScenarioError(
                    name, f"has {len(v)} entries, ttfts has {n}: per-request arrays must match"
                )
        return self


def validate_report(data: Any, field: str = "report", where: str = "") -> BaseModel:
    """Validate parsed report data as a GuideLLM report or a vLLM result.

    Parameters
    ----------
    data
        The parsed JSON/YAML.
    field
        Prefix of the field named in errors (``report``, ``workload.report``).
    where
        The file, added to error messages.

    Returns
    -------
    GuideLLMReport or VllmResult

    Raises
    ------
    ScenarioError
        Not a report of a known kind, or a field of the wrong type or out of range.
    """
    if not isinstance(data, dict):
        raise ScenarioError(field, f"expected a mapping, got {type(data).__name__}")
    model: type[BaseModel]
    if "benchmarks" in data and "metadata" in data:
        model = GuideLLMReport
    elif any(k in data for k in ("request_throughput", "mean_ttft_ms", "ttfts")):
        model = VllmResult
    else:
        raise ScenarioError(
            field,
            "not a GuideLLM report (metadata + benchmarks[]) or a vLLM bench serve result "
            "(request_throughput, mean_ttft_ms, ...)",
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = format_validation_error(exc, prefix=field, model=model)
        msg = f"{err.message} (in {where})" if where else err.message
        raise ScenarioError(err.field, msg) from None
