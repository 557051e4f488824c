"""The data plane, protocol-neutral: the served models by name and version, each a model as the inference
protocol sees it (named tensors in and out). The HTTP front-end (services/oip.py) translates to and from it;
it knows nothing of HTTP.

A model is a stored ONNX graph served as it is (`OnnxModel`: its runner's micro-batcher, the graph's own
outputs, nothing derived) or a family's pipeline (raw inputs in, answers as tensors out; the family modules).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import numpy as np

from contracts.tensors import Feeds, TensorSpec, rows_problem
from services.errors import NotFound
from services.runner import OnnxRunner


class InferenceModel:
    """A model as the protocol sees it: named tensors in, named tensors out, batched where it can be."""

    platform = "onnxruntime_onnx"

    def __init__(
        self,
        name: str,
        runner: OnnxRunner,
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
        required: Sequence[str] | None = None,
    ):
        self.name, self.version, self.runner = name, runner.version, runner
        self.inputs, self.outputs = tuple(inputs), tuple(outputs)
        self.required = frozenset(spec.name for spec in inputs) if required is None else frozenset(required)
        self.tag: str | None = None  # the store tag, for a stored graph served as it is (not for a pipeline)
        self.in_flight = 0

    @property
    def ready(self) -> bool:
        return self.runner.warmed

    @property
    def created(self) -> datetime:
        return self.runner.created

    @contextmanager
    def serving(self) -> Iterator[None]:
        """Counts a request in flight, so that unloading the model can wait for it."""
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    async def drained(self, timeout_s: float) -> bool:
        """Whether the requests in flight finished within `timeout_s` (new ones must no longer find the model)."""
        deadline = time.monotonic() + timeout_s
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return not self.in_flight

    def problem(self, tensors: dict[str, np.ndarray]) -> str | None:
        """What keeps these tensors from being this model's inputs (names, datatypes, shapes), or None."""
        specs = {spec.name: spec for spec in self.inputs}
        unknown, missing = set(tensors) - set(specs), self.required - set(tensors)
        if unknown:
            return f"{self.name} has no input {sorted(unknown)}; its inputs are {list(specs)}"
        if missing:
            return f"{self.name} needs the inputs {sorted(self.required)}; missing {sorted(missing)}"
        return next((p for name, array in tensors.items() if (p := specs[name].problem(array))), None)

    def metadata(self, versions: Sequence[str]) -> dict[str, Any]:
        return {
            "name": self.name,
            "versions": list(versions),
            "platform": self.platform,
            "inputs": [spec.describe() for spec in self.inputs],
            "outputs": [spec.describe() for spec in self.outputs],
        }

    async def infer(self, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The outputs for inputs that passed `problem`."""
        raise NotImplementedError


class OnnxModel(InferenceModel):
    """A stored ONNX graph's own tensors, through its runner's micro-batcher (the family routes' batcher)."""

    def __init__(self, runner: OnnxRunner):
        super().__init__(runner.name, runner, runner.inputs, runner.outputs)
        self.tag = runner.tag

    def problem(self, tensors: Feeds) -> str | None:
        """Each tensor's, then the batch's rules (one row count, at least one row), before it joins a batch."""
        if problem := super().problem(tensors):
            return problem
        batch = rows_problem(tensors)  # names, datatypes and shapes were checked above
        return f"{self.name}: {batch}" if batch else None

    async def infer(self, tensors: Feeds) -> Feeds:
        return await self.runner.submit(tensors)


class ModelRepository:
    """The served models by name and version; the most recently created version answers a request naming none."""

    def __init__(self, models: Iterable[InferenceModel], pinned: Iterable[str] = ()):
        self.versions: dict[str, dict[str, InferenceModel]] = {}
        self.pinned = frozenset(pinned)  # store tags a family route runs: never retired
        for model in models:
            self.add(model)

    def add(self, model: InferenceModel) -> None:
        versions = {**self.versions.get(model.name, {}), model.version: model}
        # Replaced whole, oldest first: a request looking a name up never sees half a change.
        self.versions[model.name] = dict(sorted(versions.items(), key=lambda item: item[1].created))

    def remove(self, model: InferenceModel) -> None:
        versions = {v: m for v, m in self.versions[model.name].items() if m is not model}
        if versions:
            self.versions[model.name] = versions
        else:
            del self.versions[model.name]

    def models(self) -> list[InferenceModel]:
        return [model for versions in self.versions.values() for model in versions.values()]

    def stored(self) -> dict[str, InferenceModel]:
        """The stored graphs served as they are, by store tag (pipelines follow their family and are left out)."""
        return {model.tag: model for model in self.models() if model.tag}

    def ready(self) -> bool:
        return all(model.ready for model in self.models())

    def metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        return self.get(name, version).metadata(list(self.versions[name]))

    def get(self, name: str, version: str | None = None) -> InferenceModel:
        versions = self.versions.get(name)
        if not versions:
            raise NotFound(f"no model named {name!r}; served: {sorted(self.versions)}")
        if version is None:
            return list(versions.values())[-1]
        if version not in versions:
            raise NotFound(f"{name} has no version {version!r}; served: {sorted(versions)}")
        return versions[version]
