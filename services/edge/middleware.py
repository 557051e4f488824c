"""The ASGI edge of the platform's app: API keys, rate limit, admission, request timeout, body-size limit,
request ids, request metrics and access log (the checks and the log line are the edge core's, services/edge/gate.py,
which the gRPC front-end shares).

The middleware wraps only the platform's own app, so BentoML's health routes are never refused for load.
Its refusals leave in the one error shape (services/edge/http_errors.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request
from starlette.exceptions import HTTPException

from services.edge.gate import Gate, log_access, request_id_of
from services.edge.http_errors import FallbackRoute, endpoint, error_response
from services.edge.keys import KeyRing, RateLimiter
from services.errors import Refusal
from services.ops.metrics import IN_PROGRESS, METHODS, RequestSeries
from services.ops.payloads import CURRENT_REQUEST_ID
from services.ops.startup import DRAIN

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

KEY_ID = "modelroad.key_id"  # where the edge leaves a request's key id in its scope


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int, what: str = "request body"):
        super().__init__(413, f"{what} is over the limit of {limit} bytes")


# Bodies of these media types are read as bytes (uploads, binary tensors); every other body is parsed as JSON, by
# one C call that holds the GIL for its whole length (milliseconds a MiB, in a thread or not), so its own, smaller limit
# bounds how long one request can keep the event loop (timeouts, /livez, other requests) waiting.
BYTE_BODIES = (b"multipart/form-data", b"application/octet-stream")
JSON_HEADER_LENGTH = b"inference-header-content-length"  # the JSON part of a binary inference-protocol body


def template(scope: Scope) -> str:
    """The template of the route that answered (set in the scope by the router), or `other`: a bounded label."""
    route = scope.get("route")
    if route is None:  # refused before routing (busy, too large): what it was sent to
        return endpoint(scope.get("app"), scope)
    return "other" if isinstance(route, FallbackRoute) else route.path


class PathSet:
    """Paths and everything below them; "/" (the overview page) stands for itself alone, not for every path."""

    def __init__(self, paths: tuple[str, ...]):
        self.prefixes = tuple(path for path in paths if path != "/")
        self.root = "/" in paths

    def holds(self, path: str) -> bool:
        return self.root if path == "/" else path.startswith(self.prefixes)


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
        gate: Gate | None = None,
    ):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_json_bytes = max_body_bytes if max_json_bytes is None else min(max_json_bytes, max_body_bytes)
        self.request_timeout_s = request_timeout_s
        self.open_paths = PathSet(open_paths)  # never refused for load or rate: health, docs and pages
        self.keyless_paths = PathSet(keyless_paths)  # keyless: probes, docs and pages (by setting), the admin's
        # Shared with the gRPC edge where the app has one (its keys, rate limit and in-flight bound).
        self.gate = gate or Gate(max_in_flight, keys, limiter)
        self.access_log = access_log
        self.series = RequestSeries()

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
        headers = dict(scope["headers"])
        request_id = request_id_of(headers)
        CURRENT_REQUEST_ID.set(request_id.decode())  # for the payload log's lines

        async def counted_send(message: Message) -> None:
            nonlocal status, answered
            if message["type"] == "http.response.start":
                status, answered = message["status"], time.perf_counter()
                sent = [*message.get("headers", ()), (b"x-request-id", request_id)]
                if DRAIN.draining:  # the client leaves this connection on this answer
                    sent.append((b"connection", b"close"))
                message = {**message, "headers": sent}
            await send(message)

        IN_PROGRESS.inc()
        try:
            await self._admit(scope, headers, receive, counted_send)
        finally:
            IN_PROGRESS.dec()
            method = scope["method"] if scope["method"] in METHODS else "other"
            route = template(scope)
            self.series.record(route, method, status, None if answered is None else answered - arrived)
            if self.access_log:
                log_access(request_id.decode(), method, route, status, arrived, scope.get(KEY_ID), "http")

    async def _admit(self, scope: Scope, headers: dict[bytes, bytes], receive: Receive, send: Send) -> None:
        path = scope["path"]
        counted, keyed = not self.open_paths.holds(path), not self.keyless_paths.holds(path)
        try:
            key_id = self.gate.enter(headers, scope["client"][0] if scope.get("client") else "unknown", keyed, counted)
        except Refusal as refused:
            if refused.key_id is not None:
                scope[KEY_ID] = refused.key_id
            return await self._reply(scope, send, refused.status, str(refused), refused.headers)
        if key_id is not None:
            scope[KEY_ID] = key_id  # the key's id, never the key
        try:
            await self._answer_in_time(scope, headers, receive, send)
        finally:
            if counted:
                self.gate.release()

    async def _answer_in_time(self, scope: Scope, headers: dict[bytes, bytes], receive: Receive, send: Send) -> None:
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
                await self._limit_body(scope, headers, receive, timed_send)
        except TimeoutError:
            if started or not deadline.expired():
                raise
            await self._reply(scope, send, 504, f"no answer within the request timeout of {self.request_timeout_s:g} s")

    async def _limit_body(self, scope: Scope, headers: dict[bytes, bytes], receive: Receive, send: Send) -> None:
        media = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        limit, what = (self.max_json_bytes, "JSON body")
        # Bytes, or the binary tensor extension's JSON header and tensors (tritonclient sends it untyped): the
        # header alone is held to the JSON limit below.
        if media in BYTE_BODIES or JSON_HEADER_LENGTH in headers:
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
