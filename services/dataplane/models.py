"""The data plane, protocol-neutral: the served models by name and version, each a model as the inference
protocol sees it (named tensors in and out). The front-ends (services/frontends/) translate to and from it; it
knows nothing of HTTP or gRPC.

A model is a stored ONNX graph served as it is (`OnnxModel`: its runner's micro-batcher, the graph's own
outputs, nothing derived) or a family's pipeline (raw inputs in, answers as tensors out; the family modules).
Both are versions of a stored model (its store tag); a version policy (services/dataplane/traffic.py) says which
answers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import numpy as np

from contracts.card import ModelCard
from contracts.preprocessing import InvalidInput
from contracts.tensors import Feeds, TensorSpec, rows_problem
from services.dataplane.traffic import Policy
from services.errors import BadRequest, NotFound, ServingError
from services.ops.metrics import SHADOW_DROPPED, VersionSeries, VersionStatistics, version_statistics
from services.runtime.runner import OnnxRunner

log = logging.getLogger(__name__)

VERSION_HEADER = "X-Model-Version"
A = TypeVar("A")  # a protocol's answer
INSTANCE_KINDS = {"cpu": "KIND_CPU", "cuda": "KIND_GPU"}  # the device a session runs on, as Triton names it
MAX_SHADOWS_IN_FLIGHT = 32  # per worker; past this a shadow copy is dropped (and counted), never queued


def pipeline_name(model: str) -> str:
    """A family's pipeline over a model is served by the inference protocol under this name."""
    return f"{model}-pipeline"


class InferenceModel:
    """A model as the protocol sees it: named tensors in, named tensors out, batched where it can be.

    `model` and `tag` name the stored model version it serves (a pipeline's name is not its stored model's)."""

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
        self.model, self.tag = runner.name, runner.tag
        self.inputs, self.outputs = tuple(inputs), tuple(outputs)
        self.required = frozenset(spec.name for spec in inputs) if required is None else frozenset(required)
        self.in_flight = 0

    @property
    def labels(self) -> tuple[str, ...]:
        """The stored model's class labels: they name the classes of any output with as many (classification)."""
        return tuple(self.runner.card.labels)

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

    def config(self) -> dict[str, Any]:
        """Triton's model configuration (its JSON form), from what the metadata and the batcher say: batched where
        every input and output has a dynamic first axis (then `dims` leave it out, as Triton's do)."""
        batcher = self.runner.batcher
        batched = all(spec.shape[:1] == (-1,) for spec in (*self.inputs, *self.outputs))

        def tensors(specs: Sequence[TensorSpec]) -> list[dict[str, Any]]:
            dims = (lambda s: list(s.shape[1:])) if batched else (lambda s: list(s.shape))
            return [{"name": s.name, "data_type": config_type(s.datatype), "dims": dims(s)} for s in specs]

        config: dict[str, Any] = {
            "name": self.name,
            "platform": self.platform,
            "max_batch_size": batcher.max_items if batched else 0,
            "input": tensors(self.inputs),
            "output": tensors(self.outputs),
            "version_policy": {"all": {}},  # every loaded version answers a request that names it
            "instance_group": [{"kind": INSTANCE_KINDS.get(self.runner.session.device, "KIND_AUTO"), "count": 1}],
        }
        if batched:
            config["dynamic_batching"] = {"max_queue_delay_microseconds": round(batcher.max_wait_s * 1e6)}
        if self.platform == InferenceModel.platform:
            config["backend"] = "onnxruntime"
        return config

    def statistics(self, figures: VersionStatistics) -> dict[str, Any]:
        """Triton's statistics of this version (its JSON form) from its stored version's figures. Its pipeline and
        graph share one runner and one set of figures: every route the version answers is counted there once. The
        merge and split of a batch's calls are inside compute_infer (compute_input and compute_output: 0 ns)."""
        executions = sum(count for count, _ in figures.batches.values())
        batches = sorted(figures.batches.items())
        return {
            "name": self.name,
            "version": self.version,
            "last_inference": round(figures.last * 1000),  # ms since the epoch
            "inference_count": round(sum(size * count for size, (count, _) in batches)),
            "execution_count": round(executions),
            "inference_stats": {
                "success": duration(figures.ok, figures.ok_s),
                "fail": duration(figures.failed, figures.failed_s),
                "queue": duration(figures.queued, figures.queue_s),
                "compute_input": duration(executions, 0),
                "compute_infer": duration(executions, sum(seconds for _, seconds in figures.batches.values())),
                "compute_output": duration(executions, 0),
                "cache_hit": duration(0, 0),
                "cache_miss": duration(0, 0),
            },
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": duration(count, 0),
                    "compute_infer": duration(count, seconds),
                    "compute_output": duration(count, 0),
                }
                for size, (count, seconds) in batches
            ],
        }

    async def infer(self, tensors: dict[str, np.ndarray], record: bool = True) -> dict[str, np.ndarray]:
        """The outputs for inputs that passed `problem`; `record`: count them in the answer series and payload log
        (not for a shadow's copy)."""
        raise NotImplementedError

    def agreement(self, primary: Feeds, shadow: Feeds) -> tuple[np.ndarray, np.ndarray | None]:
        """Per input row, whether another version's outputs agree with these (and by how much they differ, where
        a difference means something). A graph's outputs agree where every value is within 1e-3 (absolute and
        relative): a retrained graph rarely agrees; a copy does."""
        rows = np.ones(len(next(iter(primary.values()))), dtype=bool)
        for name, expected in primary.items():
            found = shadow.get(name)
            if found is None or found.shape != expected.shape:
                return np.zeros_like(rows), None
            numeric = expected.dtype != np.object_
            close = np.isclose(found, expected, rtol=1e-3, atol=1e-3) if numeric else found == expected
            rows &= close.reshape(len(rows), -1).all(axis=1)
        return rows, None


