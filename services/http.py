"""The HTTP edge of the platform's app: API keys, rate limit, admission, request timeout, body-size limit,
request ids, request metrics and access log, and the one error shape.

Every refusal leaves as `{"error": "<what was wrong>"}` (validation errors keep pydantic's first few in
`detail`), with 429s and 503s saying when to come back (`Retry-After`). The middleware wraps only the
platform's own app, so BentoML's health routes are never refused for load.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.routing import Match, Route

from contracts.preprocessing import ImageTooLarge, InvalidInput
from services.errors import ServingError, UnsupportedMediaType
from services.keys import KeyRing, RateLimiter, presented_key
from services.metrics import ERRORS, IN_PROGRESS, METHODS, RequestSeries
from services.payloads import CURRENT_REQUEST_ID
from services.startup import DRAIN

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

RETRY_AFTER = "1"
REQUEST_ID = re.compile(rb"[A-Za-z0-9._-]{1,64}")
KEY_ID = "modelroad.key_id"  # where the edge leaves a request's key id in its scope
# The access log: bare JSON lines on stderr, one a request, apart from the service's other logs.
ACCESS = logging.getLogger("modelroad.access")
ACCESS.propagate = False
ACCESS.setLevel(logging.INFO)
ACCESS.addHandler(logging.StreamHandler(sys.stderr))
MAX_DETAIL = 5  # validation errors listed in an answer
UNEXPECTED = "an unexpected error occurred on the server (the server log says which); the request was not served"


class ErrorBody(BaseModel):
    error: str
    detail: list[dict[str, Any]] | None = None  # pydantic's errors, for a request that failed validation


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

    return Depends(check)


JSON_ONLY = media_types("application/json")


def json_response(answer: BaseModel | Sequence[BaseModel]) -> Response:
    """An answer as JSON, serialized by pydantic's own encoder (the route declares its model for the docs)."""
    if isinstance(answer, BaseModel):
        body = answer.model_dump_json().encode()
    else:
        body = b"[" + b",".join(a.model_dump_json().encode() for a in answer) + b"]"
    return Response(body, media_type="application/json")


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int, what: str = "request body"):
        super().__init__(413, f"{what} is over the limit of {limit} bytes")


# Bodies of these media types are read as bytes (uploads, binary tensors); every other body is parsed as JSON, by
# one C call that holds the GIL for its whole length (~6 ms a MiB, in a thread or not), so its own, smaller limit
# bounds how long one request can keep the event loop (timeouts, /livez, other requests) waiting.
BYTE_BODIES = (b"multipart/form-data", b"application/octet-stream")
JSON_HEADER_LENGTH = b"inference-header-content-length"  # the JSON part of a binary inference-protocol body


def _reason(status: int) -> str:
    """A low-cardinality label for the errors counter: the status phrase in snake case."""
    return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")


def request_id_of(scope: Scope) -> bytes:
    """The client's X-Request-ID when it is a plain token (at most 64 of [A-Za-z0-9._-]), else a new one."""
    for name, value in scope["headers"]:
        if name == b"x-request-id" and REQUEST_ID.fullmatch(value):
            return value
    return uuid.uuid4().hex.encode()


def template(scope: Scope) -> str:
    """The template of the route that answered (set in the scope by the router), or `other`: a bounded label."""
    route = scope.get("route")
    if route is None:  # refused before routing (busy, too large): what it was sent to
        return endpoint(scope.get("app"), scope)
    return "other" if isinstance(route, FallbackRoute) else route.path


def endpoint(app: Any, scope: Scope) -> str:
    """The route template a request matched (bounded, unlike its path), or `other`."""
    for route in getattr(app, "routes", ()):
        if not isinstance(route, FallbackRoute) and route.matches(scope)[0] != Match.NONE:
            return route.path
    return "other"


