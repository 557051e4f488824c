"""Export a trained net to one ONNX file and prove it computes what the PyTorch net computes."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from contracts.answers import OOD_OUTPUT
from contracts.tensors import TensorSpec
from models.ood import Scored
from training.tasks.base import Companion, Task, dynamic_shapes

log = logging.getLogger(__name__)


class ExportError(RuntimeError):
    """The exported graph is not the trained net: it must not be registered."""


SCORE_TOLERANCE = 1e-3  # relative: scores are distances in the hundreds, where float32 keeps ~7 digits


def output_names(model: nn.Module, task: Task) -> list[str]:
    """The task's output, and `ood_score` beside it for a net with its OOD score."""
    return [task.output_name, OOD_OUTPUT] if isinstance(model, Scored) else [task.output_name]


def outputs_of(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
    with torch.no_grad():
        outputs = model(*inputs)
    return [t.numpy() for t in (outputs if isinstance(outputs, tuple) else (outputs,))]


def export_onnx(model: nn.Module, task: Task, example: tuple[torch.Tensor, ...], path: Path) -> int:
    """Write model.onnx (one file, dynamo exporter) with the dynamic axes of the task's inputs; returns the opset.

    A `Scored` net exports its OOD score as a second output, `ood_score`."""
    # Scored.forward takes *inputs: torch.export sees them as one tuple argument.
    return export_graph(model, task.inputs, output_names(model, task), example, path, packed=isinstance(model, Scored))


def export_graph(
    model: nn.Module,
    inputs: tuple[TensorSpec, ...],
    outputs: list[str],
    example: tuple[torch.Tensor, ...],
    path: Path,
    packed: bool = False,
) -> int:
    """One ONNX file of `model` with the inputs' dynamic axes, checked; returns the opset. `packed`: forward takes
    *inputs."""
    if len(example[0]) < 2:
        raise ExportError("export with a batch of at least 2: a batch of 1 fixes the batch axis at 1")
    model.eval()
    shapes = dynamic_shapes(inputs)
    torch.onnx.export(
        model,
        example,
        str(path),
        dynamo=True,
        external_data=False,
        input_names=[spec.name for spec in inputs],
        output_names=outputs,
        dynamic_shapes=(shapes,) if packed else shapes,
    )
    onnx.checker.check_model(str(path), full_check=True)
    graph = onnx.load(str(path))
    for spec, graph_input in zip(inputs, graph.graph.input):
        dims = graph_input.type.tensor_type.shape.dim
        for axis, (want, dim) in enumerate(zip(spec.shape, dims)):
            if isinstance(want, str) and not dim.dim_param:
                raise ExportError(f"input {spec.name!r} axis {axis} ({want}) was frozen at {dim.dim_value}")
    return graph.opset_import[0].version


def export_companion(companion: Companion, folder: Path) -> tuple[Path, float]:
    """A task's companion graph written into `folder` and held to parity; its path and max |torch - ORT|."""
    path = folder / companion.file
    export_graph(companion.module, companion.inputs, [companion.output], companion.examples[0], path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for inputs in companion.examples:
        (expected,) = outputs_of(companion.module, inputs)
        (got,) = session.run(None, {spec.name: t.numpy() for spec, t in zip(companion.inputs, inputs)})
        worst = max(worst, float(np.max(np.abs(expected - got))))
    if worst > companion.tolerance:
        raise ExportError(
            f"{companion.file} differs from PyTorch: max abs diff {worst:.2e} ({companion.tolerance:.0e})"
        )
    log.info("%s: max abs diff %.2e", companion.file, worst)
    return path, worst


def output_difference(
    model: nn.Module, task: Task, path: Path, batches: list[tuple[torch.Tensor, ...]]
) -> tuple[float, bool, float]:
    """Over the batches: max |torch - onnxruntime| of the output, whether every batch led to the same decisions,
    and the max relative difference of the OOD score (0 for a net without one)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst, same, worst_score = 0.0, True, 0.0
    for inputs in batches:
        expected, *expected_score = outputs_of(model, inputs)
        got, *got_score = session.run(None, {spec.name: t.numpy() for spec, t in zip(task.inputs, inputs)})
        error = float(np.max(np.abs(expected - got)))
        for want, have in zip(expected_score, got_score):
            worst_score = max(worst_score, float(np.max(np.abs(want - have) / np.maximum(1.0, np.abs(want)))))
        log.info("%s on input %s: max abs diff %.2e", path.name, "x".join(str(s) for s in inputs[0].shape), error)
        worst, same = max(worst, error), same and task.same_decisions(expected, got)
    return worst, same, worst_score


def check_parity(model: nn.Module, task: Task, path: Path, batches: list[tuple[torch.Tensor, ...]]) -> float:
    """Max |torch - onnxruntime| over the held-out batches; raises ExportError beyond the task's tolerance
    (or where the OOD score differs by more than SCORE_TOLERANCE)."""
    worst, same, worst_score = output_difference(model, task, path, batches)
    if worst > task.parity_tolerance or not same or worst_score > SCORE_TOLERANCE:
        raise ExportError(
            f"ONNX output differs from PyTorch: max abs diff {worst:.2e} (tolerance "
            f"{task.parity_tolerance:.0e}), same decisions: {same}, OOD score relative diff {worst_score:.2e} "
            f"(tolerance {SCORE_TOLERANCE:.0e})"
        )
    return worst
