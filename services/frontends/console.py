"""The server's own pages: `/`, the console (what is served, live figures, a form per family to try it), and
`/reference`, the API reference (Swagger UI, its files from the `fastapi-offline` package). Every asset comes
from this server: BentoML's index page, which `/` replaces, loads Google Tag Manager (a request to a third party
from every browser that opens it).

The console is a static page (services/console/) that reads two JSON documents, `/console/models` and
`/console/figures`, and writes every value with `textContent`: names, labels and answers are never markup.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import fastapi_offline
from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from services.dataplane.models import InferenceModel, ModelRepository
from services.edge.app import CONSOLE_PATH, REFERENCE_PATH
from services.edge.worker import worker
from services.ops.metrics import version_figures
from services.settings import SETTINGS

ASSETS = Path(fastapi_offline.__file__).parent / "static"  # swagger-ui-bundle.js, swagger-ui.css, favicon.png
CONSOLE = Path(__file__).parents[1] / "console"  # index.html, console.js, console.css


def version_summary(model: InferenceModel) -> dict[str, Any]:
    card = model.runner.card
    score = card.metrics.get(card.key_metric)
    return {
        "version": model.version,
        "task": card.task,
        "metric": card.key_metric,
        "score": score if isinstance(score, (int, float)) else None,
        "baselines": card.baselines_line,
        "parent": card.parent.get("base_model", ""),  # a fine-tune's: the model it was fine-tuned from
        "created": card.created_at[:19].replace("T", " "),
        "parity": card.parity_max_abs_diff,
        "digest": card.digest[:19],
        "labels": list(card.labels),
        "example": card.example,
        # Another graph of a stored model (a generator's decoder): served raw, but not what its family's route runs.
        "companion": model.runner.name != model.runner.tag.partition(":")[0],
    }


def served_models(models: ModelRepository) -> list[dict[str, Any]]:
    """Each served stored model (a family model's pipeline is its route, not a row) with its versions, oldest
    first, and its version policy (None: the latest takes all)."""
    rows = []
    for name, versions in models.versions.items():
        latest = list(versions.values())[-1]
        if latest.name != latest.model:
            continue
        policy = models.policies.get(name)
        rows.append(
            {
                "name": name,
                "versions": [version_summary(model) for model in versions.values()],
                "policy": policy.to_record() if policy else None,
            }
        )
    return rows


def routes(family_routes: Sequence[str]) -> APIRouter:
    """The console's pages; `family_routes`: the routes its forms call (the families', as registered)."""
    router = APIRouter(include_in_schema=False)

    @router.get("/")
    async def console() -> FileResponse:
        return FileResponse(CONSOLE / "index.html", headers={"Cache-Control": "no-store"})

    @router.get(f"{CONSOLE_PATH}/models")
    async def models(request: Request) -> JSONResponse:
        here = worker(request)
        served = {route.path for route in request.app.routes}
        return JSONResponse(
            {
                "keys": bool(SETTINGS.api_keys_file),
                "routes": [path for path in family_routes if path in served],
                "models": served_models(here.models),
                "awaited": here.pending.waiting(here.models.versions) if here.pending is not None else {},
            },
            headers={"Cache-Control": "no-store"},
        )

    @router.get(f"{CONSOLE_PATH}/figures")
    async def figures() -> JSONResponse:
        return JSONResponse({"at": time.time(), "versions": version_figures()}, headers={"Cache-Control": "no-store"})

    @router.get(REFERENCE_PATH, response_class=HTMLResponse)
    async def reference() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/docs.json",
            title="modelroad: API reference",
            swagger_js_url=f"{REFERENCE_PATH}/assets/swagger-ui-bundle.js",
            swagger_css_url=f"{REFERENCE_PATH}/assets/swagger-ui.css",
            swagger_favicon_url=f"{REFERENCE_PATH}/assets/favicon.png",
        )

    router.routes.append(Mount(f"{REFERENCE_PATH}/assets", StaticFiles(directory=ASSETS), name="reference-assets"))
    router.routes.append(Mount(f"{CONSOLE_PATH}/assets", StaticFiles(directory=CONSOLE), name="console-assets"))
    return router
