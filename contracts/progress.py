"""A training run's progress, as `python -m training serve` and the server read it: one small JSON file per task,
rewritten by the run at each step (queued with its interface card, each epoch, exporting, registered or failed).

The folder is MODELROAD_TRAINING_PROGRESS: the training runs write there when it is set; the server reads it to say,
on a family's routes, how far the model they wait for has got.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

PROGRESS_FOLDER = "MODELROAD_TRAINING_PROGRESS"
MIN_RETRY_S, MAX_RETRY_S = 5, 60  # Retry-After while a model trains: its time left, within these bounds


@dataclass
class TrainingProgress:
    """Where one task's training run stands. `task` is also the name its model is registered under."""

    task: str
    state: str = "queued"
    epoch: int = 0  # epochs done
    epochs: int = 0  # the budget (early stopping may end the run sooner)
    seconds_left: float | None = None  # an estimate, from the epochs so far
    metric: str = ""  # the validation score's name, e.g. "accuracy"
    score: float | None = None  # its last value (validation while training, test once registered)
    baseline: str = ""  # at registration: the classical baseline and its test score, e.g. "tfidf 0.61"
    tag: str = ""  # the store tag, once registered
    error: str = ""  # why the run failed
    log: str = ""  # where the run's full log is
    card: dict[str, Any] = field(default_factory=dict)  # the interface card (contracts.card) its model will have
    updated: float = 0.0

    @property
    def done(self) -> bool:
        return self.state in ("registered", "failed")

    def save(self, folder: str | Path) -> None:
        """Written whole and renamed into place: a reader sees the last record or this one, never a part."""
        self.updated = time.time()
        path = Path(folder) / f"{self.task}.json"
        partial = path.with_name(f".{path.name}.{os.getpid()}")
        partial.write_text(json.dumps(dataclasses.asdict(self)))
        os.replace(partial, path)

    @classmethod
    def load(cls, folder: str | Path, task: str) -> Self | None:
        path = Path(folder) / f"{task}.json"
        try:
            return cls(**json.loads(path.read_text()))
        except FileNotFoundError:
            return None

    @classmethod
    def load_all(cls, folder: str | Path) -> dict[str, Self]:
        return {path.stem: cls(**json.loads(path.read_text())) for path in sorted(Path(folder).glob("*.json"))}

    def describe(self) -> str:
        """One line for a person: what the run is doing and how far it has got."""
        if self.state == "failed":
            return f"{self.task}'s training failed: {self.error}" + (f" (log: {self.log})" if self.log else "")
        if self.state == "registered":
            scored = f": test {self.metric} {self.score:.4f}" if self.score is not None else ""
            return f"{self.task} is registered as {self.tag}{scored}" + (f" ({self.baseline})" if self.baseline else "")
        if self.state == "queued":
            return f"{self.task} is queued: its data is loading, or its lane trains another task first"
        done = f"epoch {self.epoch} of {self.epochs}" if self.state == "training" else "exporting to ONNX"
        scored = f", last validation {self.metric} {self.score:.4f}" if self.score is not None else ""
        return f"{self.task} is training: {done}{scored}{self.time_left()}"

    def time_left(self) -> str:
        if self.seconds_left is None:
            return ""
        return f", about {max(1, math.ceil(self.seconds_left / 60))} min left"

    def retry_after_s(self) -> int:
        """When to ask again: the estimated time left, at least MIN_RETRY_S and at most MAX_RETRY_S."""
        left = self.seconds_left if self.seconds_left is not None else MAX_RETRY_S
        return int(min(MAX_RETRY_S, max(MIN_RETRY_S, left)))
