"""Triton's classification extension, for both protocols: an output asked for with `classification: k` is answered
as its k highest scores along the last axis, each the BYTES string "score:index:label" (":label" only where the
model's labels name that axis's classes), highest first; k past the class count answers every class, as Triton
does."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from services.errors import BadRequest


def class_count(output: str, asked: object) -> int | None:
    """The k a request asks of `output` (None: no classification), or BadRequest when it is not a positive int."""
    if asked is None:
        return None
    if isinstance(asked, bool) or not isinstance(asked, int) or asked < 1:
        raise BadRequest(f"output {output}: classification must be a positive integer (a class count), not {asked!r}")
    return asked


def classify(output: str, array: np.ndarray, count: int, labels: Sequence[str]) -> np.ndarray:
    """`array`'s top `count` classes along its last axis as "score:index[:label]" strings (shape: the leading axes,
    then min(count, classes))."""
    if array.dtype.kind not in "fiu" or array.ndim == 0:
        raise BadRequest(f"output {output}: classification needs numeric scores, not {array.dtype} {array.shape}")
    classes = array.shape[-1]
    top = np.argsort(-array, axis=-1, kind="stable")[..., : min(count, classes)]
    scores = np.take_along_axis(array, top, axis=-1)
    names = labels if len(labels) == classes else None
    strings = [
        f"{float(score):f}:{index}:{names[index]}" if names else f"{float(score):f}:{index}"
        for score, index in zip(scores.reshape(-1).tolist(), top.reshape(-1).tolist(), strict=True)
    ]
    return np.array([s.encode() for s in strings], dtype=np.object_).reshape(top.shape)
