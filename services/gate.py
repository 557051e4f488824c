"""What every protocol's edge checks before a request reaches a model, in this order: the server is not draining,
the API key, the per-client rate limit, and admission (at most `max_in_flight` requests at once per worker, HTTP
and gRPC together). The HTTP edge (services/edge.py) and the gRPC one (services/oip_grpc.py) translate a
`Refusal` to their own status; the messages are the same.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from services.keys import KeyRing, RateLimiter, presented_key

DRAINING = "the server is shutting down; retry (another replica)"
NO_KEY = "send a valid API key: `Authorization: Bearer <key>` or `X-API-Key: <key>`"


@dataclass
class Refusal(Exception):
    """A request turned away at the edge; `status` is HTTP's (the gRPC edge maps it to a code)."""

    status: int
    message: str
    headers: dict[str, str] | None = None


class Admitted:
    """Requests admitted in this process and not answered yet, every gate together: a batcher's hint that a lone
    request has company coming (another request is between the edge and the batcher)."""

    count = 0

    @classmethod
    def others(cls) -> bool:
        return cls.count > 1


class Gate:
    """The keys, rate limiter and in-flight bound one worker's edges share (None: not required)."""

    def __init__(self, max_in_flight: int = 256, keys: KeyRing | None = None, limiter: RateLimiter | None = None):
        self.max_in_flight, self.keys, self.limiter = max_in_flight, keys, limiter
        self.in_flight = 0

    def identify(self, headers: dict[bytes, bytes]) -> str:
        """The id of the request's valid key; 401 without one."""
        assert self.keys is not None
        client = self.keys.identify(presented_key(headers))
        if client is None:
            raise Refusal(401, NO_KEY, {"WWW-Authenticate": "Bearer"})
        return client

    def check_rate(self, client: str) -> None:
        """429 for a client over its rate (the key's id, or its address without keys)."""
        if self.limiter is not None and (wait := self.limiter.wait(client)):
            raise Refusal(
                429,
                f"over the rate limit of {self.limiter.rate:g} requests/s; retry after Retry-After seconds",
                {"Retry-After": str(math.ceil(wait))},
            )

    def admit(self) -> None:
        """Counts the request in flight until `release`; 503 at once past the bound."""
        if self.in_flight >= self.max_in_flight:
            raise Refusal(
                503, f"server busy: {self.in_flight} requests in flight, the most this worker admits; retry shortly"
            )
        self.in_flight += 1
        Admitted.count += 1

    def release(self) -> None:
        self.in_flight -= 1
        Admitted.count -= 1
