"""The one place the platform reaches into BentoML's internals: its per-request timeout middleware is replaced.

BentoML 1.4.39's `TimeoutMiddleware` (`bentoml._internal.server.http.traffic`) calls `loop.call_later` per
request and never cancels the timer, so every request's timer, future and context stay alive for the whole
timeout: ~75k objects per worker at 2,500 requests/s and 30 s, which every full garbage collection walks
(p99 at 32 connections 4-5x the p90, measured). BentoML has no setting to leave it out (`traffic.timeout`
must be a positive number), so it is swapped for a pass-through before BentoML builds its app; the
platform's own edge (`services/http.py:EdgeMiddleware`) times requests and cancels their queued work.
`tests/services/test_http.py::test_requests_leave_no_timer_behind` fails if BentoML stops using it.
"""

from __future__ import annotations

from collections.abc import Callable

from bentoml._internal.server.http import traffic


def _pass_through(app: Callable, timeout: float) -> Callable:
    return app


def replace_bentoml_timeout() -> None:
    traffic.TimeoutMiddleware = _pass_through
