"""The Open Inference Protocol v2 (REST) front-end, with Triton's binary tensor data extension.

Two layers here, as KServe splits them: typed request/response data (pydantic), and a codec between HTTP
bodies and NumPy tensors (JSON `data`, nested or flat, and the binary extension that `tritonclient` uses by
default). The routes only translate to the data plane (services/inference.py), which knows nothing of HTTP;
they find this worker's served models on the app (`app.state.models`).
"""

import json
import math
import struct
from collections.abc import Callable, Sequence
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Path, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field, ValidationError

from contracts.tensors import DATATYPES, NUMPY_TYPES, datatype_of
from services.app import DirectRoute, media_types
from services.classification import class_count, classify
from services.errors import BadRequest, Unavailable, validation_message
from services.inference import Choice, InferenceModel, ModelRepository
from services.repository import json_body, parsed
from services.shared_memory import Place, served_regions
from services.traffic import ROUTING_KEY

HEADER_LENGTH = "inference-header-content-length"
# NumPy kinds of JSON data each tensor kind takes: no int from a float (4.5 would become 4), bools from bools only.
JSON_KINDS = {"f": "fiu", "i": "iu", "u": "iu", "b": "b"}
SERVER = {"name": "modelroad", "version": "0.1.0"}
EXTENSIONS = ["binary_tensor_data", "classification", "model_configuration", "statistics"]


class RequestInput(BaseModel):
    # The document states the rules `tensor_of` enforces (with its own messages): the protocol's datatypes, no
    # negative dimension.
    name: str
    shape: Annotated[list[int], Field(json_schema_extra={"items": {"type": "integer", "minimum": 0}})]
    datatype: Annotated[str, Field(json_schema_extra={"enum": list(DATATYPES)})]
    parameters: dict[str, Any] | None = None
    data: Any = None


class RequestOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = None


class InferenceRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: Annotated[list[RequestInput], Field(min_length=1)]
    outputs: list[RequestOutput] | None = None


def _deserialize_bytes(buffer: bytes, count: int, name: str) -> np.ndarray:
    """Triton's BYTES wire form: each element a 4-byte little-endian length, then its bytes."""
    items, offset = [], 0
    while offset < len(buffer):
        if offset + 4 > len(buffer):
            raise BadRequest(f"input {name}: BYTES data ends inside an element's length")
        (length,) = struct.unpack_from("<I", buffer, offset)
        offset += 4
        if offset + length > len(buffer):
            raise BadRequest(f"input {name}: a BYTES element runs past the data")
        items.append(buffer[offset : offset + length])
        offset += length
    if len(items) != count:
        raise BadRequest(f"input {name}: shape holds {count} elements; the data has {len(items)}")
    return np.array(items, dtype=np.object_)


def tensor_bytes(array: np.ndarray) -> bytes:
    """An output's raw bytes, as both the binary extension and gRPC's raw contents carry them."""
    return serialize_bytes(array) if array.dtype == np.object_ else np.ascontiguousarray(array).tobytes()


def serialize_bytes(array: np.ndarray) -> bytes:
    parts = []
    for item in array.reshape(-1):
        data = item if isinstance(item, bytes) else str(item).encode()
        parts.append(struct.pack("<I", len(data)) + data)
    return b"".join(parts)


