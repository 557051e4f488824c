"""What a family brings to the shared road: its data, loss, evaluation, baseline and export inputs."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import numpy as np
import torch
from torch import nn
from torch.utils.data import Sampler, TensorDataset, default_collate

from contracts.preprocessing import Preprocessing
from contracts.tensors import TensorSpec
from training.config import TrainConfig

if TYPE_CHECKING:
    import optuna

    from models.ood import Scored

FIT_ROWS = 20_000  # training rows an OOD score's statistics are fitted on (more changes little, costs seconds)

# (inputs...) -> outputs, in eval mode and without gradients: how evaluation sees a trained net.
Predict = Callable[..., np.ndarray]


@dataclass
class Prepared:
    """A task's data, split and preprocessed, plus what must travel with the model."""

    train: TensorDataset  # tensors: inputs..., target
    val: TensorDataset
    test: TensorDataset
    source: str  # where the data came from, for the model card
    fingerprint: str  # sha256 over the data as read, so a model names the exact data it saw
    preprocessing: Preprocessing  # what the service needs to prepare requests (the card records it)
    labels: list[str] | None = None
    files: dict[str, Path] = field(default_factory=dict)  # extra files stored beside model.onnx
    extras: dict[str, Any] = field(default_factory=dict)  # what only the task's own evaluation needs
    class_weights: torch.Tensor | None = None  # per-class loss weights, fitted on the training split


@dataclass(frozen=True)
class Companion:
    """Another graph exported from the trained net and stored beside model.onnx (e.g. a generator's decoder),
    held to parity on its own examples."""

    file: str  # its name in the store, e.g. "decoder.onnx"
    module: nn.Module
    inputs: tuple[TensorSpec, ...]
    output: str
    examples: list[tuple[torch.Tensor, ...]]  # the first is the export example (batch >= 2)
    tolerance: float = 1e-4


T = TypeVar("T", bound="Task")
REGISTERED: dict[str, Task] = {}  # by store name; training/tasks/__init__.py orders them as TASKS


def register_task(task: T) -> T:
    """Put `task` on the road under its store name (a task module registers its tasks where it defines them)."""
    if task.name in REGISTERED:
        raise ValueError(f"task {task.name!r} is already registered")
    REGISTERED[task.name] = task
    return task


