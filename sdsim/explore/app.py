"""The explorer's web app (Starlette): the page, its static files, and a small JSON API.

Routes
------
``GET /``                 the page (``static/index.html``)
``GET /static/...``       its script, style sheet and icon
``GET /vendor/plotly.js`` plotly.js as shipped inside the ``plotly`` Python package
``GET /api/options``      the lists the controls offer, the base scenario and its control values
``POST /api/view``        ``{base, controls}`` -> what the panels draw (:func:`panels.model_view`)
``POST /api/scenario``    ``{base, controls}`` -> the current settings as scenario YAML
``POST /api/load``        a scenario YAML file -> ``{base, controls}``
``POST /api/simulate``    ``{base, controls, runs}`` -> ``{job}`` (:class:`jobs.Jobs`)
``GET /api/jobs/{id}``    a job's state, progress and result

Bad input is answered with status 400 and ``{"field", "control", "error"}``: the scenario field at
fault, the page control it belongs beside (``null`` when none does) and the one-line message of
:class:`~sdsim.errors.ScenarioError`; never a traceback. Every response carries a
Content-Security-Policy that allows nothing but this server, so the page cannot reach the network
even by accident.
"""

from __future__ import annotations

__all__ = ["MAX_SIM_REQUESTS", "create_app", "plotly_js", "serve"]

import contextlib
import functools
import json
import socket
import sys
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import yaml
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sdsim.errors import ScenarioError
from sdsim.explore.controls import (
    CONTROL_FIELDS,
    choices,
    control_for_error,
    controls_of,
    error_field,
    scenario_with_controls,
)
from sdsim.explore.jobs import Jobs, check_runs
from sdsim.explore.panels import ViewCache, curve_key, jsonable, model_view
from sdsim.scenario import Scenario, scenario_from_dict

STATIC = Path(__file__).with_name("static")
# "simulate here" is for a quick look beside the model; longer runs belong to `sdsim run`
MAX_SIM_REQUESTS = 200_000
MAX_BODY_BYTES = 2_000_000
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; font-src 'self'; connect-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@functools.cache
def plotly_js() -> bytes:
    """plotly.js from the installed ``plotly`` package (its offline bundle).

    Raises
    ------
    ScenarioError
        When the optional dependency is missing (``pip install 'sdsim[explore]'``).
    """
    try:
        from plotly.offline import get_plotlyjs
    except ImportError:
        raise ScenarioError(
            "explore", "needs the plotly package: pip install 'sdsim[explore]'"
        ) from None
    return get_plotlyjs().encode()


