"""The Open Inference Protocol v2 (REST) front-end, with Triton's binary tensor data, classification, model
configuration, statistics and system shared-memory extensions.

The routes only translate: bodies to tensors and back by the codec (services/frontends/codec.py, shared with
gRPC), and calls to this worker's data plane (services/dataplane/models.py, which knows nothing of HTTP), found with
`worker(request)`.
"""

from collections.abc import Sequence
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Path, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from services.compat.fastapi_routes import DirectRoute, media_types
from services.dataplane.models import InferenceModel
from services.dataplane.traffic import ROUTING_KEY
from services.edge.routes import json_body, parsed
from services.edge.worker import worker
from services.errors import Unavailable
from services.frontends.codec import EXTENSIONS, SERVER, InferenceRequest, decode_request, encode_response
from services.frontends.shared_memory import served_regions

HEADER_LENGTH = "inference-header-content-length"


# tritonclient sends its bodies, JSON or binary, without a Content-Type.
INFER_TYPES = media_types("application/json", "application/octet-stream", None)
ERRORS = {
    400: {"description": "a bad request: wrong name, datatype, shape or data length"},
    415: {"description": "a body neither JSON nor binary tensors"},
    404: {"description": "no such model or version"},
    503: {"description": "not ready or overloaded; retry after Retry-After seconds"},
}
INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": InferenceRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            },
            "application/octet-stream": {
                "schema": {
                    "type": "string",
                    "format": "binary",
                    "description": "Triton's binary tensor data extension: the JSON request "
                    "(Inference-Header-Content-Length bytes), then the binary tensors",
                }
            },
        },
    }
}


def routes(names: Sequence[str], versions: Sequence[str], extensions: Sequence[str] = ()) -> APIRouter:
    """The protocol's routes; `names` and `versions` (what the store serves at start) document the path parameters.

    `extensions`: those served beside the binary tensor data extension (e.g. the model repository's routes).
    """
    server = {**SERVER, "extensions": [*EXTENSIONS, *extensions]}
    router = APIRouter(prefix="/v2", tags=["Open Inference Protocol"])
    Name = Annotated[str, Path(description="a served model's name", examples=list(names))]
    Version = Annotated[str, Path(description="one of its versions", examples=list(versions))]

    @router.get("", summary="server metadata")
    async def server_metadata() -> dict[str, Any]:
        return server

    @router.get("/health/live", summary="the server is live")
    async def server_live() -> dict[str, Any]:
        return {"live": True}

    @router.get("/health/ready", summary="every served model is ready", responses={503: ERRORS[503]})
    async def server_ready(request: Request) -> dict[str, Any]:
        if not worker(request).ready():
            raise Unavailable("the models are still loading")
        return {"ready": True}

    add_model_routes(router, Name, Version)

    async def model_infer(request: Request, name: Name) -> Response:
        return await infer(request, name)

    async def version_infer(request: Request, name: Name, version: Version) -> Response:
        return await infer(request, name, version)

    # The hot routes, answered without FastAPI's request handling (services/edge/app.py).
    for path, endpoint, summary in (
        ("/models/{name}/infer", model_infer, "inference"),
        ("/models/{name}/versions/{version}/infer", version_infer, "inference on a version"),
    ):
        router.add_api_route(
            path,
            endpoint,
            methods=["POST"],
            summary=summary,
            responses=ERRORS,
            openapi_extra=INFER_BODY,
            dependencies=[INFER_TYPES],
            route_class_override=DirectRoute,
        )

    return router


class Registration(BaseModel):
    """A system shared-memory region's registration: the object's key, and where the region lies in it."""

    key: str
    offset: Annotated[int, Field(ge=0)] = 0
    byte_size: Annotated[int, Field(ge=0)]


