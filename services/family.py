"""What every family shares: its runners, its routes, its inference-protocol pipelines, and how a route finds it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import bentoml
import numpy as np
from fastapi import APIRouter

from contracts.card import ModelCard
from contracts.families import Verdicts, softmax
from services.metrics import PREDICTIONS
from services.ood import OodJudge
from services.runner import OnnxRunner, Outputs
from services.settings import SETTINGS

if TYPE_CHECKING:  # services.oip finds the serving instance through this module
    from services.oip import InferenceModel

F = TypeVar("F", bound="Family")
T = TypeVar("T")
ANSWERS = "answers"  # what a classifier's runner derives from its logits: one answer per row (an object array)


class Family(Protocol):
    """One family as served: built once per worker from its stored models; owns their runners."""

    runners: list[OnnxRunner]

    def pipelines(self) -> list[InferenceModel]:
        """The family's pipelines for the inference protocol: what users with raw inputs call."""
        ...


class FamilyKind(Protocol):
    """A family's class: its routes exist before any worker (built from the cards); instances per worker."""

    def __call__(self, *stored: bentoml.Model) -> Family: ...

    @staticmethod
    def routes(cards: list[ModelCard]) -> APIRouter: ...


# Decoding big images and tokenizing long texts take milliseconds to seconds of CPU: they run in these threads,
# so that the event loop keeps answering (/livez, timeouts, other requests). Small inputs are prepared inline,
# where a thread hop would cost more than the work.
PREPARING = ThreadPoolExecutor(max_workers=SETTINGS.ort_threads, thread_name_prefix="prepare")


async def prepared(work: Callable[..., T], *args: Any, heavy: bool) -> T:
    """`work(*args)`, in the preparing threads when `heavy`, else right here."""
    if not heavy:
        return work(*args)
    return await asyncio.get_running_loop().run_in_executor(PREPARING, work, *args)


current_service = bentoml.get_current_service  # looked up once: bentoml resolves its attributes lazily per access


def serving(kind: type[F]) -> F:
    """This worker's instance of a family (the platform made it when BentoML made the service)."""
    return current_service().family(kind)


def pipeline_name(model: str) -> str:
    """A family's pipeline over a model is served by the inference protocol under this name."""
    return f"{model}-pipeline"


def answers_of(
    output: str, answers: Callable[[np.ndarray, Verdicts | None], list], judge: OodJudge
) -> Callable[[Outputs], Outputs]:
    """A classifier runner's `derive`: softmax, OOD verdicts and the answers of a whole batch, made in the
    runner's thread.

    One numpy call per batch instead of per request, and the event loop only serializes.
    """

    def derive(outputs: Outputs) -> Outputs:
        batch = answers(softmax(outputs[output]), judge.judge(outputs))
        rows = np.empty(len(batch), dtype=np.object_)
        rows[:] = batch
        return {ANSWERS: rows}

    return derive


class PredictionCounter:
    """modelroad_predictions_total for one model, its children made once (labels() costs per call)."""

    def __init__(self, model: str, labels: Iterable[str]):
        self.children = {label: PREDICTIONS.labels(model, label) for label in labels}

    def count(self, labels: Iterable[str]) -> None:
        for label in labels:
            self.children[label].inc()
