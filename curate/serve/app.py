"""The FastAPI app: its options, the token guard, request bounds, error replies, pages and routers.

The app reads manifests and writes only through the same atomic parts as every stage (the `review`
manifest), so the CLI and the app never disagree. Loopback by default; any other host needs a token on
every API call. Pages are plain HTML/CSS/JS from the package: no build step, no CDN, works offline.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path

from curate.errors import CurateError, InvalidArgument
from curate.workspace import Workspace

STATIC = Path(__file__).parent / "static"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
MAX_BODY = 64 * 1024  # bytes of a request body: every API call is a few ids and numbers
TOKEN_HEADER = "X-Curate-Token"
# The families of routes, each a module with `router` and optional `open(app)`/`close(app)`.
ROUTES = ("curate.serve.review_api", "curate.serve.generate_api")
PAGES = ("review", "generate")


@dataclass
class ServeOptions:
    workspace: Path
    run: Path | None = None  # a training run for the generate page
    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None  # required on every API call when set; always set off loopback
    device: str = "auto"  # where the generator runs
    batch: int = 16  # images per generator call: queued requests are batched up to this


def needs_token(host: str) -> bool:
    return host not in LOOPBACK


def resolve_token(options: ServeOptions) -> str | None:
    """The token to require: the one given, a fresh one off loopback, none on loopback."""
    if options.token:
        return options.token
    return secrets.token_urlsafe(24) if needs_token(options.host) else None


def create_app(options: ServeOptions):
    """The app over one workspace (and optionally one run); `options.token` is taken as given."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
    from fastapi.staticfiles import StaticFiles

    workspace = Workspace.open(options.workspace)
    families = [import_module(name) for name in ROUTES]

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for family in families:
            if hasattr(family, "open"):
                family.open(app)
        try:
            yield
        finally:
            for family in reversed(families):
                if hasattr(family, "close"):
                    family.close(app)

    app = FastAPI(
        title="curate", docs_url=None, redoc_url=None, openapi_url="/api/openapi.json", lifespan=lifespan,
        max_body_size=MAX_BODY,  # counted as the body arrives, so a chunked one is bounded too
    )  # fmt: skip
    app.state.options = options
    app.state.workspace = workspace

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if request.url.path.startswith("/api/") and options.token is not None:
            given = request.headers.get(TOKEN_HEADER) or request.query_params.get("token") or ""
            if not secrets.compare_digest(given.encode(), options.token.encode()):
                return JSONResponse({"detail": "a valid token is required"}, status_code=401)
        return await call_next(request)

    @app.exception_handler(InvalidArgument)
    async def invalid(_: Request, error: InvalidArgument) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=getattr(error, "status", 400))

    @app.exception_handler(CurateError)
    async def failed(_: Request, error: CurateError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=409)

    @app.exception_handler(RequestValidationError)
    async def malformed(_: Request, error: RequestValidationError) -> JSONResponse:
        problems = [f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in error.errors()]
        return JSONResponse({"detail": "; ".join(problems)[:1000]}, status_code=422)

    for family in families:
        app.include_router(family.router)

    @app.get("/", include_in_schema=False)
    async def index() -> RedirectResponse:
        return RedirectResponse("/review")

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        return Response(status_code=204)  # no icon: a 404 would be a console error on every page

    for page in PAGES:
        app.add_api_route(f"/{page}", _page(page, FileResponse), methods=["GET"], include_in_schema=False)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _page(name: str, response):
    async def page():
        return response(STATIC / f"{name}.html", headers={"Cache-Control": "no-store"})

    return page


def serve(options: ServeOptions, *, announce=print) -> None:
    """Run the app with uvicorn until interrupted; announces the address (with the token, if any)."""
    import uvicorn

    options.token = resolve_token(options)
    app = create_app(options)
    host = f"[{options.host}]" if ":" in options.host else options.host
    query = f"?token={options.token}" if options.token else ""
    announce(f"curate serve: http://{host}:{options.port}/review{query}")
    if options.run is not None:
        announce(f"generate: http://{host}:{options.port}/generate{query}")
    uvicorn.run(app, host=options.host, port=options.port, log_level="warning")
