"""BentoML (written against 1.4.39): a service middleware that hands the platform's requests straight to its app.

It knows BentoML's own routes by path (`BENTOML_PATHS`); tests/services/test_compat.py fails when an upgrade adds
one that would then go to the app instead.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send


class AppFirst:
    """A BentoML service middleware: every HTTP request but those to BentoML's own routes goes straight to the app
    BentoML mounts at "/". BentoML's request context (for `@bentoml.api` methods; a mounted app has none) and its
    router would otherwise come first, and its mount matches each of the app's routes once before the app's own
    router matches them again (what that costs: docs/benchmarks.md)."""

    BENTOML_PATHS = frozenset({"/livez", "/healthz", "/readyz", "/schema.json"})

    def __init__(self, app: ASGIApp, mounted: ASGIApp):
        self.app, self.mounted = app, mounted

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in self.BENTOML_PATHS:
            await self.mounted(scope, receive, send)
        else:
            await self.app(scope, receive, send)
