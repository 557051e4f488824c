"""What an input looks like in numbers: the payload logs record these per input (services/ops/payloads.py), and
the card records them for a sample of the training split, so that `python -m training drift` can compare the
two without the training data."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

REFERENCE_ITEMS = 1_000  # training inputs summarized into the card (a two-sample test needs no more)


def array_summaries(batch: Sequence[np.ndarray]) -> list[dict[str, Any]]:
    """Per item of a numeric batch (an image as the model reads it): its size and the moments of its values."""
    values = np.asarray(batch, dtype=np.float64).reshape(len(batch), -1)
    size, means, stds = values.shape[1], values.mean(axis=1).tolist(), values.std(axis=1).tolist()
    return [{"size": size, "mean": m, "std": s} for m, s in zip(means, stds, strict=True)]


def text_summaries(texts: Sequence[str]) -> list[dict[str, int]]:
    return [{"chars": len(text), "words": len(text.split())} for text in texts]


def history_summaries(histories: Sequence[np.ndarray]) -> list[dict[str, float]]:
    """Per history of one length: its size, level (mean, last value), spread and the spread of its steps."""
    values = np.asarray(histories, dtype=np.float64)
    steps = np.diff(values, axis=1).std(axis=1).tolist()
    return [
        summary | {"last": last, "step_std": step}
        for summary, last, step in zip(array_summaries(values), values[:, -1].tolist(), steps, strict=True)
    ]


def columns(summaries: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Summaries as one list per field, rounded: the card's `reference`. Not `size`: the training split's is
    one number (28x28 images, one window length) where served inputs may rightly differ."""
    return {key: [round(float(s[key]), 6) for s in summaries] for key in summaries[0] if key != "size"}
