"""Family models still training: what their routes answer until the store has them, and how they join.

Under `python -m training serve` the server starts once one family's model is registered, while the other training
runs write their progress to MODELROAD_TRAINING_PROGRESS (contracts/progress.py). A family model that the store
lacks at start but whose run has queued a record with its interface card is *pending*: its routes are built from
that card, and a request for it (or its pipeline) gets 503 with the run's progress and Retry-After. Every worker
watches the store; when the model is registered a worker loads it through the repository (`RepositoryAdmin.load`),
the others follow, and from then on it answers: no restart, no request lost.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field

import bentoml

from contracts.card import ModelCard
from contracts.progress import TrainingProgress
from services.dataplane.admin import RepositoryAdmin
from services.dataplane.models import pipeline_name
from services.errors import ServingError, Unavailable

log = logging.getLogger(__name__)

JOIN_POLL_S = 1.0  # how often a worker looks for a pending model in the store
PENDING_NAMES = "MODELROAD_PENDING_MODELS"  # set by the server's first process; its workers inherit it


class StillTraining(Unavailable):
    """A pending model's routes: how far its training run has got, and when to ask again."""

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = retry_after_s

    @property
    def headers(self) -> dict[str, str]:  # type: ignore[override]
        return {"Retry-After": str(self.retry_after_s)}


def stored_name(tag: str) -> str:
    return tag.split(":")[0]


def in_store(tag: str) -> bool:
    try:
        bentoml.models.get(tag)
    except bentoml.exceptions.NotFound:
        return False
    return True


@dataclass
class PendingModels:
    """The family models this server waits for, by stored name, with the progress folder that says how far they are."""

    folder: str
    cards: dict[str, ModelCard] = field(default_factory=dict)  # the interface each will have
    # Runs that failed before their model's interface was known: served without (no routes to build), and why.
    abandoned: dict[str, str] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)  # registered, but this server could not serve it: why

    @classmethod
    def at_start(cls, folder: str, family_tags: Iterable[str]) -> PendingModels:
        """The family tags (`name:latest`) the store lacks whose training run queued an interface card; none when
        `folder` is empty (then a missing model stops the server at start, as always).

        Decided once, by `bentoml serve`'s first process: its workers, importing the service seconds later, inherit
        the decision, so that all of them start from the same served state even if a model registered meanwhile
        (that one joins like the others)."""
        pending = cls(folder)
        if not folder:
            return pending
        inherited = os.environ.get(PENDING_NAMES)
        for tag in family_tags:
            name, _, version = tag.partition(":")
            record = TrainingProgress.load(folder, name)
            if inherited is not None:
                waited = name in inherited.split(",")
            else:
                latest = version in ("", "latest")
                waited = latest and not in_store(tag) and record is not None and bool(record.card)
            if waited and record is not None:
                pending.cards[name] = ModelCard.from_metadata(record.card)
            elif record is not None and record.state == "failed" and not record.card and not in_store(tag):
                pending.abandoned[name] = record.describe()
        os.environ[PENDING_NAMES] = ",".join(pending.cards)
        return pending

    @property
    def joining(self) -> bool:
        """Whether some model is to join once registered (its routes are built)."""
        return bool(self.cards)

    def skips(self, tag: str) -> bool:
        """Whether the server starts without this store tag (pending or abandoned)."""
        return stored_name(tag) in self.cards or stored_name(tag) in self.abandoned

    def refusal(self, name: str) -> ServingError | None:
        """Why `name` (a pending model or its pipeline) is not served yet, or None for any other name."""
        model = next((m for m in self.cards if name in (m, pipeline_name(m))), None)
        if model is None:
            return None
        if model in self.refused:
            return Unavailable(f"{model} is registered but cannot be served: {self.refused[model]}")
        record = TrainingProgress.load(self.folder, model)
        if record is None:
            return StillTraining(f"{model} is not in the store yet", 60)
        if record.state == "registered":
            return StillTraining(f"{record.describe()}; it is being loaded", 2)
        return StillTraining(record.describe(), record.retry_after_s())

    def waiting(self, served: Iterable[str]) -> dict[str, str]:
        """Each pending model not served yet, and why, in a line."""
        served = set(served)
        waiting = {name: str(self.refusal(name)) for name in sorted(self.cards) if name not in served}
        return {**waiting, **self.abandoned}

    async def join_when_registered(self, admin: RepositoryAdmin) -> None:
        """This worker's watch: each pending model that appears in the store is loaded (by the first worker to see
        it; the others follow the repository), until none is left to wait for."""
        waiting = set(self.cards)
        while waiting - self.refused.keys():
            for name in sorted(waiting - self.refused.keys()):
                if name in admin.repository.versions:
                    waiting.discard(name)
                    log.info("%s joined: its routes answer", name)
                elif in_store(f"{name}:latest") and not admin.planned(name):
                    try:
                        await admin.load(name)
                    except ServingError as exc:
                        self.refused[name] = str(exc)
                        log.error("%s is registered but cannot be served: %s", name, exc)
            await asyncio.sleep(JOIN_POLL_S)
