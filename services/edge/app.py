"""A service's one HTTP app: its routes (for the platform: the family routes and the Open Inference Protocol),
the OpenAPI document, the edge (services/edge/middleware.py) and the one error shape (services/edge/http_errors.py).

BentoML mounts it (`@bentoml.asgi_app`) and keeps what it is good at: process management, the model
store, /livez and /readyz. The app serves /metrics itself: BentoML's request metrics label by raw path.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from services.edge.gate import Gate
from services.edge.http_errors import FallbackRoute, install_error_handlers
from services.edge.keys import KeyRing, RateLimiter
from services.edge.middleware import EdgeMiddleware
from services.ops.metrics import exposition
from services.settings import SETTINGS, ServeSettings

REFERENCE_PATH = "/reference"  # the API reference page (services/frontends/console.py)
CONSOLE_PATH = "/console"  # the console's assets and figures (services/frontends/console.py); the page itself is "/"
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


def gate_of(settings: ServeSettings, guarded: bool) -> Gate:
    """A worker's keys, rate limit and in-flight bound, which its HTTP and gRPC edges share; `guarded`: the API keys
    and rate limit of the settings apply (the platform; not its internal runner service)."""
    return Gate(
        settings.max_in_flight,
        keys=KeyRing(Path(settings.api_keys_file)) if guarded and settings.api_keys_file else None,
        limiter=rate_limiter(settings) if guarded and settings.rate_limit > 0 else None,
    )


def build_app(
    title: str, description: str, routers: Sequence[APIRouter], gate: Gate | None = None, guarded: bool = False
) -> FastAPI:
    """The app for `routers` behind the edge (`gate`: the worker's, default one of `gate_of(SETTINGS, guarded)`);
    `guarded` also lets the settings' CORS origins call it."""
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
        gate=gate or gate_of(SETTINGS, guarded),
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


def rate_limiter(settings: ServeSettings) -> RateLimiter:
    """A worker's share of the rate limit: connections spread over the workers, so each keeps 1/workers of it."""
    workers = max(1, settings.workers)
    burst = settings.rate_burst or max(1.0, settings.rate_limit)
    return RateLimiter(settings.rate_limit / workers, max(1.0, burst / workers))
