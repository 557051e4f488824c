"""One description of a tensor, for the card (what training recorded), the runner (the graph's signature) and the
inference protocol (what a client must send); and the one table of element types between ONNX, the protocol and
NumPy."""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

Feeds = dict[str, np.ndarray]  # tensor name -> array, batch axis first

# The inference protocol's datatypes: (ONNX element type, NumPy dtype). BYTES are Python bytes in object arrays.
DATATYPES: dict[str, tuple[str, type]] = {
    "FP32": ("tensor(float)", np.float32),
    "FP64": ("tensor(double)", np.float64),
    "FP16": ("tensor(float16)", np.float16),
    "INT64": ("tensor(int64)", np.int64),
    "INT32": ("tensor(int32)", np.int32),
    "INT16": ("tensor(int16)", np.int16),
    "INT8": ("tensor(int8)", np.int8),
    "UINT8": ("tensor(uint8)", np.uint8),
    "UINT16": ("tensor(uint16)", np.uint16),
    "UINT32": ("tensor(uint32)", np.uint32),
    "UINT64": ("tensor(uint64)", np.uint64),
    "BOOL": ("tensor(bool)", np.bool_),
    "BYTES": ("tensor(string)", np.object_),
}
NUMPY_TYPES = {datatype: numpy for datatype, (_, numpy) in DATATYPES.items()}
FROM_ONNX = {onnx: datatype for datatype, (onnx, _) in DATATYPES.items()}
# The card records NumPy's names ("float32"); strings were recorded as "str".
FROM_NUMPY_NAME = {np.dtype(numpy).name: datatype for datatype, numpy in NUMPY_TYPES.items()} | {"str": "BYTES"}


def datatype_of(array: np.ndarray) -> str:
    """The protocol's datatype of an array (object arrays hold BYTES)."""
    return next(name for name, numpy in NUMPY_TYPES.items() if np.dtype(numpy) == array.dtype)


def serialize_bytes(items: Iterable[bytes | str]) -> bytes:
    """Triton's BYTES wire form (binary tensor data, gRPC raw contents): each element a 4-byte little-endian length,
    then its bytes (a str as UTF-8)."""
    parts = []
    for item in items:
        data = item if isinstance(item, bytes) else str(item).encode()
        parts.append(struct.pack("<I", len(data)) + data)
    return b"".join(parts)


def tensor_bytes(array: np.ndarray) -> bytes:
    """A tensor's raw bytes, as the binary tensor extension and gRPC's raw contents carry them."""
    return serialize_bytes(array.reshape(-1)) if array.dtype == np.object_ else np.ascontiguousarray(array).tobytes()


def deserialize_bytes(buffer: bytes) -> list[bytes]:
    """The elements of BYTES in Triton's wire form; ValueError, saying where, for a buffer not in that form."""
    items, offset = [], 0
    while offset < len(buffer):
        if offset + 4 > len(buffer):
            raise ValueError("BYTES data ends inside an element's length")
        (length,) = struct.unpack_from("<I", buffer, offset)
        offset += 4
        if offset + length > len(buffer):
            raise ValueError("a BYTES element runs past the data")
        items.append(buffer[offset : offset + length])
        offset += length
    return items


@dataclass(frozen=True)
class TensorSpec:
    """A named tensor: the protocol's datatype, and its shape (an int fixes a length; -1 or a name is dynamic)."""

    name: str
    datatype: str
    shape: tuple[int | str, ...]

    @property
    def dims(self) -> tuple[int, ...]:
        """The shape as the protocol states it: -1 for a dynamic axis."""
        return tuple(d if isinstance(d, int) else -1 for d in self.shape)

    @classmethod
    def from_onnx(cls, name: str, element_type: str, shape: Sequence[Any]) -> TensorSpec:
        """From ONNX Runtime's NodeArg fields (an unknown element type keeps ONNX's name)."""
        return cls(
            name, FROM_ONNX.get(element_type, element_type), tuple(d if isinstance(d, int) else -1 for d in shape)
        )

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> TensorSpec:
        dtype = record["dtype"]
        return cls(record["name"], FROM_NUMPY_NAME.get(dtype, dtype), tuple(record["shape"]))

    def to_record(self) -> dict[str, Any]:
        """As the card stores it: NumPy's dtype name ("str" for BYTES), named dynamic axes kept."""
        numpy = NUMPY_TYPES.get(self.datatype)
        dtype = "str" if self.datatype == "BYTES" else np.dtype(numpy).name if numpy else self.datatype
        return {"name": self.name, "dtype": dtype, "shape": list(self.shape)}

    def describe(self) -> dict[str, Any]:
        """As the inference protocol's metadata lists it."""
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.dims)}

    def problem(self, array: np.ndarray) -> str | None:
        """What keeps `array` from being this tensor, or None."""
        want = NUMPY_TYPES.get(self.datatype)
        if want is not None and array.dtype != want:
            return f"{self.name} must be {self.datatype}; got {array.dtype.name}"
        dims = self.dims
        if array.ndim != len(dims) or any(d != -1 and d != n for d, n in zip(dims, array.shape)):
            return f"{self.name} must have shape {list(dims)} (-1: any length); got {list(array.shape)}"
        return None


def feeds_problem(inputs: Sequence[TensorSpec], feeds: Feeds) -> str | None:
    """What is wrong with a call's arrays for a model with these inputs, or None.

    Checked before a call joins a batch, so that one bad call cannot fail the others in it.
    """
    names = [spec.name for spec in inputs]
    if sorted(feeds) != sorted(names):
        return f"the model's inputs are {names}; got {sorted(feeds)}"
    for spec in inputs:
        problem = spec.problem(feeds[spec.name])
        if problem:
            return problem
    return rows_problem(feeds)


def rows_problem(feeds: Feeds) -> str | None:
    """The batch-wide rule: every input holds the same number of rows, at least one."""
    if len({len(array) for array in feeds.values()}) != 1 or not len(next(iter(feeds.values()))):
        return "every input must hold the same number of rows, at least one"
    return None


def zero_feeds(inputs: Sequence[TensorSpec]) -> Feeds:
    """A one-row call of zeros (dynamic axes of length 1), to warm a session up."""
    return {
        spec.name: np.zeros([1 if d == -1 else d for d in spec.dims], NUMPY_TYPES[spec.datatype]) for spec in inputs
    }
