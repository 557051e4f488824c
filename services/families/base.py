"""What every family shares: the shape of a family as served, how its routes find the version that answers, its
pipelines' names and OOD tensors, and the preparing threads."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import bentoml
import numpy as np
from fastapi import APIRouter, Request
from pydantic import Field

from contracts.card import ModelCard
from contracts.tensors import TensorSpec
from services.dataplane.models import Choice, InferenceModel, pipeline_name
from services.dataplane.traffic import ROUTING_KEY
from services.edge.worker import worker
from services.errors import BadRequest, NotFound, Unavailable
from services.runtime.runner import OnnxRunner
from services.settings import SETTINGS, ServeSettings

T = TypeVar("T")


class Family(Protocol):
    """One version of a family's model as served: its runner and the pipeline over it, made per worker."""

    runner: OnnxRunner  # model.onnx's
    runners: tuple[OnnxRunner, ...]  # every graph the version serves, model.onnx's first (each a raw OIP model)

    def pipeline(self) -> InferenceModel:
        """The version's pipeline for the inference protocol (what users with raw inputs call); its `family` is
        this object."""
        ...


class FamilyKind(Protocol):
    """A family's class: its routes exist before any worker (built from its models' cards, by model name);
    an instance per served version and worker."""

    def __call__(self, stored: bentoml.Model) -> Family: ...

    @staticmethod
    def routes(cards: dict[str, ModelCard]) -> APIRouter: ...


@dataclass(frozen=True)
class FamilySpec:
    """A family as registered where it is defined (`register_family`)."""

    name: str
    kind: FamilyKind
    tags: Callable[[ServeSettings], Sequence[str]]  # its store tags, from the settings (an empty one: not served)
    console_route: str | None = None  # the route the console's form for it calls
    # The card task of the models it serves besides its own (a fine-tune, another version side by side): any
    # stored model of this task is opened as this family, and its routes answer with it when a request names it.
    task: str | None = None


FAMILIES: dict[str, FamilySpec] = {}  # by family name; services/families/__init__.py imports every family module
K = TypeVar("K")


def register_family(
    name: str, tags: Callable[[ServeSettings], Sequence[str]], console_route: str | None = None, task: str | None = None
) -> Callable[[K], K]:
    """Class decorator on a family's class: the platform serves it, on the store tags `tags` reads from the
    settings, and the console offers its form at `console_route`; any served model whose card's task is `task`
    is this family's too."""

    def register(kind: K) -> K:
        if name in FAMILIES:
            raise ValueError(f"family {name!r} is already registered")
        FAMILIES[name] = FamilySpec(name, kind, tags, console_route, task)  # type: ignore[arg-type]
        return kind

    return register


def family_of_task(task: str) -> FamilySpec | None:
    """The family that serves any stored model of card task `task` (None: such a model is served raw)."""
    return next((spec for spec in FAMILIES.values() if spec.task == task), None)


def family_tags(settings: ServeSettings) -> dict[str, tuple[str, ...]]:
    """Each family's store tags: what its routes run (the one registry, read by the platform, its runner service
    and the benchmark's peers)."""
    return {name: tuple(tag for tag in spec.tags(settings) if tag) for name, spec in FAMILIES.items()}


def served_tags(settings: ServeSettings) -> tuple[str, ...]:
    """Every store tag a server serves: the families' and the extra models (the platform and its runner service)."""
    return (*(tag for tags in family_tags(settings).values() for tag in tags), *settings.extra_models)


def answering(request: Request, model: str) -> Choice:
    """The version of a family's `model` that answers this request (its pipeline; `.family` is the version's
    family object), chosen by the model's version policy, and its shadow."""
    try:
        return worker(request).models.choose(pipeline_name(model), request.headers.get(ROUTING_KEY))
    except NotFound:
        raise Unavailable(f"no version of {model} is served") from None


def answering_named(request: Request, model: str, asked: str | None, pipeline: type[FamilyPipeline]) -> Choice:
    """As `answering`, for the model a request names in its `model` field (None: the family's own `model`): any
    served model whose pipeline is a `pipeline`, else 400 naming the models that can answer there."""
    if asked is None or asked == model:
        return answering(request, model)
    served = worker(request).models
    try:
        choice: Choice | None = served.choose(pipeline_name(asked), request.headers.get(ROUTING_KEY))
    except NotFound:
        choice = None
    if choice is None or not isinstance(choice.primary, pipeline):
        able = sorted({m.model for m in served.models() if isinstance(m, pipeline)})
        shown = asked if len(asked) <= MODEL_NAME_CHARS else f"{asked[:MODEL_NAME_CHARS]}..."  # a bounded echo
        raise BadRequest(f"model {shown!r} cannot answer here; the models that can: {', '.join(able)}")
    return choice


def model_field(names: Sequence[str]) -> Any:
    """A family route's `model` field: the models served at start are documented (the schema's enum); one loaded
    since is taken as well, and any other name gets 400 naming those that can answer."""
    return Field(
        default=None,
        max_length=MODEL_NAME_CHARS,
        description=f"the model that answers (default: {names[0]}); any served model of this family",
        json_schema_extra={"enum": list(names)},
    )


MODEL_NAME_CHARS = 63  # the store's longest model name


# Decoding big images and tokenizing long texts take milliseconds to seconds of CPU: they run in these threads,
# so that the event loop keeps answering (/livez, timeouts, other requests). Small inputs are prepared inline,
# where a thread hop would cost more than the work.
PREPARING = ThreadPoolExecutor(max_workers=SETTINGS.ort_threads, thread_name_prefix="prepare")


async def prepared(work: Callable[..., T], *args: Any, heavy: bool) -> T:
    """`work(*args)`, in the preparing threads when `heavy`, else right here."""
    if not heavy:
        return work(*args)
    return await asyncio.get_running_loop().run_in_executor(PREPARING, work, *args)


# Every pipeline answers with each input's OOD verdict beside its prediction, scores on.
VERDICT_TENSORS = (
    (TensorSpec("ood_score", "FP32", (-1,)), TensorSpec("in_distribution", "BOOL", (-1,)))
    if SETTINGS.ood_scores
    else ()
)


def verdict_tensors(answers: Sequence[Any]) -> dict[str, np.ndarray]:
    """The answers' OOD fields as the pipelines' tensors (none with scores off)."""
    if not VERDICT_TENSORS:
        return {}
    return {
        "ood_score": np.array([a.ood_score for a in answers], dtype=np.float32),
        "in_distribution": np.array([a.in_distribution for a in answers], dtype=np.bool_),
    }


class FamilyPipeline(InferenceModel):
    """A family version's pipeline: raw inputs in, answers as tensors out."""

    platform = "modelroad_pipeline"

    def __init__(self, family: Family, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], **kwargs: Any):
        super().__init__(pipeline_name(family.runner.name), family.runner, inputs, outputs, **kwargs)
        self.family = family


class ClassifierPipeline(FamilyPipeline):
    def agreement(self, primary: dict[str, np.ndarray], shadow: dict[str, np.ndarray]) -> tuple[np.ndarray, None]:
        """Two versions of a classifier agree on an input when they give it the same label."""
        return primary["label"] == shadow["label"], None
