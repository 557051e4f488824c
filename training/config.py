"""The training configuration: one dataclass, defaults that run, saved beside what it produced."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any


@dataclass
class TrainConfig:
    task: str = "fashion-cnn"
    data: str | None = None  # None: the task's default dataset
    out_dir: str = "artifacts"
    epochs: int = 12
    pretrain_epochs: int = 0  # epochs of the task's self-supervised objective first (text: masked LM)
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-4
    adam_beta1: float = 0.9  # AdamW's first beta (GANs: 0.5, a shorter memory of the gradient's direction)
    warmup_steps: int = 100
    patience: int = 3  # epochs without a better validation result before stopping
    val_fraction: float = 0.1
    seed: int = 0
    threads: int = 2  # per process: under torchrun, cores / processes
    device: str = field(default="auto", metadata={"choices": ("auto", "cpu", "cuda")})  # auto: CUDA if present
    # Autocast dtype for the forward pass; weights, optimizer state and the ONNX export stay fp32.
    precision: str = field(default="fp32", metadata={"choices": ("fp32", "bf16", "fp16")})
    resume: bool = False
    dry_run: bool = False  # a few batches of a small subset: a seconds-long smoke run
    register: bool = True
    model: dict[str, Any] = field(default_factory=dict)  # overrides of the net's dataclass config

    def with_params(self, params: dict[str, Any]) -> TrainConfig:
        """Flat parameters (a tuning trial's) onto a copy: "lr" sets a field, "model.dropout" a net field."""
        model, fields = dict(self.model), {}
        for name, value in params.items():
            if name.startswith("model."):
                model[name.removeprefix("model.")] = value
            else:
                fields[name] = value
        return replace(self, **fields, model=model)

    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.task

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2, sort_keys=True))
