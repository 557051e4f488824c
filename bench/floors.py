"""The floors the platform is measured against: the same routes and answer shapes, no inference.

- `starlette_app`: a bare Starlette app (`uvicorn bench.floors:starlette_app`): the HTTP floor.
- `NoopService`: a default BentoML `@bentoml.api` service (`bentoml serve bench.floors:NoopService`):
  BentoML's own floor, with the platform's worker count and access log setting.
- `MountedService`: `starlette_app` mounted in a BentoML service at `/` as the platform mounts its app
  (`bentoml.asgi_app`, the platform's service settings, `AppFirst`): the floor of the platform's own HTTP stack,
  BentoML's ASGI layers and uvicorn included.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import bentoml
from pydantic import Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from services.compat.bentoml_asgi import AppFirst
from services.settings import service_config

LABELS = [f"class-{i}" for i in range(10)]
PROBABILITIES = dict.fromkeys(LABELS, 0.1)
IMAGE_ANSWER = {"label": LABELS[0], "class_id": 0, "probabilities": PROBABILITIES}
TEXT_ANSWER = {"label": LABELS[0], "probabilities": PROBABILITIES}


def forecast_answer(horizon: int) -> dict[str, Any]:
    return {"forecast": [0.0] * horizon, "model": "noop"}


async def classify_image(request: Request) -> JSONResponse:
    async with request.form() as form:
        await form["image"].read()
    return JSONResponse(IMAGE_ANSWER)


async def forecast(request: Request) -> JSONResponse:
    body = await request.json()
    return JSONResponse(forecast_answer(int(body["horizon"])))


async def classify_text(request: Request) -> JSONResponse:
    body = await request.json()
    return JSONResponse({**TEXT_ANSWER, "length": len(body["text"])})


async def ready(request: Request) -> JSONResponse:
    return JSONResponse({})


starlette_app = Starlette(
    routes=[
        Route("/classify_image", classify_image, methods=["POST"]),
        Route("/forecast", forecast, methods=["POST"]),
        Route("/classify_text", classify_text, methods=["POST"]),
        Route("/readyz", ready),
    ]
)


@bentoml.service(
    name="noop", workers=int(os.environ.get("MODELROAD_WORKERS", "1")), logging={"access": {"enabled": False}}
)
class NoopService:
    @bentoml.api(route="/classify_image")
    async def classify_image(self, image: Path) -> dict[str, Any]:
        return IMAGE_ANSWER

    @bentoml.api(route="/forecast")
    async def forecast(self, history: Annotated[list[float], Field(min_length=1)], horizon: int = 52) -> dict[str, Any]:
        return forecast_answer(horizon)

    @bentoml.api(route="/classify_text")
    async def classify_text(self, text: str) -> dict[str, Any]:
        return TEXT_ANSWER


@bentoml.service(**service_config("mounted"))  # the platform's BentoML settings: its metrics and tracing off
@bentoml.asgi_app(starlette_app, path="/")
class MountedService:
    pass


MountedService.add_asgi_middleware(AppFirst, mounted=starlette_app)