def tensor_of(spec: RequestInput, binary: bytes | None) -> np.ndarray:
    """One input's array, from its `data` (JSON, or gRPC's typed contents) or its binary bytes."""
    if spec.datatype not in NUMPY_TYPES:
        raise BadRequest(f"input {spec.name}: unknown datatype {spec.datatype!r}; use one of {sorted(NUMPY_TYPES)}")
    if any(d < 0 for d in spec.shape):
        raise BadRequest(f"input {spec.name}: shape {spec.shape} has a negative dimension")
    count, dtype = math.prod(spec.shape), NUMPY_TYPES[spec.datatype]
    if binary is not None:
        if spec.datatype == "BYTES":
            return _deserialize_bytes(binary, count, spec.name).reshape(spec.shape)
        if len(binary) != count * np.dtype(dtype).itemsize:
            raise BadRequest(
                f"input {spec.name}: shape {spec.shape} of {spec.datatype} needs "
                f"{count * np.dtype(dtype).itemsize} bytes; got {len(binary)}"
            )
        return np.frombuffer(binary, dtype=dtype).reshape(spec.shape)
    if spec.data is None:
        raise BadRequest(f"input {spec.name}: no data (send `data`, or binary data with parameters.binary_data_size)")
    try:
        if spec.datatype == "BYTES":
            flat = np.asarray(spec.data, dtype=np.object_).reshape(-1)
            array = np.array([v.encode() if isinstance(v, str) else v for v in flat], dtype=np.object_)
            if not all(isinstance(v, bytes) for v in array):
                raise ValueError("BYTES data must be strings")
        else:
            given = np.asarray(spec.data)
            if given.size and given.dtype.kind not in JSON_KINDS[np.dtype(dtype).kind]:
                raise ValueError(f"JSON {given.dtype.name} values cannot be {spec.datatype} without loss")
            array = given.astype(dtype)
    except (ValueError, TypeError, OverflowError) as exc:
        raise BadRequest(f"input {spec.name}: data is not {spec.datatype} values in a regular array ({exc})") from None
    if array.size != count:
        raise BadRequest(f"input {spec.name}: shape {spec.shape} holds {count} elements; the data has {array.size}")
    return array.reshape(spec.shape)


def decode_request(body: bytes, header_length: str | None) -> tuple[InferenceRequest, dict[str, np.ndarray]]:
    """An infer request's body -> its JSON part and its input tensors by name."""
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise BadRequest(f"Inference-Header-Content-Length {header_length!r} is not a length within the body")
        header, binary = body[: int(header_length)], body[int(header_length) :]
    else:
        header, binary = body, b""
    try:
        request = InferenceRequest.model_validate_json(header)
    except ValidationError as exc:
        raise BadRequest(validation_message(exc.errors())) from None
    tensors: dict[str, np.ndarray] = {}
    offset = 0
    for spec in request.inputs:
        size = (spec.parameters or {}).get("binary_data_size")
        place = Place.of(spec.parameters or {}, "input", spec.name)
        if place is not None:
            if size is not None or spec.data is not None:
                raise BadRequest(f"{place.what}: send it in shared memory, as binary data or as data: one of them")
            tensors[spec.name] = tensor_of(spec, place.read())
        elif size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise BadRequest(f"input {spec.name}: binary_data_size {size!r} runs past the body's binary data")
            tensors[spec.name] = tensor_of(spec, binary[offset : offset + size])
            offset += size
        else:
            tensors[spec.name] = tensor_of(spec, None)
    if offset != len(binary):
        raise BadRequest(f"the body has {len(binary) - offset} bytes of binary data that no input claims")
    if len(tensors) != len(request.inputs):
        raise BadRequest("each input may be sent once")
    return request, tensors


def encode_response(model: InferenceModel, request: InferenceRequest, outputs: dict[str, np.ndarray]) -> Response:
    """The infer response: requested outputs (all by default), each as JSON data or binary as asked."""
    binary_default = bool((request.parameters or {}).get("binary_data_output", False))
    wanted = request.outputs or [RequestOutput(name=name) for name in outputs]
    entries, chunks = [], []
    for requested in wanted:
        if requested.name not in outputs:
            raise BadRequest(f"{model.name} has no output {requested.name!r}; its outputs are {sorted(outputs)}")
        array = outputs[requested.name]
        parameters = requested.parameters or {}
        if count := class_count(requested.name, parameters.get("classification")):
            array = classify(requested.name, array, count, model.labels)
        entry: dict[str, Any] = {"name": requested.name, "datatype": datatype_of(array), "shape": list(array.shape)}
        if place := Place.of(parameters, "output", requested.name):
            entry["parameters"] = place.wrote(tensor_bytes(array))
        elif parameters.get("binary_data", binary_default):
            chunk = tensor_bytes(array)
            entry["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        else:
            flat = array.reshape(-1)
            entry["data"] = [v.decode() for v in flat] if array.dtype == np.object_ else flat.tolist()
        entries.append(entry)
    answer: dict[str, Any] = {"model_name": model.name, "model_version": model.version, "outputs": entries}
    if request.id is not None:
        answer["id"] = request.id
    header = json.dumps(answer).encode()
    if not chunks:
        return Response(header, media_type="application/json")
    return Response(
        header + b"".join(chunks),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(header))},
    )


