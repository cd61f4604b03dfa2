"""Tables every command prints: one layout, human units, no wrapped cells.

:func:`render_table` lays a table out for the console's width (100 columns when the output is not
a terminal): bordered when it fits, a compact borderless layout when it does not, and split into
several tables that repeat the row label when even that is too wide. A cell never wraps. Latency
columns (:class:`Column` ``kind="time"``, values in seconds) are shown in the unit that suits the
column (s, ms or µs, named in the header); every row starts with a label.
"""

from __future__ import annotations

__all__ = [
    "WIDTH",
    "Column",
    "alpha_text",
    "fmt",
    "ms",
    "out",
    "pct",
    "print_summary",
    "render_table",
    "time_cells",
]

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from sdsim.labels import METRICS, metric_label, sig3, time_unit

# Width a table is laid out for when the output is not a terminal (files, pipes, CI logs).
WIDTH = 100


def _stdout_console() -> Console:
    console = Console()
    return console if console.is_terminal else Console(width=WIDTH)


# Standard output of every command (tables, results); errors and warnings go to `app.err`.
out = _stdout_console()

Kind = Literal["text", "words", "label", "time", "num", "int", "pct", "signed_pct"]


@dataclass(frozen=True)
class Column:
    """One column of a table.

    Attributes
    ----------
    header
        Column heading; the unit goes on a second heading line: the chosen time unit for
        ``kind="time"``, ``unit`` otherwise.
    kind
        ``label`` (the row label, left-aligned), ``text`` (shown as given, right-aligned, for
        numbers already formatted), ``words`` (shown as given, left-aligned), ``time`` (seconds,
        shown in s, ms or µs chosen for the column), ``num`` (4 significant digits), ``int``,
        ``pct`` (a fraction as a percentage) or ``signed_pct`` (a relative error, ``+3.1%``).
    unit
        Unit of a ``num`` or ``int`` column, shown in the heading.
    """

    header: str
    kind: Kind = "num"
    unit: str = ""


def alpha_text(acceptance: Any) -> str:
    """A scenario's acceptance law in a title: ``α=0.7``, ``α≈0.747 (preset NAME)`` (the mean
    over positions), ``α≈0.7 (beta per request)``."""
    a = acceptance.alpha
    mean = f"{acceptance.mean_alpha:.3g}"
    if isinstance(a, list):
        return f"α≈{mean} " + (f"(preset {acceptance.preset})" if acceptance.preset
                                else "(per position)")
    if not isinstance(a, int | float):
        return f"α≈{mean} (beta per request)"
    return f"α={mean}"


def fmt(v: Any) -> str:
    """A value as the tables show it: 4 significant digits, NaN as ``-``, inf as ``∞``, yes/NO."""
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        if math.isinf(v):
            return "∞" if v > 0 else "-∞"
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e6):
            return f"{v:.3e}"
        if abs(v) >= 1e4:
            return f"{v:,.0f}"
        return f"{v:.4g}"
    return str(v)


def ms(v: Any) -> str:
    """Seconds shown as milliseconds (4 significant digits)."""
    return fmt(float(v) * 1e3) if isinstance(v, (int, float)) else str(v)


def pct(v: float) -> str:
    """A relative error as a signed percentage."""
    return f"{v * 100:+.1f}%" if math.isfinite(v) else "-"


def time_cells(seconds: Sequence[Any]) -> tuple[str, list[str]]:
    """Durations (seconds) as cells in one unit chosen for all of them.

    Returns
    -------
    (unit, cells)
        ``unit`` is ``s``, ``ms`` or ``µs``; infinite values read ``∞``, NaN and missing ones ``-``.
    """
    vals = [float(v) if isinstance(v, int | float) else math.nan for v in seconds]
    unit, factor = time_unit(vals)
    cells = []
    for v in vals:
        if math.isnan(v):
            cells.append("-")
        elif math.isinf(v):
            cells.append("∞")
        else:
            cells.append(sig3(v * factor))
    return unit, cells


def _cells(col: Column, values: Sequence[Any]) -> tuple[str, list[str | Text]]:
    """The heading and the formatted cells of one column."""
    head = col.header
    cells: list[str | Text]
    if col.kind == "time":
        unit, tc = time_cells(values)
        return f"{head}\n({unit})", list(tc)
    if col.kind in ("text", "words", "label"):
        cells = [v if isinstance(v, Text) else ("-" if v is None else str(v)) for v in values]
    elif col.kind == "int":
        cells = [
            str(int(v)) if isinstance(v, int | float) and math.isfinite(v) else fmt(v)
            for v in values
        ]
    elif col.kind == "pct":
        cells = [
            f"{float(v):.0%}" if isinstance(v, int | float) and math.isfinite(v) else "-"
            for v in values
        ]
    elif col.kind == "signed_pct":
        cells = [pct(float(v)) if isinstance(v, int | float) else str(v) for v in values]
    else:
        cells = [fmt(v) for v in values]
    if col.unit:
        head = f"{head}\n({col.unit})"
    return head, cells


def _build(
    heads: list[str],
    kinds: list[Kind],
    body: list[list[str | Text]],
    compact: bool,
    wrap: bool = False,
) -> Table:
    table = Table(
        box=None if compact else box.SIMPLE_HEAD,
        header_style="bold",
        padding=(0, 1),
        pad_edge=False,
        show_edge=False,
        collapse_padding=compact,
    )
    for h, k in zip(heads, kinds, strict=True):
        table.add_column(
            h,
            justify="left" if k in ("label", "words") else "right",
            no_wrap=not (wrap and k in ("text", "words")),
            overflow="fold",
        )
    for row in body:
        table.add_row(*row)
    return table


