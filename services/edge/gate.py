"""The one edge core both protocols pass through: a request's id, the checks before it reaches a model in this order
(the server is not draining, the API key, the per-client rate limit, admission: at most `max_in_flight` requests
at once per worker, HTTP and gRPC together), and its access-log line. The HTTP middleware
(services/edge/middleware.py) and the gRPC front-end (services/frontends/oip_grpc.py) call `Gate.enter` and
`Gate.release` and log with `log_access`; a `Refusal` becomes each protocol's status (services/errors.py).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import re
import sys
import time

from services.edge.keys import KeyRing, RateLimiter, presented_key
from services.errors import Refusal
from services.ops.startup import DRAIN
from services.runtime.batching import Admitted

DRAINING = "the server is shutting down; retry (another replica)"
NO_KEY = "send a valid API key: `Authorization: Bearer <key>` or `X-API-Key: <key>`"
REQUEST_ID = re.compile(rb"[A-Za-z0-9._-]{1,64}")
# The access log: bare JSON lines on stderr, one a request, apart from the service's other logs.
ACCESS = logging.getLogger("modelroad.access")
ACCESS.propagate = False
ACCESS.setLevel(logging.INFO)
ACCESS.addHandler(logging.StreamHandler(sys.stderr))


class RequestIds:
    """New request ids, 32 hex digits: a random half drawn once a process (again after a fork) and a count.
    Unique as uuid4's are, without uuid4's system call (os.urandom) per request."""

    def __init__(self) -> None:
        self._start()
        os.register_at_fork(after_in_child=self._start)

    def _start(self) -> None:
        self.prefix, self.count = os.urandom(8).hex(), itertools.count()

    def new(self) -> bytes:
        return f"{self.prefix}{next(self.count):016x}".encode()


REQUEST_IDS = RequestIds()


def request_id_of(headers: dict[bytes, bytes]) -> bytes:
    """The client's X-Request-ID when it is a plain token (at most 64 of [A-Za-z0-9._-]), else a new one."""
    given = headers.get(b"x-request-id")
    return given if given is not None and REQUEST_ID.fullmatch(given) else REQUEST_IDS.new()


def log_access(
    request_id: str, method: str, endpoint: str, status: int, arrived: float, key_id: str | None, protocol: str
) -> None:
    """One request's access-log line (`arrived`: its perf_counter at arrival)."""
    line = {
        "time": round(time.time(), 3),
        "request_id": request_id,
        "method": method,
        "endpoint": endpoint,
        "status": status,
        "protocol": protocol,
        "duration_ms": round((time.perf_counter() - arrived) * 1000, 2),
    }
    ACCESS.info(json.dumps({**line, **({"key_id": key_id} if key_id else {})}))


class Gate:
    """The keys, rate limiter and in-flight bound one worker's edges share (None: not required)."""

    def __init__(self, max_in_flight: int = 256, keys: KeyRing | None = None, limiter: RateLimiter | None = None):
        self.max_in_flight, self.keys, self.limiter = max_in_flight, keys, limiter
        self.in_flight = 0

    def enter(self, headers: dict[bytes, bytes], client: str, keyed: bool, counted: bool) -> str | None:
        """The checks in their order, for a request from `client` (its address): the id of its key where keys are
        on and the request is `keyed`; a `counted` one is held to the rate and admitted (call `release` once it is
        answered), an uncounted one (health, pages) is neither, nor refused while draining. Refusal otherwise."""
        if counted and DRAIN.draining:
            raise Refusal(503, DRAINING)
        key_id = self.identify(headers) if keyed and self.keys is not None else None
        if counted:
            try:
                self.check_rate(key_id or client)
                self.admit()
            except Refusal as refused:
                refused.key_id = key_id  # the access line of a request over its key's rate names the key
                raise
        return key_id

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
