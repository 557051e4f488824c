"""`python -m training import FILE.onnx --name NAME [--labels labels.txt]`: a user's own ONNX model into the store.

Checked before it is stored: `onnx.checker` full check, opsets within what this ONNX Runtime runs,
external data only inside the model's own folder (no absolute paths, no `..`, no symlink out:
ONNX's CVE-2024-27318), and one ONNX Runtime session opened. The protocol answers tensors only: a ZipMap
(skl2onnx's default on every classifier: a list of {label: probability} maps) is removed so that the probability
tensor it maps is the output, its class labels kept in the card, and the new graph is proven to give the
original's probabilities on example inputs; any other non-tensor output is refused. The card records the graph's
inputs and outputs (no family: the model is served through the inference protocol, tensors in and out) and the
sha256 of every stored file.
"""

from __future__ import annotations

import copy
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper
from onnx.external_data_helper import load_external_data_for_model, uses_external_data

from contracts.card import ModelCard
from contracts.tensors import NUMPY_TYPES, TensorSpec
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


def unzip_maps(model: onnx.ModelProto) -> tuple[onnx.ModelProto, tuple[str, ...]]:
    """The graph with each ZipMap output replaced by the probability tensor it maps (same output name), and the
    class labels the ZipMap named; ImportRefused for any other output that is not a tensor."""
    producers = {output: node for node in model.graph.node for output in node.output}
    unzipped, labels = copy.deepcopy(model), ()
    for index, output in enumerate(model.graph.output):
        if output.type.HasField("tensor_type"):
            continue
        node = producers.get(output.name)
        if node is None or node.op_type != "ZipMap" or node.domain != "ai.onnx.ml":
            kind = output.type.WhichOneof("value")
            raise ImportRefused(
                f"output {output.name!r} is a {kind.removesuffix('_type')}, not a tensor: the inference protocol "
                "answers tensors (export it as one)"
            )
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        classes = attributes.get("classlabels_strings") or attributes.get("classlabels_int64s") or []
        labels = tuple(c.decode() if isinstance(c, bytes) else str(c) for c in classes)
        graph = unzipped.graph
        graph.node.remove(next(n for n in graph.node if n.output == node.output))
        graph.node.append(helper.make_node("Identity", [node.input[0]], [output.name], name=f"{output.name}_unzipped"))
        graph.output[index].CopyFrom(
            helper.make_tensor_value_info(output.name, onnx.TensorProto.FLOAT, [None, len(labels)])
        )
    return unzipped, labels


def example_inputs(session: ort.InferenceSession, rows: int = 8) -> dict[str, np.ndarray]:
    """Seeded inputs of every input's type and shape, `rows` along its dynamic axes."""
    random = np.random.default_rng(0)
    feeds = {}
    for arg in session.get_inputs():
        shape = [d if isinstance(d, int) else rows for d in arg.shape]
        dtype = np.dtype(NUMPY_TYPES.get(TensorSpec.from_onnx(arg.name, arg.type, arg.shape).datatype, object))
        if dtype.kind == "f":
            feeds[arg.name] = random.normal(size=shape).astype(dtype)
        elif dtype.kind in "iu":
            feeds[arg.name] = random.integers(0, 4, size=shape).astype(dtype)
        elif dtype.kind == "b":
            feeds[arg.name] = random.integers(0, 2, size=shape).astype(bool)
        else:
            feeds[arg.name] = random.choice(np.array(["a", "b", "c"], dtype=object), size=shape)
    return feeds


def read_examples(path: Path, session: ort.InferenceSession) -> dict[str, np.ndarray]:
    """A user's example inputs: an .npz of one array per graph input, by name (read without unpickling)."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            feeds = {name: stored[name] for name in stored.files}
    except (OSError, ValueError) as exc:
        raise ImportRefused(f"{path}: not an .npz of arrays ({str(exc).splitlines()[0]})") from None
    names = [arg.name for arg in session.get_inputs()]
    if sorted(feeds) != sorted(names):
        raise ImportRefused(f"{path} holds the arrays {sorted(feeds)}; the graph's inputs are {names}")
    return feeds


def check_unzipped(
    original: onnx.ModelProto,
    unzipped: onnx.ModelProto,
    folder: Path,
    labels: tuple[str, ...],
    examples: dict[str, np.ndarray] | None = None,
) -> ort.InferenceSession:
    """The unzipped graph's session, once its probabilities equal the original's maps, label by label, on the
    user's example inputs (or, without, seeded ones of the graph's input types)."""
    sessions = []
    for model in (original, unzipped):
        whole = copy.deepcopy(model)
        load_external_data_for_model(whole, str(folder))
        sessions.append(ort.InferenceSession(whole.SerializeToString(), providers=["CPUExecutionProvider"]))
    feeds = examples if examples is not None else example_inputs(sessions[0])
    try:
        before = sessions[0].run(None, feeds)
    except Exception as exc:
        whose = "your example inputs" if examples is not None else "example inputs of its input types"
        hint = "" if examples is not None else " (give inputs it takes with --examples FILE.npz)"
        raise ImportRefused(f"the graph fails on {whose}: {str(exc).splitlines()[0]}{hint}") from None
    after = sessions[1].run(None, feeds)
    for output, old, new in zip(original.graph.output, before, after, strict=True):
        if output.type.HasField("tensor_type"):
            continue
        rows = [{str(label): p for label, p in row.items()} for row in old]  # a map's keys come sorted, not in order
        same_classes = all(set(row) == set(labels) for row in rows)
        maps = np.array([[row.get(label, np.nan) for label in labels] for row in rows], np.float32)
        if not same_classes or not np.allclose(maps, new, rtol=0, atol=1e-6):
            raise ImportRefused(f"output {output.name!r}: the graph without its ZipMap does not answer as the original")
    return sessions[1]


def signature(session: ort.InferenceSession) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """The graph's inputs and outputs, dynamic axes under their names in the graph (or "dynamic")."""

    def spec(arg: ort.NodeArg) -> TensorSpec:
        datatype = TensorSpec.from_onnx(arg.name, arg.type, arg.shape).datatype
        return TensorSpec(arg.name, datatype, tuple(d if isinstance(d, int) else (d or "dynamic") for d in arg.shape))

    return tuple(map(spec, session.get_inputs())), tuple(map(spec, session.get_outputs()))


def import_model(path: Path, name: str, labels_path: Path | None = None, examples_path: Path | None = None) -> str:
    """Check `path` and register it as `name`; returns the store tag. `examples_path`: an .npz of inputs that a graph
    whose outputs must be made tensors is proven on."""
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
    unzipped, class_labels = unzip_maps(model)
    labels = [line.strip() for line in labels_path.read_text().splitlines() if line.strip()] if labels_path else []
    with tempfile.TemporaryDirectory() as scratch:
        graph = path
        if unzipped != model:
            graph = Path(scratch) / "model.onnx"
            onnx.save(unzipped, str(graph))  # external data stays referenced by its relative location
            examples = read_examples(examples_path, session) if examples_path else None
            session = check_unzipped(model, unzipped, path.parent, class_labels, examples)
        inputs, outputs = signature(session)
        card = ModelCard(task="imported", inputs=inputs, outputs=outputs, output=outputs[0].name,
                         labels=tuple(labels) or class_labels, opset=opset,
                         data_source=str(path.resolve()))  # fmt: skip
        files = {"model.onnx": graph, **{str(f): path.parent / f for f in data_files}}
        return register_model(name, files, card)[0]
