"""`sdsim serve`: the simulated engine behind an OpenAI-compatible streaming HTTP API."""

from __future__ import annotations

__all__ = ["serve"]

import math
from pathlib import Path
from typing import Annotated

import typer

from sdsim.api_requests import TokenCounter
from sdsim.cli.app import ScenarioArg, SeedOpt, SetOpt, err, load
from sdsim.errors import ScenarioError
from sdsim.serve import bind, create_app, run_server
from sdsim.serve_history import DEFAULT_WINDOW, MAX_WINDOW

# Longest drain a SIGTERM may ask for (an orchestrator's grace period is typically 30 s).
MAX_DRAIN_S = 3600.0


def serve(
    scenario: ScenarioArg,
    set_: SetOpt = None,
    seed: SeedOpt = None,
    host: Annotated[str, typer.Option("--host", help="address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port (0: any free port)")] = 8000,
    time_scale: Annotated[
        float, typer.Option("--time-scale", help="wall seconds per simulated second")
    ] = 1.0,
    model: Annotated[
        str | None, typer.Option("--model", help="model name to report (default: scenario target)")
    ] = None,
    default_max_tokens: Annotated[
        int, typer.Option("--default-max-tokens", help="output length when max_tokens is absent")
    ] = 256,
    tokenizer: Annotated[
        Path | None,
        typer.Option(
            "--tokenizer",
            help="a local tokenizer.json (or its folder) to count prompt text as a load "
            "generator does (default: max(words, characters / 4))",
        ),
    ] = None,
    drain_timeout: Annotated[
        float,
        typer.Option(
            "--drain-timeout",
            help="on SIGTERM/SIGINT, seconds to let in-flight requests finish before aborting them",
        ),
    ] = 5.0,
    history: Annotated[
        int,
        typer.Option(
            "--history",
            help="records of finished requests kept for /sdsim/requests (the last to finish; "
            "/sdsim/summary covers every request either way)",
        ),
    ] = DEFAULT_WINDOW,
) -> None:
    """Serve the simulated engine over an OpenAI-compatible streaming HTTP API."""
    scn = load(scenario, set_)
    if not (time_scale > 0 and math.isfinite(time_scale)):
        raise ScenarioError("--time-scale", f"must be a positive number (got {time_scale})")
    if not 0 <= port <= 65535:
        raise ScenarioError("--port", f"must be in 0..65535 (got {port})")
    if default_max_tokens < 1:
        raise ScenarioError("--default-max-tokens", "must be >= 1")
    if not 0 <= drain_timeout <= MAX_DRAIN_S:
        raise ScenarioError(
            "--drain-timeout", f"must be 0..{MAX_DRAIN_S:g} s (got {drain_timeout})"
        )
    if not 0 <= history <= MAX_WINDOW:
        raise ScenarioError("--history", f"must be 0..{MAX_WINDOW:,} records (got {history})")
    counter = TokenCounter.from_file(tokenizer) if tokenizer is not None else TokenCounter()
    application = create_app(
        scn,
        seed=seed,
        time_scale=time_scale,
        model=model,
        default_max_tokens=default_max_tokens,
        counter=counter,
        history=history,
    )
    sock = bind(host, port)
    bound = sock.getsockname()[1]
    if host not in ("127.0.0.1", "localhost", "::1"):
        err.print(f"[yellow]warning:[/] binding {host}: reachable beyond this machine")
    err.print(
        f"sdsim serve: {scn.name} (k={scn.spec.k}) at http://{host}:{bound}/v1, "
        f"time scale {time_scale:g}, prompt tokens counted by {counter.source}",
        highlight=False,
        soft_wrap=True,
    )

    def say(line: str) -> None:
        err.print(line, highlight=False, markup=False, soft_wrap=True)

    run_server(application, sock, drain_timeout, say)
