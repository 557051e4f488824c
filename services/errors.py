"""The platform's refusals, protocol-neutral: each names its HTTP status, and one table gives the gRPC code for
the same refusal, so both front-ends answer a failure alike (`failure`). The HTTP answer's shape is the edge's
(services/edge/http_errors.py), the gRPC one the gRPC front-end's.
"""

from __future__ import annotations

from collections.abc import Sequence
from http import HTTPStatus
from typing import Any, ClassVar

from contracts.preprocessing import ImageTooLarge, InvalidInput

MAX_DETAIL = 5  # validation errors listed in an answer
UNEXPECTED = "an unexpected error occurred on the server (the server log says which); the request was not served"
# An HTTP status -> the gRPC status code (its name in `grpc.StatusCode`) of the same refusal.
GRPC_CODES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    406: "INVALID_ARGUMENT",
    409: "FAILED_PRECONDITION",
    413: "RESOURCE_EXHAUSTED",
    415: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


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


class Refusal(ServingError):
    """A request turned away at the edge (draining, key, rate, admission), with the status and headers to say so."""

    key_id: str | None = None  # the key the request carried, when it was identified before being refused

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.headers = status, headers  # type: ignore[misc]


class NotServed(ServingError):
    """A method this server does not serve as configured (the repository without an admin token)."""

    status = 501


def failure(exc: BaseException) -> tuple[int, str, dict[str, str] | None, dict[str, Any] | None]:
    """How a failed request is answered, whichever protocol: its HTTP status, message, headers and more fields of
    the answer. An exception of no refusal's kind is the server's fault: logged, and answered as UNEXPECTED."""
    if isinstance(exc, ServingError):
        return exc.status, str(exc), exc.headers, exc.fields
    if isinstance(exc, InvalidInput):
        return (413 if isinstance(exc, ImageTooLarge) else 400), str(exc), None, None
    return 500, UNEXPECTED, None, None


def reason_label(status: int) -> str:
    """A low-cardinality label for the errors counter: the status phrase in snake case."""
    return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")


def validation_message(errors: Sequence[dict[str, Any]]) -> str:
    """Pydantic's errors in one line (the first five), each where it is and what is wrong."""
    if errors and errors[0].get("type") == "json_invalid":
        return f"Invalid JSON body: {errors[0].get('ctx', {}).get('error', 'cannot be parsed')}"
    reasons = []
    for e in errors[:MAX_DETAIL]:
        loc = [str(p) for p in e.get("loc", ())]
        reasons.append(f"{'.'.join(loc[1:] if loc[:1] == ['body'] else loc) or 'body'}: {e.get('msg', '')}")
    return "invalid request: " + "; ".join(reasons)
