"""Inference requests for any model that speaks the Open Inference Protocol: inputs made from the model's own
metadata (or read from a file), encoded as JSON tensors or with Triton's binary tensor extension."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from contracts.tensors import NUMPY_TYPES, TensorSpec, datatype_of, tensor_bytes

# BYTES inputs: random phrases of these words (UTF-8, a few to a dozen words each).
WORDS = ("the", "a", "small", "large", "red", "blue", "animal", "food", "tool", "person", "plant", "sweet")


class RequestProblem(ValueError):
    """The inputs cannot be made or read as asked: the message says what to give instead."""


def input_specs(metadata: dict[str, Any], only: Sequence[str] = ()) -> list[TensorSpec]:
    """The model's inputs from its metadata (`only`: those named), each shape's -1 dynamic."""
    specs = [TensorSpec(i["name"], i["datatype"], tuple(i["shape"])) for i in metadata.get("inputs") or []]
    if not specs:
        raise RequestProblem(
            f"{metadata.get('name')}'s metadata lists no inputs (a KServe custom model declares none): "
            "give real ones with --inputs FILE (.npz of named arrays, or JSON inference requests)"
        )
    if only:
        unknown = set(only) - {s.name for s in specs}
        if unknown:
            raise RequestProblem(
                f"{metadata.get('name')} has no input {sorted(unknown)}; its inputs: {[s.name for s in specs]}"
            )
        specs = [s for s in specs if s.name in only]
    return specs


def concrete_shape(spec: TensorSpec, batch: int, shapes: dict[str, tuple[int, ...]]) -> tuple[int, ...]:
    """The shape to send: --shape's for this input, else the metadata's with the batch axis (a leading -1) = batch."""
    if spec.name in shapes:
        given = shapes[spec.name]
        return given if len(given) == len(spec.shape) else (batch, *given)
    if any(d < 0 for d in spec.shape[1:]):
        raise RequestProblem(
            f"input {spec.name} has dynamic dimensions {list(spec.shape)}: give them with --shape {spec.name}:"
            + "x".join("N" if d < 0 else str(d) for d in spec.shape[1:])
        )
    return (batch, *spec.shape[1:]) if spec.shape and spec.shape[0] < 0 else spec.shape


def random_tensor(
    spec: TensorSpec, shape: tuple[int, ...], rng: np.random.Generator, strings: Sequence[str]
) -> np.ndarray:
    """Valid random values of the input's datatype: floats in [0, 1), small non-negative integers (valid token
    ids, class ids), random booleans, and BYTES as UTF-8 phrases (or the given strings)."""
    if spec.datatype not in NUMPY_TYPES:
        raise RequestProblem(f"input {spec.name}: unknown datatype {spec.datatype}")
    dtype = np.dtype(NUMPY_TYPES[spec.datatype]) if spec.datatype != "BYTES" else np.dtype(object)
    if spec.datatype == "BYTES":
        pool = list(strings) or [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 12)))) for _ in range(64)]
        return np.array(
            [pool[i % len(pool)].encode() for i in rng.permutation(int(np.prod(shape)))], dtype=object
        ).reshape(shape)
    if dtype.kind == "b":
        return rng.random(shape) < 0.5
    if dtype.kind in "iu":
        return rng.integers(0, 100, size=shape).astype(dtype)
    return rng.random(shape).astype(dtype)


def random_inputs(
    specs: Sequence[TensorSpec],
    batch: int,
    shapes: dict[str, tuple[int, ...]],
    seed: int,
    strings: Sequence[str],
    count: int,
) -> list[dict[str, np.ndarray]]:
    """`count` different sets of inputs (so that no cache answers them all)."""
    rng = np.random.default_rng(seed)
    return [
        {s.name: random_tensor(s, concrete_shape(s, batch, shapes), rng, strings) for s in specs} for _ in range(count)
    ]


def read_inputs(path: Path) -> list[dict[str, np.ndarray]] | list[bytes]:
    """Real inputs: an .npz of named arrays (one request), or a JSON file of OIP requests (a list, or one),
    sent as they are."""
    if not path.is_file():
        raise RequestProblem(f"--inputs {path}: no such file")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            return [{name: archive[name] for name in archive.files}]
    try:
        loaded = json.loads(path.read_text())
    except ValueError as exc:
        raise RequestProblem(f"--inputs {path}: neither an .npz nor JSON ({exc})") from None
    requests = loaded if isinstance(loaded, list) else [loaded]
    if not requests or not all(isinstance(r, dict) and "inputs" in r for r in requests):
        raise RequestProblem(f"--inputs {path}: a JSON file of inference requests, each with `inputs`")
    return [json.dumps(r).encode() for r in requests]


@dataclass(frozen=True)
class Encoded:
    body: bytes
    headers: dict[str, str]
    rows: int  # inferences in the request (its batch axis)


def encode(inputs: dict[str, np.ndarray], binary: bool) -> Encoded:
    """One infer request body: JSON tensors, or (binary) a JSON header then each tensor's raw bytes, outputs
    asked back as binary too (tritonclient's default)."""
    rows = len(next(iter(inputs.values())))
    if not binary:
        tensors = [
            {
                "name": name,
                "shape": list(array.shape),
                "datatype": datatype_of(array),
                "data": [v.decode() for v in array.reshape(-1)]
                if array.dtype == object
                else array.reshape(-1).tolist(),
            }
            for name, array in inputs.items()
        ]
        return Encoded(json.dumps({"inputs": tensors}).encode(), {"Content-Type": "application/json"}, rows)
    chunks, tensors = [], []
    for name, array in inputs.items():
        chunk = tensor_bytes(array)
        chunks.append(chunk)
        tensors.append(
            {
                "name": name,
                "shape": list(array.shape),
                "datatype": datatype_of(array),
                "parameters": {"binary_data_size": len(chunk)},
            }
        )
    header = json.dumps({"inputs": tensors, "parameters": {"binary_data_output": True}}).encode()
    headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))}
    return Encoded(header + b"".join(chunks), headers, rows)


def encode_grpc(inputs: dict[str, np.ndarray], model: str, version: str | None) -> Encoded:
    """One serialized gRPC `ModelInferRequest`, every tensor as raw bytes (tritonclient.grpc's default)."""
    from tritonclient.grpc import service_pb2 as pb  # only the gRPC protocol needs it

    request = pb.ModelInferRequest(model_name=model, model_version=version or "")
    for name, array in inputs.items():
        request.inputs.add(name=name, datatype=datatype_of(array), shape=array.shape)
        request.raw_input_contents.append(tensor_bytes(array))
    return Encoded(request.SerializeToString(), {}, len(next(iter(inputs.values()))))


def encoded_as_sent(body: bytes) -> Encoded:
    """A JSON request from an --inputs file, as it is."""
    rows = max((i.get("shape") or [1])[0] for i in json.loads(body)["inputs"])
    return Encoded(body, {"Content-Type": "application/json"}, rows)
