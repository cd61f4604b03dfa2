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
]

import math
import os
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


def check_writable(path: Path, option: str = "--out") -> None:
    """Refuse (as bad input for ``option``) an output path that cannot be created or written."""
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ScenarioError(option, f"{probe} is not a directory (allowed: a writable directory)")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ScenarioError(option, f"directory {probe} is not writable")


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
        where = exc.filename if exc.filename is not None else "file"
        err.print(
            f"error: {where}: {exc.strerror or exc.__class__.__name__}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(2)
    except Exception as exc:
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
