"""What every family's answer shares: probabilities from logits, and each input's OOD verdict."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Annotated, Any

import numpy as np
from pydantic import Field

from contracts.tensors import Feeds

OOD_OUTPUT = "ood_score"  # every family's graph answers with this beside its prediction (models/ood.py)

# Every answer the platform gives says whether its input is like the training data (services/families/ood.py); the
# benchmark's peers, which compute no verdict, leave both null.
OodScore = Annotated[
    float | None, Field(description="how unlike the training data the input is (0: typical; higher: less like it)")
]
InDistribution = Annotated[bool | None, Field(description="ood_score is at or below the model's threshold")]


def verdicts(outputs: Feeds, threshold: float | None) -> list[dict[str, Any]]:
    """Each row's OOD fields from the graph's score; none at all when `threshold` is None (scores off).

    In plain Python: a request holds a row or a few, where each numpy call would cost more than its arithmetic."""
    if threshold is None:
        return [{}] * len(next(iter(outputs.values())))
    # float32 -> Python floats exactly; NaN is never inside
    return [{"ood_score": round(s, 4), "in_distribution": s <= threshold} for s in outputs[OOD_OUTPUT].tolist()]


def softmax(logits: np.ndarray) -> np.ndarray:
    """(N, K) logits -> (N, K) probabilities, computed in float64."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


# A classifier's answers are read from these, computed from its logits for a whole batch of requests at once (the
# runner's `derive`, services/runtime/runner.py), not per request (numpy's call overhead; docs/benchmarks.md).
CLASS_ID, PROBABILITIES = "_class_id", "_probabilities"


def class_arrays(logits: np.ndarray) -> Feeds:
    """(N, K) logits -> each row's class, and its probabilities rounded to 6 places."""
    probabilities = softmax(logits)
    return {CLASS_ID: probabilities.argmax(axis=-1), PROBABILITIES: np.round(probabilities, 6)}


def classes_derived(output: str) -> Callable[[Feeds], Feeds]:
    """A runner's `derive` for a classifier whose logits are `output`: its class arrays, once per batch."""
    return functools.partial(_class_arrays_of, output)


def _class_arrays_of(output: str, outputs: Feeds) -> Feeds:
    return class_arrays(outputs[output])


def ranked(outputs: Feeds, logits: str, labels: tuple[str, ...]) -> list[tuple[int, dict[str, float]]]:
    """Per row (class id, {label: probability}), from the batch's class arrays (computed here when absent)."""
    arrays = outputs if CLASS_ID in outputs else class_arrays(outputs[logits])
    return [(c, dict(zip(labels, row))) for c, row in zip(arrays[CLASS_ID].tolist(), arrays[PROBABILITIES].tolist())]
