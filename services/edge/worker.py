"""One worker's objects, made once at its start and handed to what answers requests: HTTP routes find them with
`worker(request)` (the one reader of the app's state), the gRPC server and the readiness report take them by
constructor or `worker_of(app)`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Request

from services.dataplane.admin import RepositoryAdmin
from services.dataplane.models import ModelRepository
from services.dataplane.pending import PendingModels
from services.edge.gate import Gate


@dataclass
class Worker:
    models: ModelRepository  # what this worker serves, and each model's version policy
    gate: Gate  # the keys, rate limit and in-flight bound its HTTP and gRPC edges share
    ready: Callable[[], bool]  # whether every served model is ready (and, with the extension, caught up)
    admin: RepositoryAdmin | None = None  # the repository extension, on with MODELROAD_ADMIN_TOKEN
    pending: PendingModels | None = None  # family models still training (`python -m training serve`)

    def attach(self, app: Any) -> None:
        app.state.worker = self


def worker_of(app: Any) -> Worker | None:
    """The worker attached to `app` (None before its start)."""
    return getattr(app.state, "worker", None)


def worker(request: Request) -> Worker:
    """The worker answering `request`."""
    return request.app.state.worker
