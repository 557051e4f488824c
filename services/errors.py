"""The platform's refusals: each carries the HTTP status it is answered with, as `{"error": message}`."""

from __future__ import annotations


class ServingError(Exception):
    status = 500


class BadRequest(ServingError):
    """The request cannot be served as sent; the message says what to change."""

    status = 400


class NotFound(ServingError):
    status = 404


class Unavailable(ServingError):
    """Temporary: not ready, overloaded, or the runner service unreachable (answered with Retry-After)."""

    status = 503
