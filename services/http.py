"""ASGI middleware at the edge of every service: admission, request timeout, body-size limit, one JSON error shape.

BentoML answers some client mistakes in other shapes (plain-text 404/405, a list around
`{"error": ...}`, pydantic's "1 validation error for Input" with the reason in `detail`);
every 4xx/5xx leaves here as `{"error": "<what was wrong>"}` (pydantic details kept in `detail`).
"""
from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

from bentoml.exceptions import BentoMLException
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request

from services.metrics import ERRORS

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
# An upload route's handler: the uploaded file's bytes -> the answer's JSON bytes.
UploadHandler = Callable[[bytes], Awaitable[bytes]]

# Paths that are not APIs but still answer errors (readyz before warm-up, say).
SERVICE_PATHS = ("/readyz", "/livez", "/healthz", "/metrics", "/docs.json")
UNEXPECTED = "An unexpected error has occurred, please check the server log."  # BentoML's words for every 5xx
# A 503 from the app (its runner service unreachable, say) is temporary: say so, and when to come back.
UNAVAILABLE = "the service cannot answer just now (the server log says why); retry shortly"
RETRY_AFTER = (b"retry-after", b"1")


def _reason(status: int) -> str:
    """A low-cardinality label for the errors counter: the status phrase in snake case."""
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return str(status)


def error_message(status: int, body: bytes) -> dict[str, Any]:
    """Turn whatever error body BentoML or Starlette produced into {"error": str[, "detail": ...]}."""
    try:
        data = json.loads(body) if body else None
    except ValueError:
        data = None
    if isinstance(data, list) and len(data) == 1 and isinstance(data[0], dict):
        data = data[0]  # BentoML wraps 4xx errors in a one-element list
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        detail = data.get("detail")
        if isinstance(detail, list) and detail and all(isinstance(d, dict) for d in detail):
            reasons = [f"{'.'.join(str(p) for p in d.get('loc', ())) or 'body'}: {d.get('msg', '')}" for d in detail[:5]]
            return {"error": "invalid request: " + "; ".join(reasons), "detail": detail}
        return {"error": data["error"]}
    text = body.decode("utf-8", "replace").strip() if body and data is None else ""
    phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
    return {"error": f"{phrase}: {text}" if text and text != phrase else phrase}


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that gives the buffered body once, then passes on what the client sends (disconnects)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def multipart_fields(scope: Scope, body: bytes) -> dict[str, bytes]:
    """The fields of a buffered multipart/form-data body: name -> a file's bytes or a value's UTF-8."""
    async with Request(scope, _replay(body, _never)).form() as form:
        return {name: await value.read() if isinstance(value, UploadFile) else value.encode()
                for name, value in form.multi_items()}  # fmt: skip


async def _never() -> Message:
    return {"type": "http.disconnect"}


def without_timeout(app: Callable, timeout: float) -> Callable:
    """Takes the place of BentoML's TimeoutMiddleware (`traffic.TimeoutMiddleware`); EdgeMiddleware times requests.

    BentoML's never cancels its per-request timer, so every request's timer, future and context live on for
    the whole timeout: at 2,500 requests/s and 30 s, ~75k objects per worker that each full garbage
    collection walks, which made the p99 at 32 connections 4-5x the p90.
    """
    return app


