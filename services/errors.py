"""The platform's refusals and the one error shape they are answered in.

Each refusal carries its HTTP status; every way a request can fail leaves as `{"error": "<what was wrong>"}`
(validation errors keep pydantic's first few in `detail`), 503s saying when to come back (`Retry-After`).
An unknown path gets 404 and a known one with another method 405, in the same shape (`FallbackRoute`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.routing import Match, Route

from contracts.preprocessing import ImageTooLarge, InvalidInput
from services.metrics import ERRORS

log = logging.getLogger(__name__)

Scope = dict[str, Any]

RETRY_AFTER = "1"
MAX_DETAIL = 5  # validation errors listed in an answer
UNEXPECTED = "an unexpected error occurred on the server (the server log says which); the request was not served"


class ServingError(Exception):
    status = 500
    headers: ClassVar[dict[str, str] | None] = None
    fields: dict[str, Any] | None = None  # more of the answer's body beside "error" (e.g. the current generation)


class BadRequest(ServingError):
    """The request cannot be served as sent; the message says what to change."""

    status = 400


class Unauthorized(ServingError):
    """No credentials, or not in the expected form."""

    status = 401
    headers: ClassVar[dict[str, str] | None] = {"WWW-Authenticate": "Bearer"}


class Forbidden(ServingError):
    """Credentials that are not the expected ones."""

    status = 403


class NotFound(ServingError):
    status = 404


class Conflict(ServingError):
    """The request contradicts the server's state (e.g. unloading a model a family route runs)."""

    status = 409


class NotAcceptable(ServingError):
    """No answer in a media type the request accepts (e.g. one PNG for several images)."""

    status = 406


class UnsupportedMediaType(ServingError):
    """A body in a media type the route does not take."""

    status = 415


class Unavailable(ServingError):
    """Temporary: not ready, overloaded, or the runner service unreachable (answered with Retry-After)."""

    status = 503


class TimedOut(ServingError):
    """The server could not finish in time; the work may still complete."""

    status = 504


class ErrorBody(BaseModel):
    error: str
    detail: list[dict[str, Any]] | None = None  # pydantic's errors, for a request that failed validation


def reason_label(status: int) -> str:
    """A low-cardinality label for the errors counter: the status phrase in snake case."""
    return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")


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


def validation_message(errors: Sequence[dict[str, Any]]) -> str:
    """Pydantic's errors in one line (the first five), each where it is and what is wrong."""
    if errors and errors[0].get("type") == "json_invalid":
        return f"Invalid JSON body: {errors[0].get('ctx', {}).get('error', 'cannot be parsed')}"
    reasons = []
    for e in errors[:MAX_DETAIL]:
        loc = [str(p) for p in e.get("loc", ())]
        reasons.append(f"{'.'.join(loc[1:] if loc[:1] == ['body'] else loc) or 'body'}: {e.get('msg', '')}")
    return "invalid request: " + "; ".join(reasons)


def install_error_handlers(app: FastAPI) -> None:
    """Every way a request can fail, answered in the one shape."""

    async def serving_error(request: Request, exc: ServingError) -> JSONResponse:
        response = error_response(request, exc.status, str(exc), fields=exc.fields)
        response.headers.update(exc.headers or {})
        return response

    async def invalid_input(request: Request, exc: InvalidInput) -> JSONResponse:
        return error_response(request, 413 if isinstance(exc, ImageTooLarge) else 400, str(exc))

    async def validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        # The first few only: a body of many bad items must not get an answer many times its size.
        errors = [{k: v for k, v in e.items() if k in ("type", "loc", "msg")} for e in exc.errors()[:MAX_DETAIL]]
        return error_response(request, 400, validation_message(errors), errors)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        response = error_response(request, exc.status_code, str(exc.detail))
        response.headers.update(exc.headers or {})
        return response

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return error_response(request, 500, UNEXPECTED)

    app.add_exception_handler(ServingError, serving_error)
    app.add_exception_handler(InvalidInput, invalid_input)
    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)


class FallbackRoute(Route):
    """Last route: an unknown path gets 404 JSON, a known one with a method it does not serve 405 with `Allow`.

    A full match for every path but BentoML's static files behind this app, so such requests stay in this app
    instead of getting BentoML's plain-text answers; `/` too (BentoML's index page loads a third-party tracker:
    the platform serves its own, services/pages.py, and any other app here answers 404).
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
