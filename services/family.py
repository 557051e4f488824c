"""What every family shares: its runners, its routes, its inference-protocol pipelines, and how a route finds it."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, TypeVar

import bentoml
from fastapi import APIRouter

from contracts.card import ModelCard
from services.metrics import PREDICTIONS
from services.runner import OnnxRunner

F = TypeVar("F", bound="Family")


class Family(Protocol):
    """One family as served: built once per worker from its stored models; owns their runners."""

    runners: list[OnnxRunner]

    def pipelines(self) -> list:  # list[services.oip.InferenceModel]: what users with raw inputs call
        ...


class FamilyKind(Protocol):
    """A family's class: what the platform needs before any worker exists (cards -> routes)."""

    def __call__(self, stored: dict[str, bentoml.Model]) -> Family: ...

    @staticmethod
    def routes(cards: dict[str, ModelCard]) -> APIRouter: ...


def serving(kind: type[F]) -> F:
    """This worker's instance of a family (the platform made it when BentoML made the service)."""
    return bentoml.get_current_service().family(kind)


def count_predictions(model: str, labels: Iterable[str]) -> None:
    for label in labels:
        PREDICTIONS.labels(model, label).inc()
