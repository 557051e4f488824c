"""Transfer learning: `python -m training finetune --from MODEL[:VERSION] --data PATH --name NAME`.

A stored classifier's weights (its `weights.safetensors`, checked against the card's digest) start a net of the
same architecture whose head is built anew for the user's classes. What trains is read from the two seams the net
declares (`models.registry.Transferable`): the head at the run's rate, the body's norm layers with it (fastai's
train_bn: their statistics follow the new data), the rest of the body frozen; with `--unfreeze-after N` the last
block (`--thaw-blocks K`: the last K) trains too after N epochs, at a tenth of the rate (fastai's `fine_tune`
thaws every block after one epoch). The rest is the road every model takes: the family's augmentation, early
stopping, evaluation and baseline, ONNX parity, OOD statistics fitted on the new data, a card naming the parent.

A family opts in where its task is defined (`register_fine_tuning`), with how it reads a user's data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import bentoml
import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from contracts.card import ModelCard, file_sha256
from models import build_model, config_from_dict
from models.ood import embedded
from models.registry import Transferable
from training.config import TrainConfig
from training.evaluate import classification_metrics
from training.import_model import NAME
from training.tasks.base import REGISTERED, Prepared, Task
from training.weights import WEIGHTS_FILE, load_weights

MIN_PER_CLASS = 3  # one example each for training, validation and test
TEST_FRACTION = 0.2
BODY_LR_FACTOR = 0.1  # the thawed blocks' rate, relative to the head's
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm)


class TransferRefused(ValueError):
    """A fine-tune cannot start as asked; the message says why and what to do instead."""


class DataRefused(ValueError):
    """A user's data cannot be trained on as given; the message says what to change (naming the files)."""


@dataclass(frozen=True)
class Schedule:
    """Which parameters train when: the head always, the body's norms unless frozen, and the last `thawed_blocks`
    blocks after `unfreeze_after` epochs (None: never) at `body_lr_factor` of the rate."""

    unfreeze_after: int | None = None
    thawed_blocks: int = 1
    body_lr_factor: float = BODY_LR_FACTOR
    # The body's norm layers train with the head (fastai's train_bn): their statistics and scales follow the new
    # data while the convolutions and attention stay the parent's.
    train_norms: bool = True

    def thawing(self, blocks: list[nn.Module]) -> tuple[list[nn.Module], list[nn.Module]]:
        """`blocks` split into those frozen throughout and those the schedule thaws."""
        if self.unfreeze_after is None:
            return blocks, []
        cut = max(0, len(blocks) - self.thawed_blocks)
        return blocks[:cut], blocks[cut:]

    def describe(self) -> dict[str, Any]:
        plan = {"head": "trained", "norms": "trained" if self.train_norms else "frozen"}
        if self.unfreeze_after is None:
            return {"body": "frozen", **plan}
        return {
            "body": f"frozen but its last {self.thawed_blocks} block(s)",
            **plan,
            "thawed_after_epochs": self.unfreeze_after,
            "thawed_lr_factor": self.body_lr_factor,
        }