def error_response(
    request: Request, status: int, message: str, detail: list | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    ERRORS.labels(endpoint(request.scope.get("app"), request.scope), _reason(status)).inc()
    body: dict[str, Any] = {"error": message}
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
        response = error_response(request, exc.status, str(exc))
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

    A full match for every path but BentoML's own pages behind this app (its index and static files), so such
    requests stay in this app instead of getting BentoML's plain-text answers.
    """

    LEFT_TO_BENTOML = ("/static_content/",)

    def __init__(self, known: dict[str, list[str]] | None = None) -> None:
        super().__init__("/{path:path}", self.answer, include_in_schema=False)
        self.methods = None  # every method: a known path's other methods get their 405 here
        self.known = known or {}  # paths served beside this app (BentoML's /livez, say) and their methods

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        path = scope.get("path", "")
        if scope["type"] != "http" or path == "/" or path.startswith(self.LEFT_TO_BENTOML):
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


class EdgeMiddleware:
    """In order: API keys (401), the per-client rate limit (429), admission (at most `max_in_flight` requests at
    once, else 503 at once), the request timeout (504), the body limit (413); and the request metrics."""

    def __init__(
        self,
        app: Callable,
        max_body_bytes: int,
        max_json_bytes: int | None = None,
        max_in_flight: int = 256,
        request_timeout_s: float = 30.0,
        open_paths: tuple[str, ...] = (),
        keys: KeyRing | None = None,
        keyless_paths: tuple[str, ...] = (),
        limiter: RateLimiter | None = None,
        access_log: bool = False,
    ):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_json_bytes = max_body_bytes if max_json_bytes is None else min(max_json_bytes, max_body_bytes)
        self.max_in_flight = max_in_flight
        self.request_timeout_s = request_timeout_s
        self.open_paths = open_paths  # never refused for load or rate: health and docs
        self.keys, self.keyless_paths = keys, keyless_paths  # keyless: probes, docs (by setting), the admin's
        self.limiter = limiter
        self.access_log = access_log
        self.series = RequestSeries()
        self.in_flight = 0

    async def _reply(
        self, scope: Scope, send: Send, status: int, message: str, headers: dict[str, str] | None = None
    ) -> None:
        response = error_response(Request(scope), status, message, headers=headers)
        await response(scope, _no_body, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        arrived, status = time.perf_counter(), 500
        answered: float | None = None  # when the answer began (never, for a client gone first)
        request_id = request_id_of(scope)
        CURRENT_REQUEST_ID.set(request_id.decode())  # for the payload log's lines

        async def counted_send(message: Message) -> None:
            nonlocal status, answered
            if message["type"] == "http.response.start":
                status, answered = message["status"], time.perf_counter()
                headers = [*message.get("headers", ()), (b"x-request-id", request_id)]
                if DRAIN.draining:  # the client leaves this connection on this answer
                    headers.append((b"connection", b"close"))
                message = {**message, "headers": headers}
            await send(message)

        IN_PROGRESS.inc()
        try:
            await self._admit(scope, receive, counted_send)
        finally:
            IN_PROGRESS.dec()
            method = scope["method"] if scope["method"] in METHODS else "other"
            route = template(scope)
            self.series.record(route, method, status, None if answered is None else answered - arrived)
            if self.access_log:
                ACCESS.info(
                    json.dumps(
                        {
                            "time": round(time.time(), 3),
                            "request_id": request_id.decode(),
                            "method": method,
                            "endpoint": route,
                            "status": status,
                            "duration_ms": round((time.perf_counter() - arrived) * 1000, 2),
                            **({"key_id": scope[KEY_ID]} if KEY_ID in scope else {}),
                        }
                    )
                )

    async def _admit(self, scope: Scope, receive: Receive, send: Send) -> None:
        if DRAIN.draining and not scope["path"].startswith(self.open_paths):
            return await self._reply(scope, send, 503, "the server is shutting down; retry (another replica)")
        client = scope["client"][0] if scope.get("client") else "unknown"
        if self.keys is not None and not scope["path"].startswith(self.keyless_paths):
            client = self.keys.identify(presented_key(dict(scope["headers"])))
            scope[KEY_ID] = client  # the key's id (a digest prefix), never the key
            if client is None:
                return await self._reply(
                    scope,
                    send,
                    401,
                    "send a valid API key: `Authorization: Bearer <key>` or `X-API-Key: <key>`",
                    {"WWW-Authenticate": "Bearer"},
                )
        if scope["path"].startswith(self.open_paths):
            return await self._answer_in_time(scope, receive, send)
        if self.limiter is not None and (wait := self.limiter.wait(client)):
            return await self._reply(
                scope,
                send,
                429,
                f"over the rate limit of {self.limiter.rate:g} requests/s; retry after Retry-After seconds",
                {"Retry-After": str(math.ceil(wait))},
            )
        if self.in_flight >= self.max_in_flight:
            return await self._reply(
                scope,
                send,
                503,
                f"server busy: {self.in_flight} requests in flight, the most this worker admits; retry shortly",
            )
        self.in_flight += 1
        try:
            await self._answer_in_time(scope, receive, send)
        finally:
            self.in_flight -= 1

    async def _answer_in_time(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A request whose answer has not begun within the timeout is cancelled (its queued work is dropped): 504."""
        started = False

        async def timed_send(message: Message) -> None:
            nonlocal started
            if not started:
                started = True
                deadline.reschedule(None)  # the answer has begun: a stream may take as long as it needs
            await send(message)

        try:
            async with asyncio.timeout(self.request_timeout_s) as deadline:
                await self._limit_body(scope, receive, timed_send)
        except TimeoutError:
            if started or not deadline.expired():
                raise
            await self._reply(scope, send, 504, f"no answer within the request timeout of {self.request_timeout_s:g} s")

    async def _limit_body(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope.get("headers", ()))
        media = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        limit, what = (self.max_json_bytes, "JSON body")
        if media in BYTE_BODIES:
            limit, what = self.max_body_bytes, "request body"
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await self._reply(
                scope, send, 413, f"{what} of {int(declared)} bytes is over the limit of {limit} bytes"
            )
        json_part, json_limit = headers.get(JSON_HEADER_LENGTH), self.max_json_bytes
        if json_part is not None and json_part.isdigit() and int(json_part) > json_limit:
            return await self._reply(
                scope, send, 413, f"JSON header of {int(json_part)} bytes is over the limit of {json_limit} bytes"
            )
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:  # a chunked body that grew past the limit: stop reading it
                    raise BodyTooLarge(limit, what)
            return message

        await self.app(scope, limited_receive, send)


async def _no_body() -> Message:
    return {"type": "http.disconnect"}
