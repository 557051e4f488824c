"""The Open Inference Protocol's codec, for both front-ends: its request and response messages <-> NumPy tensors.

REST bodies are JSON (`data`, nested or flat) or Triton's binary tensor data extension (what `tritonclient` sends by
default), typed by pydantic as KServe types them; gRPC messages are Triton's own protobuf, with typed contents or
raw bytes. Both check a tensor the same way (`tensor_of`), read and write shared-memory regions
(services/frontends/shared_memory.py) and answer classification (services/frontends/classification.py) per output
(`requested_output`). Triton's BYTES wire form is contracts/tensors.py's.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, Field, ValidationError
from tritonclient.grpc import service_pb2 as pb

from contracts.tensors import DATATYPES, NUMPY_TYPES, Feeds, datatype_of, deserialize_bytes, tensor_bytes
from services.dataplane.models import InferenceModel
from services.errors import BadRequest, validation_message
from services.frontends.classification import class_count, classify
from services.frontends.shared_memory import Place

# NumPy kinds of JSON data each tensor kind takes: no int from a float (4.5 would become 4), bools from bools only.
JSON_KINDS = {"f": "fiu", "i": "iu", "u": "iu", "b": "b"}
SERVER = {"name": "modelroad", "version": "0.1.0"}
EXTENSIONS = ["binary_tensor_data", "classification", "model_configuration", "statistics"]
# Each datatype's typed contents field (FP16 and BF16 travel only as raw bytes, as in the protocol).
CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


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


def bytes_tensor(spec: RequestInput, binary: bytes, count: int) -> np.ndarray:
    """A BYTES input from its wire form (contracts/tensors.py)."""
    try:
        items = deserialize_bytes(binary)
    except ValueError as exc:
        raise BadRequest(f"input {spec.name}: {exc}") from None
    if len(items) != count:
        raise BadRequest(f"input {spec.name}: shape holds {count} elements; the data has {len(items)}")
    return np.array(items, dtype=np.object_).reshape(spec.shape)


def tensor_of(spec: RequestInput, binary: bytes | None) -> np.ndarray:
    """One input's array, from its `data` (JSON, or gRPC's typed contents) or its binary bytes."""
    if spec.datatype not in NUMPY_TYPES:
        raise BadRequest(f"input {spec.name}: unknown datatype {spec.datatype!r}; use one of {sorted(NUMPY_TYPES)}")
    if any(d < 0 for d in spec.shape):
        raise BadRequest(f"input {spec.name}: shape {spec.shape} has a negative dimension")
    count, dtype = math.prod(spec.shape), NUMPY_TYPES[spec.datatype]
    if binary is not None:
        if spec.datatype == "BYTES":
            return bytes_tensor(spec, binary, count)
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


def requested_output(model: InferenceModel, outputs: Feeds, name: str, parameters: dict[str, Any]) -> np.ndarray:
    """The array answered for output `name` as asked: the model's own, or its top classes (`classification`)."""
    if name not in outputs:
        raise BadRequest(f"{model.name} has no output {name!r}; its outputs are {sorted(outputs)}")
    if count := class_count(name, parameters.get("classification")):
        return classify(name, outputs[name], count, model.labels)
    return outputs[name]


# ---- REST: JSON and binary bodies ----


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


def encode_response(
    model: InferenceModel, request: InferenceRequest, outputs: Feeds
) -> tuple[bytes, dict[str, str] | None]:
    """The infer response's body: requested outputs (all by default), each as JSON data or binary as asked; with
    binary data, the Inference-Header-Content-Length header to send with it (None: a JSON body)."""
    binary_default = bool((request.parameters or {}).get("binary_data_output", False))
    wanted = request.outputs or [RequestOutput(name=name) for name in outputs]
    entries, chunks = [], []
    for requested in wanted:
        parameters = requested.parameters or {}
        array = requested_output(model, outputs, requested.name, parameters)
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
        return header, None
    return header + b"".join(chunks), {"Inference-Header-Content-Length": str(len(header))}


# ---- gRPC: Triton's protobuf messages ----


def decode_inputs(request: pb.ModelInferRequest) -> Feeds:
    """A request's input tensors by name, from a shared-memory region, `raw_input_contents` (one per input not in
    shared memory) or each input's typed contents; checked as REST checks JSON and binary data."""
    places = [Place.of(parameters(sent.parameters), "input", sent.name) for sent in request.inputs]
    raw, sent_raw = iter(request.raw_input_contents), sum(place is None for place in places)
    if request.raw_input_contents and len(request.raw_input_contents) != sent_raw:
        raise BadRequest(
            f"raw_input_contents has {len(request.raw_input_contents)} entries for {sent_raw} inputs: send one per "
            "input (but those in shared memory), or typed contents for every input"
        )
    tensors: Feeds = {}
    for sent, place in zip(request.inputs, places, strict=True):
        if sent.name in tensors:
            raise BadRequest("each input may be sent once")
        field = CONTENTS.get(sent.datatype)
        typed = list(getattr(sent.contents, field)) if field and not request.raw_input_contents and not place else None
        spec = RequestInput.model_construct(
            name=sent.name, shape=list(sent.shape), datatype=sent.datatype, parameters=None, data=typed
        )
        tensors[sent.name] = tensor_of(spec, place.read() if place is not None else next(raw, None))
    return tensors


def encode_outputs(model: InferenceModel, request: pb.ModelInferRequest, outputs: Feeds) -> pb.ModelInferResponse:
    """The requested outputs (all by default), as raw bytes in `raw_output_contents` (as Triton answers)."""
    response = pb.ModelInferResponse(model_name=model.name, model_version=model.version, id=request.id)
    wanted = [(asked.name, parameters(asked.parameters)) for asked in request.outputs] or [(n, {}) for n in outputs]
    for name, asked in wanted:
        array = requested_output(model, outputs, name, asked)
        answered = response.outputs.add(name=name, datatype=datatype_of(array), shape=array.shape)
        if place := Place.of(asked, "output", name):
            for key, value in place.wrote(tensor_bytes(array)).items():
                setattr(answered.parameters[key], "string_param" if isinstance(value, str) else "int64_param", value)
            response.raw_output_contents.append(b"")  # keeps the others' raw contents at their outputs' indices
        else:
            response.raw_output_contents.append(tensor_bytes(array))
    return response


def parameter(value: pb.InferParameter | None) -> object:
    """An InferParameter's value (None when absent)."""
    return None if value is None else getattr(value, value.WhichOneof("parameter_choice") or "string_param")


def parameters(values: Any) -> dict[str, object]:
    """A parameters map's values by name."""
    return {name: parameter(value) for name, value in values.items()}
