"""The training configuration: one dataclass, defaults that run, saved beside what it produced."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TrainConfig:
    task: str = "fashion-cnn"
    data: str | None = None  # None: the task's default dataset
    out_dir: str = "artifacts"
    epochs: int = 12
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    patience: int = 3  # epochs without a better validation loss before stopping
    max_minutes: float | None = None  # time budget: stop after the epoch that crosses it
    val_fraction: float = 0.1
    seed: int = 0
    threads: int = 2
    resume: bool = False
    dry_run: bool = False  # a few batches of a small subset: a seconds-long smoke run
    register: bool = True
    model: dict[str, Any] = field(default_factory=dict)  # overrides of the net's dataclass config

    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.task

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2, sort_keys=True))
