"""CSV files behind the workload: request traces (arrival times and lengths, one length column
as an empirical law) and survival tables of a discrete law.

Column aliases cover Vidur's trace files (``arrived_at``, ``num_prefill_tokens``,
``num_decode_tokens``). Read by the workload (:mod:`sdsim.workload`), by the ``{dist: trace}``
length law of a scenario (:class:`sdsim.scenario.TraceLength`) and by the ``{dist: ccdf}`` law
(:class:`sdsim.scenario.CcdfLength`, :func:`ccdf_law`).
"""

from __future__ import annotations

__all__ = ["ccdf_law", "read_ccdf", "read_trace", "trace_lengths"]

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


def read_ccdf(path: str | Path) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Read a survival table: a ``ccdf`` column, ``P(L >= value)``, and one other column holding
    the integer values it is given at (e.g. ``turns``).

    Raises
    ------
    ScenarioError
        Missing or unreadable file; not exactly two columns; values not whole, not >= 1 or not
        increasing; ccdf not in (0, 1], not decreasing, or not 1 at the first value (the law
        starts there); fewer than two rows (no decay to extend beyond the last).
    """
    field = "ccdf.path"
    p = Path(path)
    if not p.exists():
        raise ScenarioError(field, f"file not found: {path}")
    try:
        df = pd.read_csv(p, comment="#")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ScenarioError(field, f"cannot parse CSV: {exc.__class__.__name__}") from None
    others = [c for c in df.columns if c != "ccdf"]
    if "ccdf" not in df.columns or len(others) != 1:
        raise ScenarioError(
            field, f"needs a 'ccdf' column and one column of values, found {list(df.columns)}"
        )
    v = pd.to_numeric(df[others[0]], errors="coerce").to_numpy(dtype=np.float64)
    s = pd.to_numeric(df["ccdf"], errors="coerce").to_numpy(dtype=np.float64)
    if v.size < 2:
        raise ScenarioError(field, f"needs at least two rows, found {v.size} in {path}")
    if not (np.all(np.isfinite(v)) and np.all(v == np.rint(v)) and v[0] >= 1):
        raise ScenarioError(field, f"values must be whole numbers >= 1 in {path}")
    if np.any(np.diff(v) <= 0):
        raise ScenarioError(field, f"values must increase from row to row in {path}")
    if not (np.all(np.isfinite(s)) and np.all(s > 0) and np.all(s <= 1)):
        raise ScenarioError(field, f"ccdf must be in (0, 1] in {path}")
    if np.any(np.diff(s) >= 0):
        raise ScenarioError(field, f"ccdf must decrease from row to row in {path}")
    if s[0] != 1.0:
        raise ScenarioError(
            field, f"ccdf must be 1 at the first value (P(L >= {int(v[0])}) = 1), got {s[0]:g}"
        )
    return v.astype(np.int64), s


@functools.lru_cache(maxsize=32)
def _ccdf_law(
    path: str, top: int, mtime: float
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    v, s = read_ccdf(path)
    t = np.arange(int(v[0]), max(top, int(v[0])) + 1, dtype=np.float64)
    log_s = np.log(s)
    # log-linear between the table's points; beyond the last, the last segment's decay per unit
    decay = (log_s[-1] - log_s[-2]) / float(v[-1] - v[-2])
    surv = np.where(
        t <= v[-1], np.exp(np.interp(t, v.astype(np.float64), log_s)),
        np.exp(log_s[-1] + decay * (t - v[-1])),
    )
    pmf = surv - np.append(surv[1:], 0.0)  # the top value takes the mass beyond it (clipped)
    values = t.astype(np.int64)
    values.setflags(write=False)
    pmf.setflags(write=False)
    return values, pmf


def ccdf_law(
    path: str | Path, top: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """The discrete law a survival table describes, on every integer from its first value to
    ``top``.

    ``P(L >= t)`` is interpolated log-linearly between the table's points (a geometric decay
    within each segment) and continued beyond the last point with the last segment's decay per
    unit; draws above ``top`` are clipped to it (its probability takes the tail).

    Parameters
    ----------
    path
        The table (:func:`read_ccdf`).
    top
        The largest value.

    Returns
    -------
    values, probabilities
        Consecutive integers and their probabilities (summing to 1), read once per file version.
    """
    p = Path(path)
    if not p.exists():
        raise ScenarioError("ccdf.path", f"file not found: {path}")
    return _ccdf_law(str(p.resolve()), int(top), p.stat().st_mtime)