@dataclass(frozen=True)
class Parent:
    """The stored classifier a model is fine-tuned from: its card, its weights and its folder (a tokenizer)."""

    tag: str
    card: ModelCard
    weights: dict[str, torch.Tensor]
    folder: Path

    @classmethod
    def load(cls, tag: str) -> Parent:
        """`tag` (name or name:version) from the store, refused unless a family can fine-tune it and its stored
        weights are the ones its card recorded."""
        try:
            stored = bentoml.models.get(tag if ":" in tag else f"{tag}:latest")
        except bentoml.exceptions.NotFound:
            raise TransferRefused(f"--from {tag}: no such model in the store; {classifiers_line()}") from None
        except bentoml.exceptions.BentoMLException as exc:
            raise TransferRefused(f"--from {tag!r} is not a model name: {exc}") from None
        card = ModelCard.from_metadata(stored.info.metadata)
        if card.task not in FINE_TUNERS:
            raise TransferRefused(f"--from {stored.tag} is a {card.task} model, not a classifier; {classifiers_line()}")
        path = Path(stored.path_of(WEIGHTS_FILE))
        if not path.exists():
            raise TransferRefused(
                f"--from {stored.tag} has no stored weights ({WEIGHTS_FILE}): it was imported as ONNX, is a "
                f"quantized variant, or was trained before weights were kept; train it again "
                f"(python -m training train {stored.tag.name}) or fine-tune from a model trained here"
            )
        if file_sha256(path) != card.sha256.get(WEIGHTS_FILE):
            raise TransferRefused(f"--from {stored.tag}: {WEIGHTS_FILE} is not the file its card recorded")
        return cls(str(stored.tag), card, load_weights(path), Path(stored.path))

    def net(self, num_classes: int | None = None) -> nn.Module:
        """The parent's net with its weights; given `num_classes`, the same architecture with that many outputs and
        the weights it was built with."""
        config = {**self.card.model_config, **({"num_classes": num_classes} if num_classes else {})}
        net = build_model(self.card.family, config_from_dict(self.card.family, config))
        if num_classes is None:
            net.load_state_dict(self.weights)
        return net


def name_problem(name: str, parent: Parent) -> str | None:
    """Why `name` cannot be the fine-tuned model's (None: it can): it must be a store name, not a default model's,
    and a model already stored under it must be of the parent's kind (the new one is its next version)."""
    if not NAME.match(name):
        return f"--name {name!r}: lowercase letters, digits, '.', '_' or '-', starting with a letter or digit"
    if name in REGISTERED:
        return f"--name {name} is a default model's name ({', '.join(sorted(REGISTERED))}): choose one of your own"
    for stored in (m for m in bentoml.models.list() if m.tag.name == name):
        card = ModelCard.from_metadata(stored.info.metadata)
        if (card.task, card.family) != (parent.card.task, parent.card.family):
            return (
                f"--name {name} is a stored {card.task} model ({card.family or 'imported'}); a fine-tune of "
                f"{parent.tag} would be a {parent.card.task} model: choose another name"
            )
    return None


def classifiers_line() -> str:
    """The stored models a fine-tune can start from, for a refusal."""
    names = {
        str(m.tag.name)
        for m in bentoml.models.list()
        if m.info.metadata.get("task") in FINE_TUNERS and Path(m.path_of(WEIGHTS_FILE)).exists()
    }
    return f"classifiers with stored weights there: {', '.join(sorted(names)) or 'none'}"