def served_models(request: Request) -> ModelRepository:
    """This worker's served models (set on the app when the worker made them)."""
    return request.app.state.models


def server_is_ready(request: Request) -> Callable[[], bool]:
    return request.app.state.ready


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
        if not server_is_ready(request)():
            raise Unavailable("the models are still loading")
        return {"ready": True}

    add_model_routes(router, Name, Version)

    async def model_infer(request: Request, name: Name) -> Response:
        return await infer(request, name)

    async def version_infer(request: Request, name: Name, version: Version) -> Response:
        return await infer(request, name, version)

    # The hot routes, answered without FastAPI's request handling (services/app.py).
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
        return {"model_stats": served_models(request).statistics()}

    @router.get("/models/{name}/stats", summary="the model's statistics (Triton's)", responses={404: ERRORS[404]})
    async def model_statistics(request: Request, name: Name) -> dict[str, Any]:
        return {"model_stats": served_models(request).statistics(name)}

    @router.get(
        "/models/{name}/versions/{version}/stats",
        summary="the model version's statistics (Triton's)",
        responses={404: ERRORS[404]},
    )
    async def version_statistics(request: Request, name: Name, version: Version) -> dict[str, Any]:
        return {"model_stats": served_models(request).statistics(name, version)}

    @router.get("/models/{name}", summary="model metadata", responses={404: ERRORS[404]})
    async def model_metadata(request: Request, name: Name) -> dict[str, Any]:
        return served_models(request).metadata(name)

    @router.get("/models/{name}/versions/{version}", summary="model version metadata", responses={404: ERRORS[404]})
    async def version_metadata(request: Request, name: Name, version: Version) -> dict[str, Any]:
        return served_models(request).metadata(name, version)

    @router.get("/models/{name}/config", summary="model configuration (Triton's)", responses={404: ERRORS[404]})
    async def model_config(request: Request, name: Name) -> dict[str, Any]:
        return served_models(request).config(name)

    @router.get(
        "/models/{name}/versions/{version}/config",
        summary="model version configuration (Triton's)",
        responses={404: ERRORS[404]},
    )
    async def version_config(request: Request, name: Name, version: Version) -> dict[str, Any]:
        return served_models(request).config(name, version)

    @router.get("/models/{name}/ready", summary="the model is ready", responses={404: ERRORS[404], 503: ERRORS[503]})
    async def model_ready(request: Request, name: Name) -> dict[str, Any]:
        return readiness(served_models(request).get(name))

    @router.get(
        "/models/{name}/versions/{version}/ready",
        summary="the model version is ready",
        responses={404: ERRORS[404], 503: ERRORS[503]},
    )
    async def version_ready(request: Request, name: Name, version: Version) -> dict[str, Any]:
        return readiness(served_models(request).get(name, version))


def readiness(model: InferenceModel) -> dict[str, Any]:
    if not model.ready:
        raise Unavailable(f"{model.name} {model.version} is still loading")
    return {"name": model.name, "ready": True}


async def infer(request: Request, name: str, version: str | None = None) -> Response:
    """One inference: on the version the policy chooses (its shadow gets a copy), or the version the URL names."""
    body = await request.body()
    choice = choose(served_models(request), name, version, request.headers.get(ROUTING_KEY))
    parsed = InferenceRequest.model_construct()  # the body's JSON part, once decoded

    def decode() -> dict[str, np.ndarray]:
        nonlocal parsed
        parsed, tensors = decode_request(body, request.headers.get(HEADER_LENGTH))
        return tensors

    response = await choice.answer(decode, lambda model, outputs: encode_response(model, parsed, outputs))
    response.headers.update(choice.version_header)
    return response


def choose(models: ModelRepository, name: str, version: str | None, key: str | None) -> Choice:
    """The version the policy chooses (by the request's routing key), or the one a request names, which bypasses it."""
    return models.choose(name, key) if version is None else Choice(models.get(name, version))