class EdgeMiddleware:
    def __init__(self, app: Callable, max_body_bytes: int, api_fields: dict[str, tuple[str, ...]],
                 max_in_flight: int = 256, request_timeout_s: float = 30.0,
                 uploads: dict[str, UploadHandler] | None = None):  # fmt: skip
        self.app = app
        # Routes whose one input is a file: the edge, which has parsed the multipart body already, answers
        # them itself through the handler instead of passing them on (BentoML would parse the body again,
        # write the file to disk and validate it as a path: ~40% of such a request's CPU).
        self.uploads = uploads or {}
        self.request_timeout_s = request_timeout_s
        self.max_body_bytes = max_body_bytes
        self.api_fields = api_fields  # route -> its input field names
        # API requests admitted at once by this worker; past it, 503 at once instead of an unbounded queue.
        self.max_in_flight = max_in_flight
        self.in_flight = 0

    def _endpoint(self, scope: Scope) -> str:
        path = scope.get("path", "")
        return path if path in self.api_fields or path in SERVICE_PATHS else "other"

    async def _reply(self, send: Send, scope: Scope, status: int, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        ERRORS.labels(self._endpoint(scope), _reason(status)).inc()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                *([RETRY_AFTER] if status == 503 else [])]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})

    async def _read_body(self, receive: Receive) -> bytes | None:
        """The whole body, or None once it grows past the limit."""
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body_bytes:
                return None
            more = message.get("more_body", False)
        return b"".join(chunks)

    async def _read_form(self, scope: Scope, body: bytes) -> tuple[dict[str, bytes], str | None]:
        """The multipart fields, or a problem: BentoML answers a file under an unexpected field name with a 500."""
        expected = set(self.api_fields[scope["path"]])
        try:
            fields = await multipart_fields(scope, body)
        except (MultiPartException, HTTPException, ValueError) as exc:
            # Starlette raises HTTPException(400) for bad multipart data when it runs inside an app.
            return {}, f"malformed multipart body: {getattr(exc, 'detail', exc)}"
        if set(fields) != expected:
            return fields, f"multipart fields {sorted(fields)} do not match the expected {sorted(expected)}"
        return fields, None

    async def _answer_upload(self, scope: Scope, send: Send, handler: UploadHandler, data: bytes) -> None:
        """The upload route's answer, with BentoML's meaning of its exceptions: a client error's own status."""
        try:
            body = await handler(data)
        except Exception as exc:
            status = int(exc.error_code) if isinstance(exc, BentoMLException) else 500
            if status < 500:
                return await self._reply(send, scope, status, str(exc))
            log.exception("%s failed", scope["path"])
            return await self._reply(send, scope, status, UNAVAILABLE if status == 503 else UNEXPECTED)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope["path"] not in self.api_fields:  # health, metrics, docs: never refused for load
            return await self._answer_in_time(scope, receive, send)
        if self.in_flight >= self.max_in_flight:
            return await self._reply(send, scope, 503, f"server busy: {self.in_flight} requests in flight, "
                                     "the most this worker admits; retry shortly")  # fmt: skip
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
                await self._handle(scope, receive, timed_send)
        except TimeoutError:
            if started or not deadline.expired():
                raise
            await self._reply(send, scope, 504, f"no answer within the request timeout of {self.request_timeout_s:g} s")

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.max_body_bytes
        headers = dict(scope.get("headers", ()))
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await self._reply(send, scope, 413, f"request body of {int(declared)} bytes is over the limit of {limit} bytes")

        if headers.get(b"content-type", b"").startswith(b"multipart/form-data") and scope["path"] in self.api_fields:
            body = await self._read_body(receive)
            if body is None:
                return await self._reply(send, scope, 413, f"request body is over the limit of {limit} bytes")
            fields, problem = await self._read_form(scope, body)
            if problem:
                return await self._reply(send, scope, 400, problem)
            if scope["path"] in self.uploads:
                (data,) = fields.values()
                return await self._answer_upload(scope, send, self.uploads[scope["path"]], data)
            receive = _replay(body, receive)

        received, too_large = 0, False

        async def limited_receive() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    too_large = True  # a chunked body that grew past the limit: stop reading it
                    return {"type": "http.disconnect"}
            return message

        status, start, chunks, started = 0, None, [], False

        async def rewriting_send(message: Message) -> None:
            nonlocal status, start, started
            if too_large:
                return  # the app's answer to a cut-off body is replaced by the 413 below
            if message["type"] == "http.response.start":
                status = message["status"]
                if status < 400:
                    started = True
                    return await send(message)
                start = message
                return
            if message["type"] == "http.response.body" and start is not None:
                chunks.append(message.get("body", b""))
                if message.get("more_body"):
                    return
                error = {"error": UNAVAILABLE} if status == 503 else error_message(status, b"".join(chunks))
                body = json.dumps(error).encode()
                ERRORS.labels(self._endpoint(scope), _reason(status)).inc()
                kept = [(k, v) for k, v in start.get("headers", []) if k.lower() not in (b"content-length", b"content-type")]
                if status == 503 and not any(k.lower() == b"retry-after" for k, _ in kept):
                    kept.append(RETRY_AFTER)
                started = True
                await send({**start, "headers": kept + [(b"content-type", b"application/json"),
                                                        (b"content-length", str(len(body)).encode())]})  # fmt: skip
                return await send({"type": "http.response.body", "body": body})
            await send(message)

        try:
            await self.app(scope, limited_receive, rewriting_send)
        except Exception:
            if not too_large:
                raise
        if too_large and not started:
            await self._reply(send, scope, 413, f"request body is over the limit of {limit} bytes")
