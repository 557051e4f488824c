"""What every family shares: the shape of a family as served, how its routes find it, its pipelines' names and
OOD tensors, and the preparing threads."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

import bentoml
import numpy as np
from fastapi import APIRouter, Request

from contracts.card import ModelCard
from contracts.tensors import TensorSpec
from services.inference import InferenceModel
from services.runner import OnnxRunner
from services.settings import SETTINGS

F = TypeVar("F", bound="Family")
T = TypeVar("T")


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


def serving(request: Request, kind: type[F]) -> F:
    """This worker's instance of a family (the platform sets them on the app when BentoML makes the service)."""
    return request.app.state.families[kind]


# Decoding big images and tokenizing long texts take milliseconds to seconds of CPU: they run in these threads,
# so that the event loop keeps answering (/livez, timeouts, other requests). Small inputs are prepared inline,
# where a thread hop would cost more than the work.
PREPARING = ThreadPoolExecutor(max_workers=SETTINGS.ort_threads, thread_name_prefix="prepare")


async def prepared(work: Callable[..., T], *args: Any, heavy: bool) -> T:
    """`work(*args)`, in the preparing threads when `heavy`, else right here."""
    if not heavy:
        return work(*args)
    return await asyncio.get_running_loop().run_in_executor(PREPARING, work, *args)


def pipeline_name(model: str) -> str:
    """A family's pipeline over a model is served by the inference protocol under this name."""
    return f"{model}-pipeline"


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
