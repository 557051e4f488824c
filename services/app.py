"""A service's one HTTP app: its routes (for the platform: the family routes and the Open Inference Protocol),
the OpenAPI document, the edge (services/edge.py) and the one error shape (services/errors.py); and the helpers
routes share (media types, JSON answers, the documented errors).

BentoML mounts it (`@bentoml.asgi_app`) and keeps what it is good at: process management, the model
store, /livez and /readyz. The app serves /metrics itself: BentoML's request metrics label by raw path.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ValidationError
from starlette.routing import request_response
from starlette.types import ASGIApp, Receive, Scope, Send

from services.edge import EdgeMiddleware
from services.errors import ErrorBody, FallbackRoute, UnsupportedMediaType, install_error_handlers
from services.gate import Gate
from services.keys import KeyRing, RateLimiter
from services.metrics import exposition
from services.settings import SETTINGS, ServeSettings

REFERENCE_PATH = "/reference"  # the API reference page (services/pages.py)
CONSOLE_PATH = "/console"  # the console's assets and figures (services/pages.py); the page itself is "/"
# Never refused for load or rate: the pages, the OpenAPI document, metrics, health ("/" is that page alone).
OPEN_PATHS = ("/", CONSOLE_PATH, REFERENCE_PATH, "/docs.json", "/metrics", "/v2/health/")
# Keyless whatever the settings: the console's page and its scripts hold no data (what it shows needs a key
# where the API or the figures do).
PAGE_PATHS = ("/", f"{CONSOLE_PATH}/assets/")

# Served beside the app's own routes (/livez and /readyz by BentoML, /metrics by the app outside its schema);
# listed in the OpenAPI document so that it describes the whole server.
INFRA_PATHS = {
    "/livez": {
        "get": {"summary": "the server is live", "tags": ["infra"], "responses": {"200": {"description": "live"}}}
    },
    "/readyz": {
        "get": {
            "summary": "every model is loaded and warmed up",
            "tags": ["infra"],
            "responses": {"200": {"description": "ready"}, "503": {"description": "not ready yet"}},
        }
    },
    "/metrics": {
        "get": {
            "summary": "Prometheus metrics",
            "tags": ["infra"],
            "responses": {"200": {"description": "text format"}},
        }
    },
}


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _error("the request is not valid; `error` says what to change"),
    413: _error("the body or the image is over the limit"),
    401: _error("no valid API key (only when MODELROAD_API_KEYS_FILE is set)"),
    415: _error("the body's Content-Type is not one the route takes"),
    429: _error("over the key's rate limit (MODELROAD_RATE_LIMIT); retry after Retry-After seconds"),
    503: _error("busy or not ready; retry after Retry-After seconds"),
    504: _error("not answered within the request timeout"),
}


def media_types(*accepted: str | None) -> Any:
    """A route dependency: bodies of other media types get 415 (None accepts a body sent without Content-Type).

    JSON routes taking only application/json keep cross-site pages from posting to them without a CORS
    preflight (text/plain, form and multipart bodies need none).
    """

    async def check(request: Request) -> None:
        declared = request.headers.get("content-type")
        media = declared.split(";")[0].strip().lower() if declared else None
        if media not in accepted:
            wanted = " or ".join(a or "no Content-Type" for a in accepted)
            raise UnsupportedMediaType(f"this route takes {wanted}; got {declared or 'no Content-Type'}")

    check.direct = True  # type: ignore[attr-defined]  # a DirectRoute runs it
    return Depends(check)


class DirectRoute(APIRoute):
    """A route FastAPI documents as usual but that answers without FastAPI's request handling (dependency
    solving, a JSON body parsed and then validated, the exit stacks): ~30-40 µs of the ~500 a family request
    costs one worker here (`python -m bench.profile`).

    Its endpoint takes `request`, path parameters (str) and at most one pydantic model as its body, validated
    from the raw bytes in one pass (`model_validate_json`); a bad body gets the errors FastAPI would report (the
    same 400). Its dependencies may only be `media_types` checks, run first; anything else FastAPI would have to
    solve is refused when the route is made, not skipped in silence."""

    def __init__(self, path: str, endpoint: Callable[..., Awaitable[Response]], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        dependant = self.dependant
        checks = [d.call for d in dependant.dependencies]
        solved = (dependant.query_params, dependant.header_params, dependant.cookie_params)
        if (
            any(solved)
            or len(dependant.body_params) > 1
            or any(p.field_info.annotation is not str for p in dependant.path_params)
            or not all(getattr(c, "direct", False) for c in checks)
        ):
            raise TypeError(
                f"{path}: a DirectRoute's endpoint takes the request, str path parameters, one body model and media "
                "checks (media_types)"
            )
        self.checks, self.path_names = checks, [p.name for p in dependant.path_params]
        body = dependant.body_params[0] if dependant.body_params else None
        self.body: tuple[str, type[BaseModel]] | None = (body.name, body.field_info.annotation) if body else None
        self.app = request_response(self.answer)

    async def answer(self, request: Request) -> Response:
        for check in self.checks:
            await check(request)
        path = {name: request.path_params[name] for name in self.path_names}
        if self.body is None:
            return await self.endpoint(request, **path)
        name, model = self.body
        raw = await request.body()
        if not raw:  # as FastAPI says it
            raise RequestValidationError([{"type": "missing", "loc": ("body",), "msg": "Field required"}])
        try:
            parsed = model.model_validate_json(raw)
        except ValidationError as exc:
            raise RequestValidationError(
                [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
            ) from None
        return await self.endpoint(request, **path, **{name: parsed})


JSON_ONLY = media_types("application/json")


def whole_number(value: object) -> object:
    """A body's integer field, before its strict check: JSON Schema counts 4.0 as an integer, so strict int alone
    would refuse it (and rightly refuses "4" and 4.5). `BeforeValidator(whole_number)`."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def json_response(answer: BaseModel | Sequence[BaseModel], headers: dict[str, str] | None = None) -> Response:
    """An answer as JSON, serialized by pydantic's own encoder (the route declares its model for the docs)."""
    if isinstance(answer, BaseModel):
        body = answer.model_dump_json().encode()
    else:
        body = b"[" + b",".join(a.model_dump_json().encode() for a in answer) + b"]"
    return Response(body, media_type="application/json", headers=headers)


