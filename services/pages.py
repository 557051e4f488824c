"""The server's own pages: `/`, what is served, and `/reference`, the API reference (Swagger UI, its files from the
`fastapi-offline` package). Every asset comes from this server: BentoML's index page, which `/` replaces, loads
Google Tag Manager (a request to a third party from every browser that opens it).

Every value on a page is escaped (`html.escape`): model names, labels and versions come from the store.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from services.app import REFERENCE_PATH
from services.inference import InferenceModel, ModelRepository

ASSETS = Path(fastapi_offline.__file__).parent / "static"  # swagger-ui-bundle.js, swagger-ui.css, favicon.png
STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2rem;max-width:72rem}table{border-collapse:collapse}"
    "td,th{border-bottom:1px solid #ddd;padding:.3rem .8rem;text-align:left}code{font-size:.9em}"
)


def model_row(model: InferenceModel, policy: str) -> str:
    card = model.runner.card
    score = card.metrics.get(card.key_metric)
    cells = [
        model.name,
        model.version,
        card.task,
        f"{card.key_metric} {score:.4f}" if isinstance(score, float) else "",
        card.baselines_line,
        card.created_at[:19].replace("T", " "),
        f"{card.parity_max_abs_diff:.1e}" if card.parity_max_abs_diff is not None else "",
        card.digest[:19],
        policy,
    ]
    return "<tr>" + "".join(f"<td>{escape(str(cell))}</td>" for cell in cells) + "</tr>"


def overview(models: ModelRepository, waiting: dict[str, str]) -> str:
    """The served stored models (their graphs; each family model's pipeline beside it), version policies, and what
    is awaited."""
    rows = []
    for model in models.models():
        if model.name != model.model:
            continue  # a pipeline: the row of its stored model says it all
        policy = models.policies.get(model.model)
        rows.append(model_row(model, str(policy.to_record()) if policy else "latest takes all"))
    head = "".join(
        f"<th>{h}</th>"
        for h in ("model", "version", "task", "test", "baselines", "created", "parity", "digest", "policy")
    )
    awaited = "".join(f"<li><b>{escape(name)}</b>: {escape(why)}</li>" for name, why in waiting.items())
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>modelroad</title>"
        f'<link rel=icon href="{REFERENCE_PATH}/assets/favicon.png"><style>{STYLE}</style></head><body>'
        "<h1>modelroad</h1><p>CNN, RNN and Transformer models served with ONNX Runtime: family routes and the "
        "Open Inference Protocol (REST and gRPC) for every model.</p>"
        f'<p><a href="{REFERENCE_PATH}">API reference</a> · <a href="/docs.json">OpenAPI document</a> · '
        '<a href="/readyz">readiness</a> · <a href="/metrics">metrics</a></p>'
        f"<h2>Served</h2><table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        + (f"<h2>Awaited</h2><ul>{awaited}</ul>" if awaited else "")
        + "</body></html>"
    )


def routes() -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/", response_class=HTMLResponse)
    async def index(request: Request) -> HTMLResponse:
        state = request.app.state
        pending = getattr(state, "pending", None)
        waiting = pending.waiting(state.models.versions) if pending is not None else {}
        return HTMLResponse(overview(state.models, waiting), headers={"Cache-Control": "no-store"})

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
    return router