def shared_memory_routes() -> APIRouter:
    """Triton's system shared-memory extension (served only with MODELROAD_SHARED_MEMORY on)."""
    router = APIRouter(prefix="/v2/systemsharedmemory", tags=["Open Inference Protocol"])
    Region = Annotated[str, Path(description="a region's name")]

    def regions() -> Any:
        return served_regions("the shared memory extension")

    @router.get("/status", summary="every registered shared-memory region")
    async def status_all() -> list[dict[str, Any]]:
        return [region.describe() for region in regions().status()]

    @router.get("/region/{name}/status", summary="one registered region", responses={404: ERRORS[404]})
    async def status(name: Region) -> list[dict[str, Any]]:
        return [region.describe() for region in regions().status(name)]

    # tritonclient sends the registration's JSON without a Content-Type: `parsed` reads it whatever it says.
    @router.post(
        "/region/{name}/register",
        summary="register a region",
        responses={400: ERRORS[400]},
        openapi_extra=json_body(Registration, required=True),
    )
    async def register(request: Request, name: Region) -> dict[str, Any]:
        registration = await parsed(request, Registration)
        regions().register(name, registration.key, registration.offset, registration.byte_size)
        return {}

    @router.post("/unregister", summary="unregister every region")
    async def unregister_all() -> dict[str, Any]:
        regions().unregister()
        return {}

    @router.post("/region/{name}/unregister", summary="unregister a region")
    async def unregister(name: Region) -> dict[str, Any]:
        regions().unregister(name)
        return {}

    return router


def add_model_routes(router: APIRouter, Name: Any, Version: Any) -> None:
    """Each model's and version's metadata, configuration, statistics and readiness."""

    @router.get("/models/stats", summary="every served model's statistics (Triton's)")
    async def all_statistics(request: Request) -> dict[str, Any]:
        return {"model_stats": worker(request).models.statistics()}

    @router.get("/models/{name}/stats", summary="the model's statistics (Triton's)", responses={404: ERRORS[404]})
    async def model_statistics(request: Request, name: Name) -> dict[str, Any]:
        return {"model_stats": worker(request).models.statistics(name)}

    @router.get(
        "/models/{name}/versions/{version}/stats",
        summary="the model version's statistics (Triton's)",
        responses={404: ERRORS[404]},
    )
    async def version_statistics(request: Request, name: Name, version: Version) -> dict[str, Any]:
        return {"model_stats": worker(request).models.statistics(name, version)}

    @router.get("/models/{name}", summary="model metadata", responses={404: ERRORS[404]})
    async def model_metadata(request: Request, name: Name) -> dict[str, Any]:
        return worker(request).models.metadata(name)

    @router.get("/models/{name}/versions/{version}", summary="model version metadata", responses={404: ERRORS[404]})
    async def version_metadata(request: Request, name: Name, version: Version) -> dict[str, Any]:
        return worker(request).models.metadata(name, version)

    @router.get("/models/{name}/config", summary="model configuration (Triton's)", responses={404: ERRORS[404]})
    async def model_config(request: Request, name: Name) -> dict[str, Any]:
        return worker(request).models.config(name)

    @router.get(
        "/models/{name}/versions/{version}/config",
        summary="model version configuration (Triton's)",
        responses={404: ERRORS[404]},
    )
    async def version_config(request: Request, name: Name, version: Version) -> dict[str, Any]:
        return worker(request).models.config(name, version)

    @router.get("/models/{name}/ready", summary="the model is ready", responses={404: ERRORS[404], 503: ERRORS[503]})
    async def model_ready(request: Request, name: Name) -> dict[str, Any]:
        return readiness(worker(request).models.get(name))

    @router.get(
        "/models/{name}/versions/{version}/ready",
        summary="the model version is ready",
        responses={404: ERRORS[404], 503: ERRORS[503]},
    )
    async def version_ready(request: Request, name: Name, version: Version) -> dict[str, Any]:
        return readiness(worker(request).models.get(name, version))


def readiness(model: InferenceModel) -> dict[str, Any]:
    if not model.ready:
        raise Unavailable(f"{model.name} {model.version} is still loading")
    return {"name": model.name, "ready": True}


async def infer(request: Request, name: str, version: str | None = None) -> Response:
    """One inference: on the version the policy chooses (its shadow gets a copy), or the version the URL names."""
    body = await request.body()
    choice = worker(request).models.choice(name, version, request.headers.get(ROUTING_KEY))
    parsed = InferenceRequest.model_construct()  # the body's JSON part, once decoded

    def decode() -> dict[str, np.ndarray]:
        nonlocal parsed
        parsed, tensors = decode_request(body, request.headers.get(HEADER_LENGTH))
        return tensors

    def encode(model: InferenceModel, outputs: dict[str, np.ndarray]) -> Response:
        body, binary = encode_response(model, parsed, outputs)
        if binary is None:
            return Response(body, media_type="application/json", headers=choice.version_header)
        return Response(body, media_type="application/octet-stream", headers={**binary, **choice.version_header})

    return await choice.answer(decode, encode)
