"""/readyz with a body that says what is served and what is awaited."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from services.edge.worker import Worker, worker_of


class ReadinessReport:
    """BentoML's /readyz, answered with a body: 200 once every served model is ready, else 503. A pending model does
    not hold readiness back (a server starts with one family registered, and a probe must not restart it while it
    trains the rest); the JSON body lists what is served and what is awaited, and why. BentoML's own /readyz
    answers an empty line and has no hook for a body."""

    def __init__(self, app: ASGIApp, mounted: Any):
        self.app, self.mounted = app, mounted  # the platform's app, whose worker is attached at start

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        answered = scope["type"] == "http" and scope["path"] == "/readyz" and scope["method"] == "GET"
        worker = worker_of(self.mounted) if answered else None
        if worker is None:  # other paths and methods: BentoML's (HEAD; else 405)
            await self.app(scope, receive, send)
            return
        await self.report(worker)(scope, receive, send)

    @staticmethod
    def report(worker: Worker) -> JSONResponse:
        served = sorted(worker.models.versions)
        waiting = worker.pending.waiting(served) if worker.pending is not None else {}
        body = {"ready": worker.ready(), "served": served, "waiting": waiting}
        if worker.admin is not None:  # the fleet's state: the generation served here, the newest read, and why
            body["generation"] = worker.admin.progress()
        return JSONResponse(body, status_code=200 if body["ready"] else 503, headers={"Cache-Control": "no-store"})
