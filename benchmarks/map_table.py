"""Print the error table of a ``validation-all.csv`` (from ``sdsim validate --all``) as the
markdown table of notes/analytic.md section 6 ("The map"), or rewrite that table in place.

One row per scenario and statistic (e2e mean, e2e p99, TTFT p99, TPOT p99), one column per
load (the fractions of the predicted saturation the map ran at). A cell is the model's error
relative to the simulation in %, ± the simulation's 95% CI half-width in %, then ``!`` where
the statistic fails (its whole CI outside the tolerance), ``?`` where the CI is too wide to
judge, ``o`` where ``predict`` says the rate is outside the model.

Run after a model change, once ``benchmarks/rescore_map.py`` has recomputed the model's columns::

    .venv/bin/python benchmarks/map_table.py                         # print the table
    .venv/bin/python benchmarks/map_table.py CSV --scenarios a,b     # some scenarios only
    .venv/bin/python benchmarks/map_table.py --write notes/analytic.md   # replace it there

``CSV`` defaults to ``notebooks/data/validation-all.csv``. ``--write FILE`` replaces the table
that starts with the header line ``| scenario, statistic |`` in FILE (there must be exactly one).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from sdsim.analytic.validation import TOO_WIDE

__all__ = ["ROWS", "cell", "map_table", "replace_table"]

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CSV = ROOT / "notebooks" / "data" / "validation-all.csv"
HEADER = "| scenario, statistic |"
# The statistics the table shows, in its row order.
ROWS = (("e2e", "mean"), ("e2e", "p99"), ("ttft", "p99"), ("tpot", "p99"))


def cell(row: pd.Series) -> str:
    """One table cell: ``error±half-width`` in %, then its marks (``!`` fails, ``?`` CI too
    wide, ``o`` outside the model)."""
    text = f"{row['rel_error'] * 100:+.1f}±{row['ci_half_width'] * 100:.0f}"
    marks = {"fails": "!", TOO_WIDE: "?"}.get(str(row["verdict"]))
    if marks:
        text += f" {marks}"
    if str(row["outside_model"]).lower() == "true":
        text += " o"
    return text


def map_table(df: pd.DataFrame, scenarios: Sequence[str] | None = None) -> list[str]:
    """The markdown table's lines (header, rule, one line per scenario and statistic).

    Parameters
    ----------
    df
        A ``validation-all.csv`` as read by pandas.
    scenarios
        Only these scenarios (default: every one, in alphabetical order).

    Returns
    -------
    list of str
    """
    names = sorted(df["scenario"].unique()) if scenarios is None else list(scenarios)
    missing = [n for n in names if n not in set(df["scenario"])]
    if missing:
        raise SystemExit(f"--scenarios: not in the table: {', '.join(missing)}")
    loads = sorted(df["fraction"].round(2).unique())
    lines = [
        HEADER + "".join(f" {f * 100:.0f}% |" for f in loads),
        "|---|" + "---|" * len(loads),
    ]
    for name in names:
        g = df[df["scenario"] == name].assign(load=lambda d: d["fraction"].round(2))
        for metric, stat in ROWS:
            sel = g[(g["metric"] == metric) & (g["statistic"] == stat)].set_index("load")
            cells = [cell(sel.loc[f]) if f in sel.index else "" for f in loads]
            lines.append(f"| {name} {metric} {stat} | " + " | ".join(cells) + " |")
    return lines


def replace_table(text: str, lines: Sequence[str]) -> str:
    """``text`` with its one table headed ``| scenario, statistic |`` replaced by ``lines``."""
    src = text.split("\n")
    starts = [i for i, s in enumerate(src) if s.startswith(HEADER)]
    if len(starts) != 1:
        raise SystemExit(f"--write: expected one table headed {HEADER!r}, found {len(starts)}")
    end = starts[0]
    while end < len(src) and src[end].startswith("|"):
        end += 1
    return "\n".join([*src[: starts[0]], *lines, *src[end:]])


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: see the module docstring."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("csv", nargs="?", type=Path, default=DEFAULT_CSV)
    ap.add_argument("--scenarios", help="comma-separated scenario names (default: all)")
    ap.add_argument("--write", type=Path, help="replace the table in this markdown file")
    args = ap.parse_args(argv)
    names = args.scenarios.split(",") if args.scenarios else None
    lines = map_table(pd.read_csv(args.csv), names)
    if args.write is None:
        print("\n".join(lines))
        return
    if names is not None:
        raise SystemExit("--write: rewrites the whole table, so not with --scenarios")
    args.write.write_text(replace_table(args.write.read_text(), lines))


if __name__ == "__main__":
    main()
