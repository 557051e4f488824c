"""`python -m training import FILE.onnx --name NAME [--labels labels.txt]`: a user's own ONNX model into the store.

Checked before it is stored: `onnx.checker` full check, opsets within what this ONNX Runtime runs,
external data only inside the model's own folder (no absolute paths, no `..`, no symlink out:
ONNX's CVE-2024-27318), and one ONNX Runtime session opened. The card records the graph's own
inputs and outputs (no family: the model is served through the inference protocol, tensors in and out)
and the sha256 of every stored file.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import onnx
import onnxruntime as ort
from onnx.external_data_helper import uses_external_data

from contracts.card import ModelCard
from contracts.tensors import TensorSpec
from training.register import register_model

NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")  # what BentoML's store accepts as a model name


class ImportRefused(ValueError):
    """The file cannot be served safely or at all; the message says why."""


def graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor a graph holds: initializers and node attributes, subgraphs (If, Loop, Scan) included."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            for subgraph in [attribute.g] if attribute.HasField("g") else []:
                yield from graph_tensors(subgraph)
            for subgraph in attribute.graphs:
                yield from graph_tensors(subgraph)


def external_files(model: onnx.ModelProto, folder: Path) -> list[Path]:
    """The external data files the graph names, each checked to lie inside `folder` (resolved, links followed)."""
    files = []
    root = folder.resolve()
    for tensor in graph_tensors(model.graph):
        if not uses_external_data(tensor):
            continue
        location = {entry.key: entry.value for entry in tensor.external_data}.get("location", "")
        relative = Path(location)
        if not location or relative.is_absolute() or ".." in relative.parts:
            raise ImportRefused(
                f"tensor {tensor.name!r}: external data location {location!r} must be a plain relative path"
            )
        resolved = (folder / relative).resolve()
        if not resolved.is_relative_to(root):
            raise ImportRefused(f"tensor {tensor.name!r}: external data {location!r} leads outside the model's folder")
        if not resolved.is_file():
            raise ImportRefused(f"tensor {tensor.name!r}: external data file {location!r} is missing")
        files.append(relative)
    return sorted(set(files))


def check_opsets(model: onnx.ModelProto) -> int:
    """The default-domain opset, refused past what this onnx (and so this ONNX Runtime build's era) knows."""
    opsets = {entry.domain or "ai.onnx": entry.version for entry in model.opset_import}
    opset = opsets.get("ai.onnx", 0)
    newest = onnx.defs.onnx_opset_version()
    if not 1 <= opset <= newest:
        raise ImportRefused(f"the graph's opset {opset} is outside 1..{newest}, the opsets this installation runs")
    return opset


def signature(session: ort.InferenceSession) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """The graph's inputs and outputs, dynamic axes under their names in the graph (or "dynamic")."""

    def spec(arg: ort.NodeArg) -> TensorSpec:
        datatype = TensorSpec.from_onnx(arg.name, arg.type, arg.shape).datatype
        return TensorSpec(arg.name, datatype, tuple(d if isinstance(d, int) else (d or "dynamic") for d in arg.shape))

    return tuple(map(spec, session.get_inputs())), tuple(map(spec, session.get_outputs()))


def import_model(path: Path, name: str, labels_path: Path | None = None) -> str:
    """Check `path` and register it as `name`; returns the store tag."""
    if not NAME.match(name):
        raise ImportRefused(f"name {name!r}: use lower-case letters, digits, '.', '_' and '-', at most 63 characters")
    if path.is_symlink() or not path.is_file():
        raise ImportRefused(f"{path} is not a regular file")
    model = onnx.load(str(path), load_external_data=False)
    data_files = external_files(model, path.parent)
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ImportRefused(f"onnx.checker refused the graph: {str(exc).splitlines()[0]}") from None
    opset = check_opsets(model)
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ImportRefused(f"ONNX Runtime cannot open the graph: {str(exc).splitlines()[0]}") from None
    inputs, outputs = signature(session)
    labels = [line.strip() for line in labels_path.read_text().splitlines() if line.strip()] if labels_path else []
    card = ModelCard(task="imported", inputs=inputs, outputs=outputs, output=outputs[0].name, labels=tuple(labels),
                     opset=opset, data_source=str(path.resolve()))  # fmt: skip
    files = {"model.onnx": path, **{str(f): path.parent / f for f in data_files}}
    return register_model(name, files, card)[0]