class _BadRequest(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class _SecurityHeaders:
    """ASGI middleware: every response gets the Content-Security-Policy and ``nosniff``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["Content-Security-Policy"] = CSP
                headers["X-Content-Type-Options"] = "nosniff"
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _error(exc: ScenarioError | _BadRequest, controls: dict[str, Any] | None = None) -> Response:
    if isinstance(exc, ScenarioError):
        field, message = error_field(exc)
        control = control_for_error(exc, controls or {})
        body = {"field": field, "control": control, "error": f"{field}: {message}"}
    else:
        body = {"field": exc.field, "control": None, "error": str(exc)}
    return JSONResponse(body, status_code=400)


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise _BadRequest("request", f"body larger than {MAX_BODY_BYTES} bytes")
    try:
        data = json.loads(raw or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise _BadRequest("request", "body is not valid JSON") from None
    if not isinstance(data, dict):
        raise _BadRequest("request", "body must be a JSON object")
    return data


def _settings(data: dict[str, Any]) -> tuple[Scenario, dict[str, Any]]:
    base = data.get("base")
    controls = data.get("controls") or {}
    if not isinstance(base, dict):
        raise _BadRequest("base", "must be the base scenario as a JSON object")
    if not isinstance(controls, dict):
        raise _BadRequest("controls", "must be a JSON object of control values")
    scn, _ = scenario_with_controls(base, controls)
    return scn, controls


def _handler(
    fn: Callable[[Request, dict[str, Any]], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    """Turn bad input into 400 naming the field, and a bug into 500 with one line (the traceback
    goes to the server's console, not to the page)."""

    async def wrapped(request: Request) -> Response:
        controls: dict[str, Any] = {}
        try:
            return await fn(request, controls)
        except (ScenarioError, _BadRequest) as exc:
            return _error(exc, controls)
        except Exception as exc:
            traceback.print_exc()
            return JSONResponse(
                {"field": None, "control": None, "error": f"internal error: {exc!r}"},
                status_code=500,
            )

    return wrapped


def create_app(scenario: Scenario, *, base_dir: Path | None = None) -> Starlette:
    """The explorer app for a starting scenario.

    Parameters
    ----------
    scenario
        The base scenario the page opens with.
    base_dir
        Directory relative paths in an uploaded scenario file are resolved against (default: the
        working directory).
    """
    cache = ViewCache()
    jobs = Jobs()
    upload_dir = Path.cwd() if base_dir is None else base_dir
    start = scenario.to_dict()

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    async def plotly(request: Request) -> Response:
        body = await run_in_threadpool(plotly_js)
        return Response(body, media_type="text/javascript",
                        headers={"Cache-Control": "public, max-age=86400"})

    @_handler
    async def options(request: Request, controls: dict[str, Any]) -> Response:
        return JSONResponse(
            {
                "choices": choices(),
                "fields": CONTROL_FIELDS,
                "base": start,
                "controls": jsonable(controls_of(scenario)),
                "max_sim_requests": MAX_SIM_REQUESTS,
            }
        )

    @_handler
    async def view(request: Request, controls: dict[str, Any]) -> Response:
        data = await _json_body(request)
        controls.update(data.get("controls") or {})
        scn, _ = _settings(data)
        out = await run_in_threadpool(model_view, scn, cache)
        out["scenario"] = scn.to_dict()
        return JSONResponse(jsonable(out))

    @_handler
    async def download(request: Request, controls: dict[str, Any]) -> Response:
        data = await _json_body(request)
        controls.update(data.get("controls") or {})
        scn, _ = _settings(data)
        name = "".join(c if c.isalnum() or c in "-_." else "-" for c in scn.name) or "scenario"
        return Response(
            scn.to_yaml(),
            media_type="application/yaml",
            headers={"Content-Disposition": f'attachment; filename="{name}.yaml"'},
        )

    @_handler
    async def load(request: Request, controls: dict[str, Any]) -> Response:
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            raise _BadRequest("file", f"larger than {MAX_BODY_BYTES} bytes")
        try:
            data = yaml.safe_load(raw.decode("utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise _BadRequest("file", f"not a valid YAML scenario{where}") from None
        scn = scenario_from_dict(data, upload_dir)
        return JSONResponse({"base": scn.to_dict(), "controls": jsonable(controls_of(scn))})

    @_handler
    async def simulate(request: Request, controls: dict[str, Any]) -> Response:
        data = await _json_body(request)
        controls.update(data.get("controls") or {})
        runs = data.get("runs", 3)
        try:
            runs = int(str(runs).strip())
        except ValueError:
            raise ScenarioError("runs", f"must be a whole number (got {runs!r})") from None
        check_runs(runs)
        scn, _ = _settings(data)
        if scn.workload.num_requests > MAX_SIM_REQUESTS:
            raise ScenarioError(
                "workload.num_requests",
                f"the explorer simulates at most {MAX_SIM_REQUESTS} requests per run (got "
                f"{scn.workload.num_requests}); use `sdsim run` for longer runs",
            )
        if scn.workload.arrival in ("trace", "replay"):
            raise ScenarioError(
                "workload.arrival", "the explorer needs a rate-driven arrival process"
            )
        return JSONResponse({"job": jobs.submit(scn, runs, curve_key(scn))})

    async def job(request: Request) -> Response:
        st = jobs.status(request.path_params["jid"])
        if st is None:
            return JSONResponse({"field": "job", "control": None, "error": "job: unknown id"},
                                status_code=404)
        return JSONResponse(jsonable(st))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        jobs.close()

    app = Starlette(
        routes=[
            Route("/", index),
            Route("/vendor/plotly.js", plotly),
            Route("/api/options", options),
            Route("/api/view", view, methods=["POST"]),
            Route("/api/scenario", download, methods=["POST"]),
            Route("/api/load", load, methods=["POST"]),
            Route("/api/simulate", simulate, methods=["POST"]),
            Route("/api/jobs/{jid}", job),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
        lifespan=lifespan,
        middleware=[Middleware(_SecurityHeaders)],
    )
    app.state.cache = cache
    return app


def serve(scenario: Scenario, host: str = "127.0.0.1", port: int = 8765) -> None:
    """Serve the explorer until interrupted (what ``sdsim explore`` runs).

    Binds first (``port`` 0 picks a free port), computes the starting view once (so the first page
    load is quick: the model's compiled kernels are loaded), then prints the address on stderr.

    Raises
    ------
    ScenarioError
        A port outside 0..65535, an address that cannot be bound, or plotly missing.
    """
    import uvicorn  # deferred: only a running server needs it, not the tests of the app

    if not 0 <= port <= 65535:
        raise ScenarioError("--port", f"must be in 0..65535 (got {port})")
    plotly_js()
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family = infos[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(infos[0][4])
    except OSError as exc:
        raise ScenarioError(
            "--host", f"cannot bind {host}:{port} ({exc.strerror or exc})"
        ) from None
    bound = sock.getsockname()[1]
    app = create_app(scenario)
    model_view(scenario, app.state.cache)
    where = f"[{host}]" if ":" in host else host
    print(f"sdsim explore: http://{where}:{bound}/  (Ctrl-C stops it)", file=sys.stderr, flush=True)
    config = uvicorn.Config(app, log_level="warning")
    uvicorn.Server(config).run(sockets=[sock])
