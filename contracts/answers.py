"""What every family's answer shares: probabilities from logits, and each input's OOD verdict."""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from pydantic import Field

from contracts.tensors import Feeds

OOD_OUTPUT = "ood_score"  # every family's graph answers with this beside its prediction (models/ood.py)

# Every answer the platform gives says whether its input is like the training data (services/ood.py); the
# benchmark's peers, which compute no verdict, leave both null.
OodScore = Annotated[
    float | None, Field(description="how unlike the training data the input is (0: typical; higher: less like it)")
]
InDistribution = Annotated[bool | None, Field(description="ood_score is at or below the model's threshold")]


def verdicts(outputs: Feeds, threshold: float | None) -> list[dict[str, Any]]:
    """Each row's OOD fields from the graph's score; none at all when `threshold` is None (scores off)."""
    if threshold is None:
        return [{}] * len(next(iter(outputs.values())))
    scores = np.asarray(outputs[OOD_OUTPUT], dtype=np.float64)
    inside = (scores <= threshold).tolist()  # NaN is never inside
    return [{"ood_score": round(s, 4), "in_distribution": i} for s, i in zip(scores.tolist(), inside)]


def softmax(logits: np.ndarray) -> np.ndarray:
    """(N, K) logits -> (N, K) probabilities, computed in float64."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def ranked(probabilities: np.ndarray, labels: tuple[str, ...]) -> list[tuple[int, dict[str, float]]]:
    """(N, K) probabilities -> per row (class id, {label: probability rounded to 6 places})."""
    classes = probabilities.argmax(axis=-1).tolist()
    return [(c, dict(zip(labels, row))) for c, row in zip(classes, np.round(probabilities, 6).tolist())]
