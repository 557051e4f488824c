"""The one error shape of the HTTP answers: every way a request can fail leaves as `{"error": "<what was wrong>"}`
(validation errors keep pydantic's first few in `detail`), 503s saying when to come back (`Retry-After`).
An unknown path gets 404 and a known one with another method 405, in the same shape (`FallbackRoute`).
Which status a failure gets is services/errors.py's `failure`, as for gRPC.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.routing import Match, Route

from contracts.preprocessing import InvalidInput
from services.errors import MAX_DETAIL, ServingError, failure, reason_label, validation_message
from services.ops.metrics import ERRORS

log = logging.getLogger(__name__)

Scope = dict[str, Any]

RETRY_AFTER = "1"


class ErrorBody(BaseModel):
    error: str
    detail: list[dict[str, Any]] | None = None  # pydantic's errors, for a request that failed validation


def endpoint(app: Any, scope: Scope) -> str:
    """The route template a request matched (bounded, unlike its path), or `other`."""
    for route in getattr(app, "routes", ()):
        if not isinstance(route, FallbackRoute) and route.matches(scope)[0] != Match.NONE:
            return route.path
    return "other"


def error_response(
    request: Request,
    status: int,
    message: str,
    detail: list | None = None,
    headers: dict[str, str] | None = None,
    fields: dict[str, Any] | None = None,
) -> JSONResponse:
    ERRORS.labels(endpoint(request.scope.get("app"), request.scope), reason_label(status)).inc()
    body: dict[str, Any] = {"error": message, **(fields or {})}
    if detail is not None:
        body["detail"] = detail
    headers = {"Retry-After": RETRY_AFTER} if status == 503 and headers is None else headers
    return JSONResponse(body, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Every way a request can fail, answered in the one shape."""

    async def refused(request: Request, exc: Exception) -> JSONResponse:
        status, message, headers, fields = failure(exc)
        if status == 500:
            log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        response = error_response(request, status, message, fields=fields)
        response.headers.update(headers or {})
        return response

    async def validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        # The first few only: a body of many bad items must not get an answer many times its size.
        errors = [{k: v for k, v in e.items() if k in ("type", "loc", "msg")} for e in exc.errors()[:MAX_DETAIL]]
        return error_response(request, 400, validation_message(errors), errors)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        response = error_response(request, exc.status_code, str(exc.detail))
        response.headers.update(exc.headers or {})
        return response

    for kind in (ServingError, InvalidInput, Exception):
        app.add_exception_handler(kind, refused)
    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(HTTPException, http_error)


class FallbackRoute(Route):
    """Last route: an unknown path gets 404 JSON, a known one with a method it does not serve 405 with `Allow`.

    A full match for every path but BentoML's static files behind this app, so such requests stay in this app
    instead of getting BentoML's plain-text answers; `/` too (BentoML's index page loads a third-party tracker:
    the platform serves its own, services/frontends/console.py, and any other app here answers 404).
    """

    LEFT_TO_BENTOML = ("/static_content/",)

    def __init__(self, known: dict[str, list[str]] | None = None) -> None:
        super().__init__("/{path:path}", self.answer, include_in_schema=False)
        self.methods = None  # every method: a known path's other methods get their 405 here
        self.known = known or {}  # paths served beside this app (BentoML's /livez, say) and their methods

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        path = scope.get("path", "")
        if scope["type"] != "http" or path.startswith(self.LEFT_TO_BENTOML):
            return Match.NONE, {}
        return Match.FULL, {}

    async def answer(self, request: Request) -> Response:
        allowed = sorted(
            {
                method
                for route in request.app.routes
                if route is not self and route.matches(request.scope)[0] == Match.PARTIAL
                for method in route.methods or ()
            }
            | set(self.known.get(request.url.path, ()))
        )
        if allowed:
            raise HTTPException(
                405,
                f"{request.method} is not served at {request.url.path}; use {', '.join(allowed)}",
                headers={"Allow": ", ".join(allowed)},
            )
        raise HTTPException(404, f"no route {request.url.path}; see /docs.json")
