"""`sdsim serve`: the simulated engine behind an OpenAI-compatible streaming HTTP API."""

from __future__ import annotations

__all__ = ["serve"]

import math
from typing import Annotated

import typer

from sdsim.cli.app import ScenarioArg, SeedOpt, SetOpt, err, load
from sdsim.errors import ScenarioError
from sdsim.serve import create_app


def serve(
    scenario: ScenarioArg,
    set_: SetOpt = None,
    seed: SeedOpt = None,
    host: Annotated[str, typer.Option("--host", help="address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port")] = 8000,
    time_scale: Annotated[
        float, typer.Option("--time-scale", help="wall seconds per simulated second")
    ] = 1.0,
    model: Annotated[
        str | None, typer.Option("--model", help="model name to report (default: scenario target)")
    ] = None,
    default_max_tokens: Annotated[
        int, typer.Option("--default-max-tokens", help="output length when max_tokens is absent")
    ] = 256,
) -> None:
    """Serve the simulated engine over an OpenAI-compatible streaming HTTP API."""
    scn = load(scenario, set_)
    if not (time_scale > 0 and math.isfinite(time_scale)):
        raise ScenarioError("--time-scale", f"must be a positive number (got {time_scale})")
    if not 0 <= port <= 65535:
        raise ScenarioError("--port", f"must be in 0..65535 (got {port})")
    if default_max_tokens < 1:
        raise ScenarioError("--default-max-tokens", "must be >= 1")
    import uvicorn  # deferred: the HTTP server is only needed here

    application = create_app(
        scn, seed=seed, time_scale=time_scale, model=model, default_max_tokens=default_max_tokens
    )
    if host not in ("127.0.0.1", "localhost", "::1"):
        err.print(f"[yellow]warning:[/] binding {host}: reachable beyond this machine")
    err.print(
        f"sdsim serve: {scn.name} (k={scn.spec.k}) at http://{host}:{port}/v1, "
        f"time scale {time_scale:g}",
        highlight=False,
    )
    uvicorn.run(application, host=host, port=port, log_level="warning")