def held_out_split(targets: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train, validation and test indices drawn within each class (stratified: every split holds every class,
    which a few examples a class would not get from a global draw)."""
    rng = np.random.default_rng(seed)
    train: list[int] = []
    val: list[int] = []
    test: list[int] = []
    for class_id in np.unique(targets):
        members = rng.permutation(np.flatnonzero(targets == class_id))
        n_test = max(1, round(len(members) * TEST_FRACTION))
        n_val = max(1, round((len(members) - n_test) * val_fraction))
        test += members[:n_test].tolist()
        val += members[n_test : n_test + n_val].tolist()
        train += members[n_test + n_val :].tolist()
    return np.sort(train), np.sort(val), np.sort(test)


def read_class_folder(root: Path, read: Callable[[Path], T], what: str) -> tuple[list[T], np.ndarray, list[str]]:
    """root/<class name>/<files>, each read by `read` (raising ValueError or OSError for a file it cannot read):
    the examples, their class ids and the sorted class names. Hidden files and folders (.DS_Store) are skipped;
    any other file `read` refuses, a class folder without files or fewer than two classes refuse the folder, naming
    what is wrong. `what`: the files wanted, e.g. "images (PNG or JPEG)"."""
    if not root.is_dir():
        raise DataRefused(f"{root} is not a folder (one subfolder of {what} per class)")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        found = f"one ({classes[0]})" if classes else "none"
        raise DataRefused(f"{root} needs a subfolder of {what} for each of at least two classes; found {found}")
    examples, targets, unreadable, empty = [], [], [], []
    for class_id, name in enumerate(classes):
        files = [p for p in sorted((root / name).iterdir()) if p.is_file() and not p.name.startswith(".")]
        for path in files:
            try:
                examples.append(read(path))
            except (OSError, ValueError):  # a decoding error included
                unreadable.append(str(path.relative_to(root)))
                continue
            targets.append(class_id)
        if not files:
            empty.append(name)
    if unreadable:
        more = f" and {len(unreadable) - 5} more" if len(unreadable) > 5 else ""
        raise DataRefused(f"not {what} in {root}: {', '.join(unreadable[:5])}{more}")
    if empty:
        raise DataRefused(f"class folders without files in {root}: {', '.join(empty)}")
    return examples, np.asarray(targets, dtype=np.int64), classes


def check_counts(targets: np.ndarray, labels: list[str]) -> None:
    """Refuses data of one class, or with a class too small to appear in every split."""
    if len(labels) < 2:
        raise DataRefused(f"a classifier needs at least two classes; the data has {len(labels)} ({', '.join(labels)})")
    counts = np.bincount(targets, minlength=len(labels))
    if few := [f"{labels[i]} ({n})" for i, n in enumerate(counts) if n < MIN_PER_CLASS]:
        raise DataRefused(
            f"classes with fewer than {MIN_PER_CLASS} examples (one each for training, validation and test): "
            + ", ".join(few)
        )


class FineTuning:
    """Put before a classification task's class: its road, started from `parent` with a new head.

    The subclass reads the user's data in `load_data` (the parent's preprocessing, `held_out_split`)."""

    train_defaults: ClassVar[dict[str, Any]] = {
        "epochs": 30,
        "batch_size": 32,  # a few hundred examples: larger batches leave an epoch a step or two
        "lr": 3e-3,
        "warmup_steps": 0,
        "patience": 8,
    }
    expected_seconds: ClassVar[float] = 60.0

    def __init__(self, name: str, parent: Parent, schedule: Schedule):
        if not isinstance(parent.net(), Transferable):
            raise TransferRefused(f"--from {parent.tag}: its net ({parent.card.family}) declares no head and blocks")
        self.name, self.parent, self.schedule = name, parent, schedule
        self.model = parent.card.family
        self.inputs, self.output_name = parent.card.inputs, parent.card.output

    def model_config(self, data: Prepared) -> dict[str, Any]:
        return {**self.parent.card.model_config, "num_classes": len(data.labels or ())}

    def initialize(self, net: nn.Module) -> nn.Module:
        """The parent's weights in every layer but the head; the body frozen (`begin_epoch` may thaw its last)."""
        assert isinstance(net, Transferable)
        head = head_prefix(net)
        kept = {key: value for key, value in self.parent.weights.items() if not key.startswith(head)}
        own = net.state_dict()
        if mismatched := [key for key, value in kept.items() if key not in own or own[key].shape != value.shape]:
            raise TransferRefused(f"{self.parent.tag}'s weights do not fit its own architecture: {mismatched[:3]}")
        net.load_state_dict(kept, strict=False)
        net.requires_grad_(False)
        net.head.requires_grad_(True)
        for norm in self.trained_norms(net.blocks()):
            norm.requires_grad_(True)
        return net

    def trained_norms(self, blocks: list[nn.Module]) -> list[nn.Module]:
        """The norm layers of `blocks` that train with the head (none when the schedule freezes them)."""
        if not self.schedule.train_norms:
            return []
        return [m for block in blocks for m in block.modules() if isinstance(m, NORMS)]

    def parameter_groups(self, net: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
        assert isinstance(net, Transferable)
        frozen, thawed = self.schedule.thawing(net.blocks())
        norms = [p for norm in self.trained_norms(frozen) for p in norm.parameters()]
        groups: list[dict[str, Any]] = [{"params": [*net.head.parameters(), *norms]}]
        if thawed:  # no gradient until thawed, so AdamW leaves them alone
            body = [p for block in thawed for p in block.parameters()]
            groups.append({"params": body, "lr": cfg.lr * self.schedule.body_lr_factor})
        return groups

    def begin_epoch(self, model: nn.Module, epoch: int) -> None:
        """Training mode for the head, the trained norms and the thawed blocks once their epoch has come; the frozen
        rest in eval mode (its norms keep the parent's statistics)."""
        model.train()
        net = getattr(model, "module", model)  # under DistributedDataParallel
        assert isinstance(net, Transferable)
        frozen, thawed = self.schedule.thawing(net.blocks())
        if self.schedule.unfreeze_after is None or epoch < self.schedule.unfreeze_after:
            frozen, thawed = [*frozen, *thawed], []
        for block in frozen:
            block.eval().requires_grad_(False)
        for block in thawed:
            block.requires_grad_(True)
        for norm in self.trained_norms(frozen):
            norm.train().requires_grad_(True)

    def lineage(self) -> dict[str, Any]:
        """The card's `parent`: what it was fine-tuned from (Hugging Face's base_model and relation), which layers
        were kept and frozen, and the schedule."""
        net = self.parent.net()
        assert isinstance(net, Transferable)
        frozen, _ = self.schedule.thawing(net.blocks())
        norms = set(layer_names(net, self.trained_norms(frozen)))
        return {
            "base_model": self.parent.tag,
            "base_model_relation": "finetune",
            "digest": self.parent.card.digest,
            "head": head_prefix(net).rstrip("."),
            "kept_layers": layer_names(net, net.blocks()),
            "frozen_layers": [name for name in layer_names(net, frozen) if name not in norms],
            "schedule": self.schedule.describe(),
        }

    def baseline(self, data: Prepared) -> dict[str, dict[str, Any]]:
        """The task's own baselines and a logistic regression on the parent's frozen features: what the new head
        must beat to show that training it (and the last block) earns its time."""
        task: Task = self  # type: ignore[assignment]  # the task this is mixed into
        net = self.parent.net().eval()
        with torch.no_grad():
            x = embedded(net, task.input_batches(data.train)).numpy()
            x_test = embedded(net, task.input_batches(data.test)).numpy()
        y, y_test = data.train.tensors[-1].numpy(), data.test.tensors[-1].numpy()
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x, y)
        scores = classification_metrics(y_test, model.predict(x_test), data.labels)
        frozen = {"frozen_features_logistic_regression": {k: scores[k] for k in ("accuracy", "macro_f1")}}
        return {**super().baseline(data), **frozen}  # type: ignore[misc]


