"""A sweep's results on disk: one checksummed parquet file per run, read back only when trusted.

Every run of a sweep is written at once, atomically, as ``DIR/results/<run_key>.parquet`` with
its run key and the SHA-256 of its row in the file's metadata, so that a truncated, edited or
foreign file is never taken for a finished run (:func:`read_result`). ``DIR/sweep.json`` holds the
plan that wrote the directory last (:func:`load_sweep_dir`).
"""

from __future__ import annotations

__all__ = [
    "LOCK_FILE",
    "META_FILE",
    "RESULTS_DIR",
    "RUN_COLUMNS",
    "canonical_json",
    "column_value",
    "load_sweep_dir",
    "pyarrow_modules",
    "read_result",
    "read_runs",
    "runs_frame",
    "stamped",
    "write_row",
    "write_sidecar",
]

import hashlib
import json
from pathlib import Path
from typing import Any

import pandas as pd

from sdsim.errors import ScenarioError
from sdsim.inputs import load_json
from sdsim.outputs import atomic_write, atomic_write_text
from sdsim.provenance import provenance, sidecar_path

# Columns every run row has besides the swept fields and the metrics.
RUN_COLUMNS = ("run_key", "point", "point_key", "replication", "scenario_hash", "seed", "error")
RESULTS_DIR = "results"
META_FILE = "sweep.json"
LOCK_FILE = ".sweep.lock"


def canonical_json(obj: Any) -> str:
    """``obj`` as JSON text with sorted keys and no spaces: equal values give equal text."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def column_value(v: Any) -> Any:
    """``v`` as one parquet column value: scalars as they are, anything else as canonical JSON."""
    # Parquet columns need one type; lists and mappings (per-position alpha, length laws) are kept
    # as their canonical JSON text.
    if v is None or isinstance(v, bool | int | float | str):
        return v
    return canonical_json(v)


def pyarrow_modules() -> Any:
    """``(pyarrow, pyarrow.parquet)``, or a ScenarioError naming the extra to install."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:  # pyarrow is in the sweep and test extras
        raise ScenarioError("sweep", "needs pyarrow: pip install 'sdsim[sweep]'") from None
    return pa, pq


# Parquet key-value metadata of a result file: its run key and the SHA-256 of its row, checked
# on every read so that a truncated, edited or foreign file is never taken for a finished run.
_KEY_META = b"sdsim.run_key"
_SUM_META = b"sdsim.row_sha256"


def _row_digest(row: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(row).encode()).hexdigest()


def write_row(results: Path, row: dict[str, Any]) -> Path:
    """Write one run row atomically as ``results/<run_key>.parquet`` with its checksum."""
    pa, pq = pyarrow_modules()
    table = pa.Table.from_pylist([row])
    # the digest of the row as it reads back (the types parquet keeps), so a re-read matches
    meta = {_KEY_META: str(row["run_key"]).encode(), _SUM_META: _row_digest(table.to_pylist()[0])}
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **meta})
    return atomic_write(results / f"{row['run_key']}.parquet", lambda p: pq.write_table(table, p))


def stamped(table: Any, seed: int | None) -> Any:
    """A pyarrow table with the sdsim version and base seed in its schema metadata (``sdsim``)."""
    stamp = json.dumps(provenance(seed, seeds="per run: column seed of results/*.parquet"))
    return table.replace_schema_metadata({**(table.schema.metadata or {}), b"sdsim": stamp})


def write_sidecar(path: Path, seed: int | None, **extra: Any) -> None:
    """Write the provenance record of ``path`` (:func:`sdsim.provenance.sidecar`) atomically."""
    text = json.dumps(provenance(seed, file=path.name, **extra), indent=1) + "\n"
    atomic_write_text(sidecar_path(path), text)


def read_result(path: str | Path) -> dict[str, Any] | str:
    """One result file: its row, or why it cannot be trusted.

    Parameters
    ----------
    path
        ``DIR/results/<run_key>.parquet``.

    Returns
    -------
    dict or str
        The row; or a one-line reason (unreadable, not one row, no or wrong checksum, a run key
        that is not the file's name).
    """
    _, pq = pyarrow_modules()
    p = Path(path)
    try:
        table = pq.read_table(p)
        rows = table.to_pylist()
    except Exception as exc:  # pyarrow raises several types for truncated or foreign bytes
        return f"unreadable ({type(exc).__name__})"
    meta = table.schema.metadata or {}
    if len(rows) != 1:
        return f"holds {len(rows)} rows, not 1"
    row = rows[0]
    if _SUM_META not in meta or _KEY_META not in meta:
        return "no checksum"
    if meta[_KEY_META].decode(errors="replace") != p.stem or row.get("run_key") != p.stem:
        return "its run key is not its file name"
    if meta[_SUM_META].decode(errors="replace") != _row_digest(row):
        return "checksum mismatch (edited or damaged)"
    missing = [c for c in RUN_COLUMNS if c not in row]
    if missing:
        return f"lacks columns {missing}"
    return row


def read_runs(out_dir: str | Path, damaged: list[tuple[Path, str]] | None = None) -> pd.DataFrame:
    """Every trustworthy run row under ``DIR/results`` (one per point × replication), by point.

    Rows of runs that a later, changed sweep no longer contains are included; filter on
    ``run_key`` (``sweep.json`` lists the current ones) to drop them. Files that fail
    :func:`read_result` are left out and, when ``damaged`` is given, appended to it with the
    reason.
    """
    results = Path(out_dir) / RESULTS_DIR
    rows: list[dict[str, Any]] = []
    # a dot-file is the temporary of a writer killed mid-write (outputs.atomic_write), not a run
    for f in sorted(f for f in results.glob("*.parquet") if not f.name.startswith(".")):
        got = read_result(f)
        if isinstance(got, str):
            if damaged is not None:
                damaged.append((f, got))
            continue
        rows.append(got)
    return runs_frame(rows)


def runs_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Run rows as a frame ordered by point, replication and run key (empty: the run columns)."""
    if not rows:
        return pd.DataFrame(columns=list(RUN_COLUMNS))
    df = pd.DataFrame(rows)
    return df.sort_values(["point", "replication", "run_key"], kind="stable").reset_index(drop=True)


def load_sweep_dir(out_dir: str | Path) -> tuple[dict[str, Any], pd.DataFrame]:
    """The metadata (``sweep.json``) and the current runs of a sweep output directory.

    Raises
    ------
    ScenarioError
        When DIR holds no sweep.
    """
    d = Path(out_dir)
    meta_path = d / META_FILE
    if not meta_path.is_file():
        raise ScenarioError(str(out_dir), f"not a sweep output directory (no {META_FILE})")
    try:
        meta = load_json(meta_path.read_text(), str(meta_path))
    except (OSError, UnicodeDecodeError):
        meta = None
    if not isinstance(meta, dict) or not isinstance(meta.get("run_keys"), list):
        raise ScenarioError(str(out_dir), f"{META_FILE} is damaged; re-run the sweep to rewrite it")
    runs = read_runs(d)
    if len(runs):
        runs = runs[runs["run_key"].isin(set(meta["run_keys"]))].reset_index(drop=True)
    return meta, runs
