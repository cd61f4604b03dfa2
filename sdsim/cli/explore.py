"""`sdsim explore`: a local page of the model's panels that redraws as its controls move."""

from __future__ import annotations

__all__ = ["explore"]

from pathlib import Path
from typing import Annotated

import typer

from sdsim.cli.app import SetOpt, err, load


def explore(
    scenario: Annotated[
        Path | None, typer.Argument(help="scenario YAML file (default: the built-in defaults)")
    ] = None,
    set_: SetOpt = None,
    host: Annotated[str, typer.Option("--host", help="address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port (0 = any free port)")] = 8765,
) -> None:
    """Serve an interactive page of the model's panels (offline, loopback by default)."""
    from sdsim.explore import serve  # deferred: the web app is only needed here

    scn = load(scenario, set_)
    if host not in ("127.0.0.1", "localhost", "::1"):
        err.print(f"[yellow]warning:[/] binding {host}: reachable beyond this machine")
    serve(scn, host=host, port=port)