def _width(console: Console, table: Table) -> int:
    return console.measure(table, options=console.options.update(max_width=10**6)).maximum


def render_table(
    title: str | None,
    columns: Sequence[Column],
    rows: Sequence[Sequence[Any]],
    *,
    console: Console | None = None,
    notes: Sequence[str] = (),
) -> None:
    """Print a table laid out for the console's width.

    Parameters
    ----------
    title
        A line printed above the table (bold).
    columns
        Column specs; the first should be the row label (``kind="label"``).
    rows
        Raw values per row, one per column (seconds for ``time`` columns).
    console
        Where to print (default: the CLI's standard output console).
    notes
        Lines printed under the table (what a number means, which model it comes from).
    """
    console = console if console is not None else out
    heads: list[str] = []
    kinds: list[Kind] = [c.kind for c in columns]
    cols: list[list[str | Text]] = []
    for j, col in enumerate(columns):
        h, cells = _cells(col, [r[j] for r in rows])
        heads.append(h)
        cols.append(cells)
    body = [[cols[j][i] for j in range(len(columns))] for i in range(len(rows))]
    width = console.width
    if title:
        console.print(Text(title, style="bold"))
    table = _build(heads, kinds, body, compact=False)
    if _width(console, table) > width:
        table = _build(heads, kinds, body, compact=True)
    if _width(console, table) <= width:
        console.print(table)
    else:
        for group in _split(console, heads, kinds, body, width):
            t = _build(*group, compact=True)
            if _width(console, t) > width:
                # one text column wider than the console on its own: let it wrap
                t = _build(*group, compact=True, wrap=True)
            console.print(t)
    for line in notes:
        console.print(line, highlight=False, markup=False)


def _split(
    console: Console, heads: list[str], kinds: list[Kind], body: list[list[str | Text]], width: int
) -> list[tuple[list[str], list[Kind], list[list[str | Text]]]]:
    """Column groups that each fit ``width``, every group starting with the row label column."""
    groups: list[list[int]] = []
    current: list[int] = [0]
    for j in range(1, len(heads)):
        trial = [*current, j]
        t = _build([heads[i] for i in trial], [kinds[i] for i in trial],
                   [[r[i] for i in trial] for r in body], compact=True)
        if _width(console, t) > width and len(current) > 1:
            groups.append(current)
            current = [0, j]
        else:
            current = trial
    groups.append(current)
    return [
        ([heads[i] for i in g], [kinds[i] for i in g], [[r[i] for i in g] for r in body])
        for g in groups
    ]


# Summary scalars `print_summary` lists under the latency table, in this order.
SUMMARY_FACTS = (
    "completed",
    "throughput_rps",
    "throughput_tps",
    "tokens_per_step_mean",
    "draft_acceptance_rate",
    "k_mean",
    "batch_mean",
    "in_system_mean",
    "little_residual",
    "preemptions",
    "kv_blocks_total",
    "kv_peak_blocks",
    "kv_util_mean",
    "stable",
    "seed",
    "sdsim_version",
)


def latency_rows(summary: dict[str, Any]) -> list[list[Any]]:
    """Rows ``[metric, unit, mean, p50, p90, p99]`` of e2e, TTFT and TPOT, each row in the unit
    that suits its values."""
    rows: list[list[Any]] = []
    for m, name in (("e2e", "e2e"), ("ttft", "TTFT"), ("tpot", "TPOT")):
        unit, cells = time_cells([summary.get(f"{m}_{s}", math.nan) for s in _STATS])
        rows.append([name, unit, *cells])
    return rows


_STATS = ("mean", "p50", "p90", "p99")


def print_summary(
    summary: dict[str, Any],
    title: str,
    *,
    notes: Sequence[str] = (),
    facts: Sequence[str] = SUMMARY_FACTS,
    console: Console | None = None,
) -> None:
    """Print a run or prediction summary: latencies (mean and quantiles, one unit per row), then
    the scalars named in ``facts`` with their units."""
    render_table(
        title,
        [Column("latency", "label"), Column("unit", "text"),
         *(Column(s, "text") for s in _STATS)],
        latency_rows(summary),
        console=console,
        notes=notes,
    )
    rows = []
    for key in facts:
        if key not in summary:
            continue
        v = summary[key]
        lab = METRICS.get(key)
        if lab is not None and lab.unit == "s" and isinstance(v, int | float):
            unit, (cell,) = time_cells([v])
            rows.append([metric_label(key, unit), cell])
        else:
            rows.append([metric_label(key) if lab else key, fmt(v)])
    slos = [k.removeprefix("slo_margin_") for k in summary if k.startswith("slo_margin_")]
    if slos:  # the scenario has SLOs: goodput and how each one fares
        for key in ("goodput_rps", "slo_attainment", "slo_met"):
            if key in summary:
                rows.append([metric_label(key), fmt(summary[key])])
        for k in slos:
            rows.append(
                [f"SLO {k}: attainment / margin",
                 f"{fmt(summary[f'slo_attainment_{k}'])} / {summary[f'slo_margin_{k}']:+.0%}"]
            )
    render_table(None, [Column("quantity", "label"), Column("value", "text")], rows,
                 console=console)
