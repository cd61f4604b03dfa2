"""Request trace CSVs: arrival times and lengths, and one length column as an empirical law.

Column aliases cover Vidur's trace files (``arrived_at``, ``num_prefill_tokens``,
``num_decode_tokens``). Read by the workload (:mod:`sdsim.workload`) and by the ``{dist: trace}``
length law of a scenario (:class:`sdsim.scenario.TraceLength`).
"""

from __future__ import annotations

__all__ = ["read_trace", "trace_lengths"]

import functools
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd

from sdsim.errors import ScenarioError


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


@functools.lru_cache(maxsize=32)
def _trace_column(path: str, column: str, mtime: float) -> npt.NDArray[np.int64]:
    values = read_trace(path, require_arrival=False)[column].to_numpy(dtype=np.int64)
    values.setflags(write=False)
    return values


def trace_lengths(path: str | Path, column: str) -> npt.NDArray[np.int64]:
    """One length column of a request trace CSV (:func:`read_trace`'s columns and aliases), read
    once per file version: the values a ``{dist: trace}`` length law draws from.

    Raises
    ------
    ScenarioError
        Missing or unreadable file, missing column, lengths below one token.
    """
    p = Path(path)
    if not p.exists():
        raise ScenarioError("workload.trace", f"trace file not found: {path}")
    return _trace_column(str(p.resolve()), column, p.stat().st_mtime)
