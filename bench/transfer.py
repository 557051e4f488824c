"""Does fine-tuning transfer? A stored image classifier's conv blocks under a new head (training/transfer.py)
against the same CNN trained from scratch, for the same epochs on the same images, on data that no model here
saw: scikit-learn's handwritten digits (`load_digits`, 8x8, upscaled to the parent's 28x28). Each row: k labelled
images a class (a tenth of them the validation split), tested on every other digit image, over several draws.

    .venv/bin/python -m bench.transfer                           # from fashion-cnn:latest, 10 and 50 a class
    .venv/bin/python -m bench.transfer --per-class 10 --draws 5 --unfreeze-last-block
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.metrics import accuracy_score

from training.config import TrainConfig
from training.loop import fit
from training.tasks.base import Prepared, fingerprint_arrays
from training.tasks.images import ImageClassificationTask
from training.transfer import FineTuneTask, Parent

DIGITS = [str(d) for d in range(10)]


@dataclass(frozen=True)
class Row:
    per_class: int
    draw: int
    finetuned: float  # test accuracy
    scratch: float  # the same CNN trained whole from random weights
    untrained: float  # the fine-tuning road from frozen random blocks: what the parent's weights bring
    test_images: int


def digits_pixels(prep_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Every digit image at `prep_size` (W, H): (N, 1, H, W) uint8, ink bright on black as in Fashion-MNIST."""
    digits = load_digits()
    images = (digits.images * (255 / 16)).round().astype(np.uint8)
    resized = [np.asarray(Image.fromarray(i).resize(prep_size, Image.Resampling.BILINEAR)) for i in images]
    return np.stack(resized)[:, None], digits.target.astype(np.int64)


def digits_data(task: FineTuneTask, per_class: int, draw: int, val_fraction: float = 0.1) -> Prepared:
    """`per_class` labelled images a class (their validation share included), the rest of the digits as test."""
    prep = task.prep
    x, y = digits_pixels((prep.width, prep.height))
    rng = np.random.default_rng(draw)
    train, val = [], []
    for digit in range(10):
        chosen = rng.permutation(np.flatnonzero(y == digit))[:per_class]
        n_val = max(1, round(per_class * val_fraction))
        val += list(chosen[:n_val])
        train += list(chosen[n_val:])
    test = np.setdiff1d(np.arange(len(y)), train + val)
    splits = tuple((x[i], y[i]) for i in (np.asarray(train), np.asarray(val), test))
    return task.prepared(splits, DIGITS, "sklearn.datasets.load_digits", fingerprint_arrays(x, y))


def test_accuracy(net: torch.nn.Module, data: Prepared) -> float:
    x, y = data.test.tensors
    with torch.no_grad():
        predicted = net.eval()(x).argmax(1).numpy()
    return float(accuracy_score(y.numpy(), predicted))


def compare(parent: Parent, per_class: int, draw: int, cfg: TrainConfig, unfreeze_last_block: bool = False) -> Row:
    """The fine-tuned model, the same CNN from scratch and the fine-tuning road from random blocks: one draw of
    the data, the same training settings and augmentation (no mirroring, as fine-tuning's default)."""
    task = FineTuneTask("digits-finetuned", parent, unfreeze_last_block)
    data = digits_data(task, per_class, draw)
    architecture = {k: v for k, v in parent.card.model_config.items() if k not in ("num_classes", "kept_blocks")}
    scratch = ImageClassificationTask()
    scratch.mirror = task.mirror
    torch.manual_seed(draw)  # the random blocks
    untrained = task.untrained()
    with tempfile.TemporaryDirectory() as out:
        finetuned = fit(task, data, cfg, Path(out))
        from_scratch = fit(scratch, data, dataclasses.replace(cfg, model={**architecture, **cfg.model}), Path(out))
        from_random = fit(untrained, data, cfg, Path(out))
    accuracies = (test_accuracy(run.model, data) for run in (finetuned, from_scratch, from_random))
    return Row(per_class, draw, *accuracies, len(data.test))


def proof_config(epochs: int, seed: int = 0) -> TrainConfig:
    """Fine-tuning's defaults, no early stop: both nets train every epoch (the best on validation is kept)."""
    defaults = {**FineTuneTask.train_defaults, "epochs": epochs, "patience": epochs}
    return TrainConfig(task="digits-finetuned", seed=seed, register=False, **defaults)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.transfer", description=__doc__)
    parser.add_argument("--from", dest="parent", default="fashion-cnn:latest", help="the stored classifier")
    parser.add_argument("--per-class", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--draws", type=int, default=3, help="draws of the labelled images per size")
    parser.add_argument("--epochs", type=int, default=FineTuneTask.train_defaults["epochs"])
    parser.add_argument("--unfreeze-last-block", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    parent = Parent.load(args.parent)
    cfg = proof_config(args.epochs)
    block = "trained at a tenth of the rate" if args.unfreeze_last_block else "frozen"
    print(f"parent {parent.tag}, {args.epochs} epochs each, last conv block {block}")
    print(
        "| labelled a class | fine-tuned | from scratch | fine-tuned - scratch (each draw) | from random frozen blocks "
        "| draws | test images |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for per_class in args.per_class:
        rows = [compare(parent, per_class, draw, cfg, args.unfreeze_last_block) for draw in range(args.draws)]
        tuned, scratch, untrained = (
            np.mean([getattr(r, f) for r in rows]) for f in ("finetuned", "scratch", "untrained")
        )
        each = ", ".join(f"{r.finetuned - r.scratch:+.3f}" for r in rows)
        print(
            f"| {per_class} | {tuned:.3f} | {scratch:.3f} | {tuned - scratch:+.3f} ({each}) | {untrained:.3f} "
            f"| {len(rows)} | {rows[0].test_images} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
