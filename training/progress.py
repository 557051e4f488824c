"""A training run's side of contracts/progress.py: its record, rewritten as the run goes, when
MODELROAD_TRAINING_PROGRESS names a folder (`python -m training serve` sets it); otherwise nothing is written."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from contracts.card import ModelCard
from contracts.progress import PROGRESS_FOLDER, TrainingProgress


class ProgressReport:
    """One task's record. The time left is the mean epoch so far times the epochs left (an upper bound:
    early stopping may end the run sooner), plus the export's share of `expected_seconds`."""

    EXPORT_SHARE = 0.1  # of a task's expected seconds: the export, the parity check, the OOD fit, the variants

    def __init__(
        self,
        task: str,
        epochs: int,
        expected_seconds: float,
        folder: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.clock = clock  # a test's own (patching time.monotonic would also feed every other thread's calls)
        self.folder = folder if folder is not None else os.environ.get(PROGRESS_FOLDER, "")
        if os.environ.get("RANK", "0") != "0":
            self.folder = ""  # under torchrun, rank 0 alone reports
        # A record the supervisor wrote first (with where the log is) is carried on.
        found = TrainingProgress.load(self.folder, task) if self.folder else None
        self.record = found or TrainingProgress(task)
        self.record.epochs, self.expected_seconds = epochs, expected_seconds
        self.started = self.clock()

    def queued(self, card: ModelCard) -> None:
        """Before training: the interface its model will have (what a server builds the routes from)."""
        self._write(state="queued", card=card.to_metadata(), metric=card.key_metric, error="")

    def training(self) -> None:
        self.started = self.clock()
        self._write(state="training", epoch=0, seconds_left=self.expected_seconds)

    def epoch(self, history: dict[str, float]) -> None:
        done = int(history["epoch"])
        per_epoch = (self.clock() - self.started) / max(done, 1)
        left = per_epoch * (self.record.epochs - done) + self.EXPORT_SHARE * self.expected_seconds
        self._write(epoch=done, score=history.get("val_score"), seconds_left=left)

    def exporting(self) -> None:
        self._write(state="exporting", seconds_left=self.EXPORT_SHARE * self.expected_seconds)

    def registered(self, card: dict[str, Any]) -> None:
        stored = ModelCard.from_metadata(card)
        score = stored.metrics.get(stored.key_metric)
        self._write(
            state="registered", tag=card.get("tag", ""), score=score, baseline=stored.baselines_line, seconds_left=0
        )

    def failed(self, error: BaseException) -> None:
        self._write(state="failed", error=f"{type(error).__name__}: {error}", seconds_left=None)

    def _write(self, **changes: Any) -> None:
        for name, value in changes.items():
            setattr(self.record, name, value)
        if self.folder:
            Path(self.folder).mkdir(parents=True, exist_ok=True)
            self.record.save(self.folder)