class OnnxModel(InferenceModel):
    """A stored ONNX graph's own tensors, through its runner's micro-batcher (the family routes' batcher)."""

    def __init__(self, runner: OnnxRunner):
        super().__init__(runner.name, runner, runner.inputs, runner.outputs)

    def problem(self, tensors: Feeds) -> str | None:
        """Each tensor's, then the batch's rules (one row count, at least one row), before it joins a batch."""
        if problem := super().problem(tensors):
            return problem
        batch = rows_problem(tensors)  # names, datatypes and shapes were checked above
        return f"{self.name}: {batch}" if batch else None

    async def infer(self, tensors: Feeds, record: bool = True) -> Feeds:
        return self.runner.graph_outputs(await self.runner.submit(tensors))


def duration(count: float, seconds: float) -> dict[str, int]:
    """One of Triton's statistic durations: how many, and their time in ns."""
    return {"count": round(count), "ns": round(seconds * 1e9)}


def config_type(datatype: str) -> str:
    """A protocol datatype as Triton's configuration names it (BYTES is TYPE_STRING there)."""
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


@dataclass
class Choice:
    """The version answering one request, and the shadow that gets a copy of it (if any)."""

    primary: InferenceModel
    shadow: InferenceModel | None = None

    @property
    def version_header(self) -> dict[str, str]:
        return {VERSION_HEADER: self.primary.tag}

    @contextmanager
    def answering(self) -> Iterator[None]:
        """Counts the request in flight on its version (so that an unload waits for it), and its outcome and time
        in the version's series: `invalid` for a request refused as sent, `error` for a failure of the server's."""
        series: VersionSeries = self.primary.runner.series
        start = time.perf_counter()
        with self.primary.serving():
            try:
                yield
            except ServingError as refused:
                series.count("invalid" if refused.status < 500 else "error", time.perf_counter() - start)
                raise
            except InvalidInput:  # an input the preprocessing refuses (e.g. not an image): 400 or 413
                series.count("invalid", time.perf_counter() - start)
                raise
            except Exception:
                series.count("error", time.perf_counter() - start)
                raise
        series.count("ok", time.perf_counter() - start)

    async def answer(self, decode: Callable[[], Feeds], encode: Callable[[InferenceModel, Feeds], A]) -> A:
        """One request on the primary, either protocol: its inputs decoded and checked, inferred, the outputs
        encoded as the protocol answers; then the shadow's copy. No await before `answering`: a model looked up
        is counted in flight before an unload can retire it."""
        model = self.primary
        with self.answering():
            tensors = decode()
            if problem := model.problem(tensors):
                raise BadRequest(problem)
            outputs = await model.infer(tensors)
            answer = encode(model, outputs)
        self.mirror(lambda: tensors, lambda: outputs)
        return answer

    def mirror(self, inputs: Callable[[], Feeds], outputs: Callable[[], Feeds]) -> None:
        """Send the shadow a copy of the request (its inputs as the shadow takes them) after the primary answered
        (`outputs`, its answer as tensors of the same model), to be compared off the response path."""
        if self.shadow is None:
            return
        if len(SHADOWS) >= MAX_SHADOWS_IN_FLIGHT:
            SHADOW_DROPPED.labels(self.shadow.model).inc()
            return
        task = asyncio.get_running_loop().create_task(compare(self.primary, self.shadow, inputs(), outputs()))
        SHADOWS.add(task)  # held: the loop keeps only a weak reference to a task
        task.add_done_callback(SHADOWS.discard)


