"""The platform's refusals: each carries the HTTP status it is answered with, as `{"error": message}`."""

from __future__ import annotations

from typing import ClassVar


class ServingError(Exception):
    status = 500
    headers: ClassVar[dict[str, str] | None] = None


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


class UnsupportedMediaType(ServingError):
    """A body in a media type the route does not take."""

    status = 415


class Unavailable(ServingError):
    """Temporary: not ready, overloaded, or the runner service unreachable (answered with Retry-After)."""

    status = 503


class TimedOut(ServingError):
    """The server could not finish in time; the work may still complete."""

    status = 504