def openapi_document(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, saying what this app does: invalid requests get 400 (not FastAPI's 422)."""
    document = app.openapi()
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for operations in document["paths"].values():
        for operation in operations.values():
            operation.get("responses", {}).pop("422", None)
            for content in operation.get("requestBody", {}).get("content", {}).values():
                schemas.update(content.get("schema", {}).pop("$defs", {}))  # pydantic's, from openapi_extra
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    document["paths"].update(INFRA_PATHS)
    return document


def build_app(title: str, description: str, routers: Sequence[APIRouter], guarded: bool = False) -> FastAPI:
    """`guarded`: the API keys and rate limit of the settings apply (the platform; not its internal runner service)."""
    # FastAPI's own OpenTelemetry spans and metrics are off: BentoML's tracing setting and metrics cover requests.
    app = FastAPI(
        title=title,
        version="0.1.0",
        description=description,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    for router in routers:  # the routes themselves, not FastAPI's lazy included routers: route.path is the template
        app.router.routes.extend(router.routes)
    document: dict[str, Any] = {}

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/docs.json", include_in_schema=False)
    async def docs() -> JSONResponse:
        if not document:
            document.update(openapi_document(app))
        return JSONResponse(document)

    app.router.routes.append(FallbackRoute(known={path: [m.upper() for m in ops] for path, ops in INFRA_PATHS.items()}))
    install_error_handlers(app)
    # The edge's keys, rate limit and in-flight bound, shared with the gRPC server's edge (services/oip_grpc.py).
    app.state.gate = Gate(
        SETTINGS.max_in_flight,
        keys=KeyRing(Path(SETTINGS.api_keys_file)) if guarded and SETTINGS.api_keys_file else None,
        limiter=rate_limiter(SETTINGS) if guarded and SETTINGS.rate_limit > 0 else None,
    )
    app.add_middleware(
        EdgeMiddleware,
        max_body_bytes=SETTINGS.max_body_bytes,
        max_json_bytes=SETTINGS.max_json_bytes,
        request_timeout_s=SETTINGS.request_timeout_s,
        open_paths=OPEN_PATHS,
        # Probes, and the repository extension, which its admin token guards; docs and metrics as set.
        keyless_paths=(
            "/v2/health/",
            "/v2/repository/",
            *(PAGE_PATHS if SETTINGS.protect_docs_and_metrics else OPEN_PATHS),
        ),
        access_log=SETTINGS.access_log,
        gate=app.state.gate,
    )
    if guarded and SETTINGS.cors_origin_list:
        # Outside the edge: a preflight carries no key and is answered here; listed origins only.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=SETTINGS.cors_origin_list,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "Inference-Header-Content-Length"],
            expose_headers=["Retry-After", "Inference-Header-Content-Length"],
            max_age=600,
        )
    return app


class AppFirst:
    """A BentoML service middleware: every HTTP request but those to BentoML's own routes goes straight to the app
    BentoML mounts at "/". BentoML's request context (for `@bentoml.api` methods; a mounted app has none) and its
    router would otherwise come first, and its mount matches each of the app's routes once before the app's own
    router matches them again: +16% requests/s on /classify_text, +21% on /classify_image (one worker, c=32)."""

    BENTOML_PATHS = frozenset({"/livez", "/healthz", "/readyz", "/schema.json"})

    def __init__(self, app: ASGIApp, mounted: ASGIApp):
        self.app, self.mounted = app, mounted

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in self.BENTOML_PATHS:
            await self.mounted(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def rate_limiter(settings: ServeSettings) -> RateLimiter:
    """A worker's share of the rate limit: connections spread over the workers, so each keeps 1/workers of it."""
    workers = max(1, settings.workers)
    burst = settings.rate_burst or max(1.0, settings.rate_limit)
    return RateLimiter(settings.rate_limit / workers, max(1.0, burst / workers))
