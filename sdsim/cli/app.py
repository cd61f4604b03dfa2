"""The `sdsim` command line: the typer app, its entry point, and what every command shares.

Every user mistake ends with exit code 2 and one line on stderr naming the field and what is
allowed; tracebacks are for bugs only. The commands live in one module per area (:mod:`.run`,
:mod:`.costs`, :mod:`.predict`, :mod:`.sweep`, :mod:`.fit`, :mod:`.serve`, :mod:`.explore`); each
parses its options, calls the library and prints.
"""

from __future__ import annotations

__all__ = [
    "LazyProgress",
    "OptScenario",
    "RatesOpt",
    "ScenarioArg",
    "SeedOpt",
    "SetOpt",
    "app",
    "check_records",
    "check_writable",
    "err",
    "fmt",
    "load",
    "main",
    "ms",
    "out",
    "parse_rates",
    "pct",
    "print_summary",
    "summary_json",
    "summary_notes",
]

import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, cast

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from sdsim.cli.tables import fmt, ms, out, pct, print_summary
from sdsim.errors import ScenarioError
from sdsim.outputs import resolve_output
from sdsim.scenario import Scenario, load_scenario, parse_set_options

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Latency of speculative decoding under load: simulate, predict, compare.",
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)

ScenarioArg = Annotated[Path, typer.Argument(help="scenario YAML file")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="dotted override, e.g. --set workload.rate=4 (repeatable)"),
]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="run seed (default: scenario seed)")]
RatesOpt = Annotated[
    list[str] | None,
    typer.Option("--rates", help="arrival rates in req/s, comma separated (repeatable)"),
]
OptScenario = Annotated[
    Path | None, typer.Option("--scenario", help="scenario YAML (server, k, alpha, costs)")
]


def load(path: Path | None, sets: list[str] | None) -> Scenario:
    """The scenario at ``path`` (the built-in defaults when ``None``) with ``--set`` overrides."""
    return load_scenario(path, parse_set_options(sets))


class LazyProgress:
    """A progress bar that appears only when the work takes more than ~1 second."""

    def __init__(self, label: str, delay_s: float = 1.0) -> None:
        self.label = label
        self.delay = delay_s
        self.t0 = time.perf_counter()
        self.bar: Progress | None = None
        self.task: Any = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            if not err.is_terminal or time.perf_counter() - self.t0 < self.delay:
                return
            self.bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=err,
                transient=True,
            )
            self.bar.start()
            self.task = self.bar.add_task(self.label, total=total)
        self.bar.update(self.task, completed=done, total=total)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def parse_rates(text: list[str] | None, option: str = "--rates") -> list[float] | None:
    """Rates from ``--rates 10,20 --rates 30`` (comma or space separated, req/s)."""
    if not text:
        return None
    vals: list[float] = []
    for chunk in text:
        for tok in chunk.replace(",", " ").split():
            try:
                v = float(tok)
            except ValueError:
                raise ScenarioError(option, f"not a number: {tok!r}") from None
            if not (v > 0 and math.isfinite(v)):
                raise ScenarioError(option, f"rates must be positive (got {tok})")
            vals.append(v)
    if not vals:
        raise ScenarioError(option, "no rates given")
    return vals


def check_writable(path: Path, option: str = "--out") -> Path:
    """Refuse (as bad input for ``option``) an output path that cannot be created or written;
    return it resolved (:func:`sdsim.outputs.resolve_output`)."""
    return resolve_output(path, option)


# Above this many requests a run that keeps every record needs gigabytes (about 1.6 kB per
# request for its request and step frames, measured at 1,000,000 requests: 1.9 GB peak).
MAX_RECORDED_REQUESTS = 1_000_000


def check_records(scn: Scenario, keep_records: bool) -> None:
    """Refuse a run whose records would not fit in memory (``--summary-only`` keeps it flat)."""
    n = scn.workload.num_requests
    if keep_records and n > MAX_RECORDED_REQUESTS:
        raise ScenarioError(
            "workload.num_requests",
            f"{n:,} requests with every record kept need ~{n * 1.6e3 / 1e9:.0f} GB; use "
            f"--summary-only (flat memory) or at most {MAX_RECORDED_REQUESTS:,} requests",
        )