class Task(ABC):
    name: str  # the name in the model store, e.g. "fashion-cnn"
    model: str  # the net's name in the models registry
    kind: str  # "image-classification", "forecasting", "text-classification"
    inputs: tuple[TensorSpec, ...]  # the graph's inputs, dynamic axes named (str)
    output_name: str = "output"
    key_metric: str  # the test metric `python -m training list` shows, e.g. "accuracy"
    parity_tolerance: float = 1e-4
    # TrainConfig values this task trains best with; flags given on the command line win.
    train_defaults: ClassVar[dict[str, Any]] = {}
    # Seconds its default training takes on 2 cores (measured): how `ensure` shares tasks between lanes.
    expected_seconds: ClassVar[float] = 60.0
    # Whether answers carry an OOD score (exported inside model.onnx): a generator's have no input to score.
    scores_ood: ClassVar[bool] = True
    # Tasks whose stored models this one's evaluation reads (trained before it when trained together).
    needs: ClassVar[tuple[str, ...]] = ()
    # Files the evaluation writes into the run folder that are stored with the model (e.g. a grid of samples).
    artifacts: ClassVar[tuple[str, ...]] = ()
    # Whether the best epoch on validation is exported; False: the last (a GAN's losses do not say how good its
    # images are, so its schedule ends the run).
    selects_by_validation: ClassVar[bool] = True

    @abstractmethod
    def load_data(self, cfg: TrainConfig) -> Prepared: ...

    @abstractmethod
    def model_config(self, data: Prepared) -> dict[str, Any]:
        """Net config fields the data decides (e.g. the number of classes)."""

    @abstractmethod
    def loss(
        self, outputs: torch.Tensor, targets: torch.Tensor, class_weights: torch.Tensor | None
    ) -> torch.Tensor: ...

    @abstractmethod
    def evaluate(self, predict: Predict, data: Prepared, run_dir: Path) -> dict[str, Any]:
        """Metrics on the test split (plots written into run_dir)."""

    @abstractmethod
    def baseline(self, data: Prepared) -> dict[str, dict[str, Any]]:
        """The classical models to beat, by name, scored the same way on the same test split."""

    def batches(
        self, dataset: TensorDataset, batch_size: int, shuffle: bool, generator: torch.Generator
    ) -> Sampler | None:
        """A batch sampler for this task's data; None: plain batches (shuffled when training)."""
        return None

    def collate(self, rows: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
        """Rows -> one batch (the task may trim padding here, for training and validation alike)."""
        return tuple(default_collate(rows))

    def augment(self, inputs: tuple[torch.Tensor, ...], generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        return inputs

    def initialize(self, net: nn.Module) -> nn.Module:
        """The net's weights before training (not `--resume`, which continues a run): by default as built, drawn
        from the seed; a fine-tuned model's come from its parent (training/tasks/transfer.py)."""
        return net

    def parameter_groups(self, net: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
        """What AdamW trains: groups of parameters, each with its own options (e.g. a lower learning rate)."""
        return [{"params": list(net.parameters())}]

    def begin_epoch(self, model: nn.Module, epoch: int) -> None:
        """Ready `model` for training epoch `epoch` (from 0): by default every layer in training mode."""
        model.train()

    def lineage(self) -> dict[str, Any]:
        """The card's `parent`: the model this one was fine-tuned from; {} for one trained from its seed."""
        return {}

    def search_space(self, trial: optuna.Trial) -> None:
        """Draw this task's tuned parameters from `trial` (`python -m training tune`), by flat names:
        "lr" is a TrainConfig field, "model.dropout" a field of the net's config."""
        raise NotImplementedError(f"{self.name} declares no search space")

    def pretext(self, net: nn.Module) -> nn.Module | None:
        """A self-supervised objective on the training inputs (labels unused), trained before the task's own
        when --pretrain-epochs > 0: a module around `net` whose forward(*inputs, generator=) returns its loss.
        None: this task has none."""
        return None

    def score(self, outputs: torch.Tensor, targets: torch.Tensor) -> float | None:
        """Higher is better: selects the best epoch and shows in the progress bar. None: the loss decides."""
        return None

    def same_decisions(self, expected: np.ndarray, got: np.ndarray) -> bool:
        """Whether two outputs lead to the same answer for a user (classifiers: the same argmax)."""
        return True

    def variants(self, onnx_path: Path, run_dir: Path) -> dict[str, Path]:
        """Other ONNX files derived from the exported one (e.g. int8), registered beside it as `<name>-<suffix>`."""
        return {}

    def graph(self, net: nn.Module) -> nn.Module:
        """What model.onnx computes (before its OOD score is added): the net itself, unless the task serves a part
        of it (a diffusion model's denoiser)."""
        return net

    def companions(self, net: nn.Module, data: Prepared) -> list[Companion]:
        """More graphs of the trained net, stored beside model.onnx."""
        return []

    def export_inputs(self, data: Prepared) -> list[tuple[torch.Tensor, ...]]:
        """Held-out inputs for export and the parity check; the first is the export example (batch >= 2)."""
        inputs = data.test.tensors[:-1]
        return [tuple(t[:16] for t in inputs)]

    # What the task's OOD score is made of, for the card and docs/monitoring.md (models/ood.py, training/ood.py).
    ood_recipe: str = ""

    @abstractmethod
    def ood_scorer(self, net: nn.Module, data: Prepared) -> Scored:
        """`net` with its OOD score, the score's statistics fitted on the training split (not yet calibrated)."""

    @abstractmethod
    def ood_sets(self, data: Prepared) -> dict[str, list[tuple[torch.Tensor, ...]]]:
        """Inputs the model never saw, by set name, as batches of the model's inputs (training/ood_sets.py)."""

    def example(self, data: Prepared) -> dict[str, Any]:
        """A request body the family's route takes, from the test data (the console's example); {} for none."""
        return {}

    @abstractmethod
    def reference_summaries(self, data: Prepared) -> list[dict[str, Any]]:
        """Up to REFERENCE_ITEMS training inputs summarized as the payload logs summarize served ones
        (contracts/summaries.py): what `python -m training drift` compares logged inputs with."""

    def ood_baseline(self, outputs: np.ndarray) -> np.ndarray | None:
        """The simplest OOD score from the net's outputs alone, reported beside the task's; None: no baseline."""
        return None

    def ood_calibration_inputs(self, data: Prepared) -> list[tuple[torch.Tensor, ...]]:
        """Batches the score is standardized and thresholded on: the validation split, as served."""
        return list(self.input_batches(data.val))

    def ood_test_inputs(self, data: Prepared) -> list[tuple[torch.Tensor, ...]]:
        """Batches of in-distribution inputs the false-alarm rate and AUROC are measured on."""
        return list(self.input_batches(data.test))

    def input_batches(
        self, dataset: TensorDataset, size: int = 512, limit: int | None = None
    ) -> Iterator[tuple[torch.Tensor, ...]]:
        """Consecutive inputs of a split (targets dropped), collated as this task collates them."""
        n = min(len(dataset), limit or len(dataset))
        for start in range(0, n, size):
            yield self.collate([dataset[i] for i in range(start, min(start + size, n))])[:-1]


def dynamic_shapes(inputs: tuple[TensorSpec, ...]) -> tuple[dict[int, Any], ...]:
    """torch.export dynamic shapes, one dict per input, from the named axes of the input specs."""
    dims: dict[str, Any] = {}
    shapes = []
    for spec in inputs:
        axes = {}
        for i, axis in enumerate(spec.shape):
            if isinstance(axis, str):
                axes[i] = dims.setdefault(axis, torch.export.Dim(axis, min=1, max=4096))
        shapes.append(axes)
    return tuple(shapes)


def fingerprint_arrays(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def balanced_class_weights(targets: np.ndarray, num_classes: int, power: float = 1.0) -> torch.Tensor:
    """(total / count) ** power, normalized to mean 1. power 1: every class weighs the same in the loss,
    as in macro-F1 (scikit-learn's "balanced"); 0: plain cross-entropy."""
    counts = np.bincount(targets, minlength=num_classes).astype(np.float64)
    weights = (counts.sum() / np.maximum(counts, 1)) ** power
    return torch.tensor(weights / weights.mean(), dtype=torch.float32)


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, round(n * val_fraction))
    return order[n_val:], order[:n_val]