def head_prefix(net: Transferable) -> str:
    """The state_dict prefix of the net's head, e.g. "head."."""
    assert isinstance(net, nn.Module)
    return next(f"{name}." for name, module in net.named_modules() if module is net.head)


def layer_names(net: nn.Module, blocks: list[nn.Module]) -> list[str]:
    """The names of the layers with weights inside `blocks`."""
    inside = {id(m) for block in blocks for m in block.modules()}
    weighted = [(name, m) for name, m in net.named_modules() if next(m.parameters(recurse=False), None) is not None]
    return [name for name, m in weighted if id(m) in inside]


FineTuner = Callable[[str, Parent, Schedule], Task]
FINE_TUNERS: dict[str, FineTuner] = {}  # by the parent's task kind ("image-classification")
F = TypeVar("F", bound=FineTuner)
T = TypeVar("T")


def register_fine_tuning(kind: str) -> Callable[[F], F]:
    """Class decorator on a family's fine-tuning task: models of task `kind` can be fine-tuned by it."""

    def register(tuner: F) -> F:
        FINE_TUNERS[kind] = tuner
        return tuner

    return register


def fine_tuning(name: str, parent: Parent, schedule: Schedule) -> Task:
    """The task that fine-tunes `parent` into a model named `name`."""
    return FINE_TUNERS[parent.card.task](name, parent, schedule)