def _plain(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    return v


def summary_json(summary: dict[str, Any]) -> str:
    """A summary as strict JSON: undefined (NaN) and infinite values become ``null``."""
    return json.dumps(_plain(summary), indent=2, default=str, allow_nan=False) + "\n"


# Why a summary metric is undefined (NaN), by what the run lacked.
_UNDEFINED = (
    (("tpot_mean", "tpot_p50", "tpot_p90", "tpot_p99"), "no measured request has two or more "
     "output tokens (TPOT is the gap between them)"),
    (("acceptance_rate", "k_mean"), "no token was drafted (spec.k = 0)"),
)


def summary_notes(summary: dict[str, Any]) -> list[str]:
    """Lines for stderr after a run: the stability verdict when it is not ``stable``, and why
    metrics are undefined (NaN) when some are."""
    notes: list[str] = []
    stable = summary.get("stable")
    reason = str(summary.get("stability_reason", ""))
    if stable is False:
        notes.append(
            f"warning: run is not stable ({reason}): the arrival rate exceeds what the server "
            "sustains, so latencies grow with the run length"
        )
    elif stable is None:
        notes.append(f"note: stability not judged: {reason}")
    undefined = sorted(k for k, v in summary.items() if isinstance(v, float) and math.isnan(v))
    if summary.get("kv_blocks_total") is None and "kv_util_mean" in undefined:
        undefined.remove("kv_util_mean")  # no capacity to use a share of: documented, not news
    if not undefined:
        return notes
    if int(summary.get("measured", 0) or 0) < 2:
        notes.append(
            f"note: undefined (NaN): {', '.join(undefined)}: the measurement window needs two or "
            f"more measured requests (measured {summary.get('measured', 0)}; lower "
            "warmup_requests or send more)"
        )
        return notes
    for keys, why in _UNDEFINED:
        hit = [k for k in keys if k in undefined]
        if hit:
            notes.append(f"note: undefined (NaN): {', '.join(hit)}: {why}")
            undefined = [k for k in undefined if k not in hit]
    rest = [k for k in undefined if k != "stability_p"]
    if rest:
        notes.append(f"note: undefined (NaN): {', '.join(rest)}")
    return notes


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the typer app, turning user errors into exit code 2 and one line."""
    handler: Callable[..., Any] = app
    try:
        rc = handler(args=argv, standalone_mode=False)
    except ScenarioError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err.print("aborted", markup=False)
        sys.exit(130)
    except OSError as exc:  # an --out / --plot path the system refuses (read-only, not a dir)
        where = str(exc.filename) if exc.filename is not None else "file"
        where = where if len(where) <= 200 else where[:197] + "..."
        err.print(
            f"error: {where}: {exc.strerror or exc.__class__.__name__}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(2)
    except Exception as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":
            # `sdsim` (or a command group) with nothing after it: the help is the answer. Typer's
            # rich help is already printed; click's plain help is the exception's message.
            text = str(cast(Any, exc).format_message()).strip()
            if text:
                out.print(text, markup=False, highlight=False)
            sys.exit(0)
        # click usage errors (unknown option or command, missing argument, bad type). Recent typer
        # versions vendor click, so their exceptions are not `click.ClickException`: recognise
        # them by what both provide.
        usage = hasattr(exc, "format_message") and isinstance(getattr(exc, "exit_code", None), int)
        if not usage:
            raise
        text = str(cast(Any, exc).format_message()).strip()
        msg = text.splitlines()[0] if text else exc.__class__.__name__
        err.print(f"error: {msg}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(int(getattr(exc, "exit_code", 2)))
    # with standalone_mode=False click returns a command's `typer.Exit` code instead of exiting
    if isinstance(rc, int) and rc != 0:
        sys.exit(rc)
