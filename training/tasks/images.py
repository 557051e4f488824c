"""Image classification: Fashion-MNIST from its IDX files, or a user's folder of class subfolders."""

from __future__ import annotations

import gzip
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.linear_model import LogisticRegression
from torch import nn
from torch.utils.data import TensorDataset

from contracts.answers import softmax
from contracts.preprocessing import ImagePreprocessing
from contracts.summaries import REFERENCE_ITEMS, array_summaries
from contracts.tensors import TensorSpec
from models.ood import Mahalanobis, Scored, embedded, features_of
from training.config import TrainConfig
from training.evaluate import classification_metrics, plot_confusion_matrix
from training.ood_sets import image_sets
from training.tasks.base import (
    FIT_ROWS,
    Predict,
    Prepared,
    Task,
    balanced_class_weights,
    fingerprint_arrays,
    register_task,
    split_indices,
)
from training.tasks.transfer import (
    DataRefused,
    FineTuning,
    check_counts,
    held_out_split,
    read_class_folder,
    register_fine_tuning,
)

if TYPE_CHECKING:
    import optuna

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian package dataset-fashion-mnist
FASHION_MNIST_LABELS = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}

log = logging.getLogger(__name__)


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (gzipped or not): a big-endian header of dims, then uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion_mnist(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    def idx(stem: str) -> np.ndarray:
        for name in (f"{stem}.gz", stem):
            if (root / name).exists():
                return read_idx(root / name)
        raise FileNotFoundError(f"{root / stem}.gz not found")

    return (
        idx("train-images-idx3-ubyte"),
        idx("train-labels-idx1-ubyte"),
        idx("t10k-images-idx3-ubyte"),
        idx("t10k-labels-idx1-ubyte"),
    )


def load_image_folder(root: Path, prep: ImagePreprocessing) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """root/<class name>/<image files> -> (N, C, H, W) uint8 at prep's size and colour, (N,) class ids, sorted
    class names; any file that is not an image refuses the folder (training/tasks/transfer.py `read_class_folder`)."""
    sizes: set[tuple[int, int]] = set()

    def read(path: Path) -> np.ndarray:
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise ValueError(f"{path.name}: not an image file name")
        try:
            with Image.open(path) as image:
                sizes.add(image.size)
                return prep.pixels_from_image(image)
        except Image.DecompressionBombError as exc:
            raise ValueError(str(exc)) from None

    pixels, targets, classes = read_class_folder(root, read, "images (PNG or JPEG)")
    if sizes != {(prep.width, prep.height)}:
        described = ", ".join(f"{w}x{h}" for w, h in sorted(sizes)[:4]) + (" ..." if len(sizes) > 4 else "")
        log.info("%s: images of %d sizes (%s) resized to %dx%d", root, len(sizes), described, prep.width, prep.height)
    return np.stack(pixels), targets, classes


Split = tuple[np.ndarray, np.ndarray]  # (N, C, H, W) uint8 pixels, (N,) class ids


def prepared_images(
    splits: tuple[Split, Split, Split], labels: list[str], prep: ImagePreprocessing, source: str, fingerprint: str
) -> Prepared:
    """Train, validation and test pixels normalized by `prep`, with their labels and class weights."""

    def dataset(x: np.ndarray, y: np.ndarray) -> TensorDataset:
        return TensorDataset(torch.from_numpy(prep.normalize(x)), torch.from_numpy(y.astype(np.int64)))

    (train, val, test), y_train = splits, splits[0][1]
    return Prepared(
        train=dataset(*train),
        val=dataset(*val),
        test=dataset(*test),
        source=source,
        fingerprint=fingerprint,
        preprocessing=prep,
        labels=list(labels),
        class_weights=balanced_class_weights(y_train, len(labels)),
    )


class ImageClassificationTask(Task):
    name = "fashion-cnn"
    model = "cnn"
    kind = "image-classification"
    inputs = (TensorSpec("pixels", "FP32", ("batch", 1, 28, 28)),)
    output_name = "logits"
    key_metric = "accuracy"
    train_defaults: ClassVar[dict[str, Any]] = {
        "epochs": 12,
        "batch_size": 128,
        "lr": 3e-3,
    }  # 93% test accuracy in ~4.5 min on 2 cores
    expected_seconds = 315.0
    # Mirrored clothes are the same clothes; a user's classes may not be (digits, letters).
    mirror = True
    ood_recipe = "Mahalanobis distance of the last conv block's channel means to the nearest class mean"

    def search_space(self, trial: optuna.Trial) -> None:
        trial.suggest_float("lr", 1e-3, 1e-2, log=True)
        trial.suggest_float("weight_decay", 1e-5, 1e-2, log=True)
        trial.suggest_float("model.dropout", 0.1, 0.5)
        trial.suggest_categorical("model.hidden", [64, 128, 256])

    def load_data(self, cfg: TrainConfig) -> Prepared:
        shape = ImagePreprocessing()
        root = Path(cfg.data) if cfg.data else FASHION_MNIST_DIR
        if (root / "train-images-idx3-ubyte.gz").exists() or (root / "train-images-idx3-ubyte").exists():
            x_train, y_train, x_test, y_test = load_fashion_mnist(root)
            x_train, x_test = x_train[:, None], x_test[:, None]
            labels = FASHION_MNIST_LABELS
        elif root.is_dir():
            x, y, labels = load_image_folder(root, shape)
            train_idx, test_idx = split_indices(len(x), 0.2, cfg.seed + 1)
            x_train, y_train, x_test, y_test = x[train_idx], y[train_idx], x[test_idx], y[test_idx]
        else:
            raise FileNotFoundError(
                f"{root} holds neither Fashion-MNIST IDX files nor class subfolders: install the Debian package "
                "dataset-fashion-mnist (apt-get install dataset-fashion-mnist) or pass --data DIR"
            )
        fingerprint = fingerprint_arrays(x_train, y_train, x_test, y_test)
        train_idx, val_idx = split_indices(len(x_train), cfg.val_fraction, cfg.seed)
        if cfg.dry_run:
            train_idx, val_idx, x_test, y_test = train_idx[:1024], val_idx[:256], x_test[:256], y_test[:256]
        # Scaling statistics come from the training split only.
        scaled = x_train[train_idx].astype(np.float64) / 255.0
        prep = ImagePreprocessing(mean=round(float(scaled.mean()), 4), std=round(float(scaled.std()), 4))
        splits = (x_train[train_idx], y_train[train_idx]), (x_train[val_idx], y_train[val_idx]), (x_test, y_test)
        return prepared_images(splits, labels, prep, str(root), fingerprint)

    def model_config(self, data: Prepared) -> dict[str, Any]:
        return {"num_classes": len(data.labels)}

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor, class_weights: torch.Tensor | None) -> torch.Tensor:
        return F.cross_entropy(outputs, targets, weight=class_weights, label_smoothing=0.05)

    def score(self, outputs: torch.Tensor, targets: torch.Tensor) -> float:
        return (outputs.argmax(1) == targets).float().mean().item()

    def same_decisions(self, expected: np.ndarray, got: np.ndarray) -> bool:
        return bool((expected.argmax(-1) == got.argmax(-1)).all())

    def augment(self, inputs: tuple[torch.Tensor, ...], generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        (x,) = inputs  # (B, C, H, W)
        b, _, h, w = x.shape
        shift = 2
        # Random shifts of up to 2 px, filled with the background (the smallest normalized value).
        padded = F.pad(x, (shift, shift, shift, shift), value=float(x.min()))
        dy = torch.randint(0, 2 * shift + 1, (b,), generator=generator)
        dx = torch.randint(0, 2 * shift + 1, (b,), generator=generator)
        rows = (dy[:, None] + torch.arange(h))[:, :, None]  # (B, H, 1)
        cols = (dx[:, None] + torch.arange(w))[:, None, :]  # (B, 1, W)
        shifted = padded.permute(0, 2, 3, 1)[torch.arange(b)[:, None, None], rows, cols].permute(0, 3, 1, 2)
        if not self.mirror:
            return (shifted,)
        flip = torch.rand(b, generator=generator) < 0.5
        return (torch.where(flip[:, None, None, None], shifted.flip(-1), shifted),)

    def ood_scorer(self, net: nn.Module, data: Prepared) -> Scored:
        # The conv block's channel means: of the scores compared on the OOD sets (energy, max-softmax, the
        # penultimate layer), they separate photos, noise and flat images best (docs/monitoring.md).
        features = embedded(net, self.input_batches(data.train, limit=FIT_ROWS))
        classes = data.train.tensors[1][: len(features)]
        return Scored(net, {"mahalanobis": Mahalanobis.fit(features, classes)}, {"mahalanobis": features_of})

    def ood_sets(self, data: Prepared) -> dict[str, list[tuple[torch.Tensor, ...]]]:
        prep = data.preprocessing
        assert isinstance(prep, ImagePreprocessing)
        sets = image_sets((prep.height, prep.width), np.random.default_rng(0))
        return {name: [(torch.from_numpy(prep.normalize(pixels[:, None])),)] for name, pixels in sets.items()}

    def reference_summaries(self, data: Prepared) -> list[dict[str, Any]]:
        return array_summaries(data.train.tensors[0][:REFERENCE_ITEMS].numpy())  # as the model reads them

    def ood_baseline(self, outputs: np.ndarray) -> np.ndarray:
        return 1.0 - softmax(outputs).max(1)

    def evaluate(self, predict: Predict, data: Prepared, run_dir: Path) -> dict[str, Any]:
        x, y = data.test.tensors
        logits = np.concatenate([predict(x[i : i + 1024]) for i in range(0, len(x), 1024)])
        scores = classification_metrics(y.numpy(), logits.argmax(1), data.labels)
        plot_confusion_matrix(scores["confusion_matrix"], data.labels, run_dir / "confusion_matrix.png")
        return scores

    def baseline(self, data: Prepared) -> dict[str, dict[str, Any]]:
        # Multinomial logistic regression on raw pixels, fitted on up to 10k training images (seconds, ~0.84).
        x, y = data.train.tensors
        x_test, y_test = data.test.tensors
        n = min(len(x), 10_000)
        model = LogisticRegression(max_iter=200).fit(x[:n].flatten(1).numpy(), y[:n].numpy())
        predicted = model.predict(x_test.flatten(1).numpy())
        scores = classification_metrics(y_test.numpy(), predicted, data.labels)
        return {"logistic_regression": {k: scores[k] for k in ("accuracy", "macro_f1")}}


register_task(ImageClassificationTask())


@register_fine_tuning("image-classification")
class ImageFineTuning(FineTuning, ImageClassificationTask):
    """A new image classifier on a stored one's body: a folder per class, read at the parent's size and colour and
    normalized as the parent's inputs were (its blocks see what they learned on). No mirroring: a user's classes
    may change when mirrored (digits, letters)."""

    mirror = False

    def load_data(self, cfg: TrainConfig) -> Prepared:
        if not cfg.data:
            raise DataRefused("--data DIR is needed: a folder with one subfolder of images per class")
        prep = self.parent.card.preprocessing
        assert isinstance(prep, ImagePreprocessing)
        x, y, labels = load_image_folder(Path(cfg.data), prep)
        check_counts(y, labels)
        splits = tuple((x[i], y[i]) for i in held_out_split(y, cfg.val_fraction, cfg.seed))
        return prepared_images(splits, labels, prep, str(Path(cfg.data).resolve()), fingerprint_arrays(x, y))
