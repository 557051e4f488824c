"""Export a trained net to one ONNX file and prove it computes what the PyTorch net computes."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from training.tasks.base import Task

log = logging.getLogger(__name__)


class ExportError(RuntimeError):
    """The exported graph is not the trained net: it must not be registered."""


def export_onnx(model: nn.Module, task: Task, example: tuple[torch.Tensor, ...], path: Path) -> int:
    """Write model.onnx (one file, dynamo exporter) with the dynamic axes of the task's inputs; returns the opset."""
    if len(example[0]) < 2:
        raise ExportError("export with a batch of at least 2: a batch of 1 fixes the batch axis at 1")
    model.eval()
    torch.onnx.export(
        model,
        example,
        str(path),
        dynamo=True,
        external_data=False,
        input_names=[spec.name for spec in task.inputs],
        output_names=[task.output_name],
        dynamic_shapes=task.dynamic_shapes(),
    )
    onnx.checker.check_model(str(path), full_check=True)
    graph = onnx.load(str(path))
    for spec, graph_input in zip(task.inputs, graph.graph.input):
        dims = graph_input.type.tensor_type.shape.dim
        for axis, (want, dim) in enumerate(zip(spec.shape, dims)):
            if isinstance(want, str) and not dim.dim_param:
                raise ExportError(f"input {spec.name!r} axis {axis} ({want}) was frozen at {dim.dim_value}")
    return graph.opset_import[0].version


def output_difference(
    model: nn.Module, task: Task, path: Path, batches: list[tuple[torch.Tensor, ...]]
) -> tuple[float, bool]:
    """Max |torch - onnxruntime| over the batches, and whether every batch led to the same decisions."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst, same = 0.0, True
    for inputs in batches:
        with torch.no_grad():
            expected = model(*inputs).numpy()
        got = session.run(None, {spec.name: t.numpy() for spec, t in zip(task.inputs, inputs)})[0]
        error = float(np.max(np.abs(expected - got)))
        log.info("%s on input %s: max abs diff %.2e", path.name, "x".join(str(s) for s in inputs[0].shape), error)
        worst, same = max(worst, error), same and task.same_decisions(expected, got)
    return worst, same


def check_parity(model: nn.Module, task: Task, path: Path, batches: list[tuple[torch.Tensor, ...]]) -> float:
    """Max |torch - onnxruntime| over the held-out batches; raises ExportError beyond the task's tolerance."""
    worst, same = output_difference(model, task, path, batches)
    if worst > task.parity_tolerance or not same:
        raise ExportError(
            f"ONNX output differs from PyTorch: max abs diff {worst:.2e} (tolerance "
            f"{task.parity_tolerance:.0e}), same decisions: {same}"
        )
    return worst