SHADOWS: set[asyncio.Task] = set()


async def compare(primary: InferenceModel, shadow: InferenceModel, inputs: Feeds, expected: Feeds) -> None:
    """Run the shadow on a request's inputs and count whether it agrees with the primary's answer, row by row."""
    series: VersionSeries = shadow.runner.series
    try:
        with shadow.serving():
            problem = shadow.problem(inputs)
            if problem:
                raise BadRequest(problem)
            outputs = await shadow.infer(inputs, record=False)
        agree, difference = primary.agreement(expected, outputs)
    except Exception as exc:  # a shadow's failure is counted and logged, never the client's
        series.compared["error"].inc()
        log.debug("shadow %s %s failed: %s", shadow.name, shadow.version, exc)
        return
    agreed = int(np.count_nonzero(agree))
    series.compared["agree"].inc(agreed)
    series.compared["disagree"].inc(len(agree) - agreed)
    for value in [] if difference is None else difference.tolist():
        series.difference.observe(value)


class ModelRepository:
    """The served models by name and version, and each stored model's version policy (by its name).

    With no policy, the most recently created version answers a request naming none."""

    def __init__(self, models: Iterable[InferenceModel] = ()):
        self.versions: dict[str, dict[str, InferenceModel]] = {}
        self.policies: dict[str, Policy] = {}  # by stored model name; replaced whole by the repository admin
        # Why a name is not served, where the server knows better than "no such model" (services/dataplane/pending.py).
        self.unserved: Callable[[str], ServingError | None] = lambda name: None
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

    def stored(self) -> dict[str, list[InferenceModel]]:
        """The served store tags, each with its models (the graph as it is, and a family's pipeline over it)."""
        served: dict[str, list[InferenceModel]] = {}
        for model in self.models():
            served.setdefault(model.tag, []).append(model)
        return served

    def ready(self) -> bool:
        return all(model.ready for model in self.models())

    def metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        return self.get(name, version).metadata(list(self.versions[name]))

    def config(self, name: str, version: str | None = None) -> dict[str, Any]:
        return self.get(name, version).config()

    def statistics(self, name: str = "", version: str = "") -> list[dict[str, Any]]:
        """Triton's statistics of every served model, of every version of `name`, or of one version of it."""
        if not name:
            models = self.models()
        elif version:
            models = [self.get(name, version)]
        else:
            self.get(name)  # NotFound for a name not served
            models = list(self.versions[name].values())
        figures = version_statistics()
        return [model.statistics(figures.get((model.model, model.version), VersionStatistics())) for model in models]

    def get(self, name: str, version: str | None = None) -> InferenceModel:
        """`version` of `name`, or with none, the latest (the version policy is for `choose`)."""
        versions = self.versions.get(name)
        if not versions:
            raise self.unserved(name) or NotFound(f"no model named {name!r}; served: {sorted(self.versions)}")
        if version is None:
            return list(versions.values())[-1]
        if version not in versions:
            raise NotFound(f"{name} has no version {version!r}; served: {sorted(versions)}")
        return versions[version]

    def card(self, name: str) -> ModelCard | None:
        """The card of the latest served version of `name` (None: none is served)."""
        return self.get(name).runner.card if self.versions.get(name) else None

    def choice(self, name: str, version: str | None, key: str | None) -> Choice:
        """The version a request names (which bypasses the policy), or with none, the one the policy chooses by the
        request's routing key."""
        return self.choose(name, key) if version is None else Choice(self.get(name, version))

    def choose(self, name: str, key: str | None = None) -> Choice:
        """The version of `name` that answers a request (and its shadow), by its stored model's policy."""
        latest = self.get(name)
        policy = self.policies.get(latest.model)
        if policy is None:
            return Choice(latest)
        versions = self.versions[name]
        shadow = versions.get(policy.shadow.version) if policy.shadow and policy.mirrors() else None
        # The admin serves a policy's versions before it is in force; one that failed to load on this worker
        # alone (logged there) leaves its share to the latest.
        return Choice(versions.get(policy.choose(key), latest), shadow)
