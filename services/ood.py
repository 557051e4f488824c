"""Each answer's OOD verdict: the model's graph scores every input (models/ood.py), the family's contract
compares the score with the threshold its card records (or MODELROAD_OOD_THRESHOLDS sets), and here both are
counted for Prometheus."""

from __future__ import annotations

import numpy as np

from contracts.answers import OOD_OUTPUT
from contracts.card import ModelCard
from contracts.tensors import Feeds
from services.metrics import OOD_ANSWERS, OOD_SCORES
from services.settings import SETTINGS


class OodJudge:
    """One model's threshold in use (None with scores off) and its series (children made once)."""

    def __init__(
        self,
        model: str,
        card: ModelCard,
        overrides: dict[str, float] | None = None,
        enabled: bool = SETTINGS.ood_scores,
    ):
        if card.ood.threshold is None:
            raise ValueError(
                f"{model} was registered without an OOD score (trained before they existed): re-train it with "
                f"`python -m training train {model}`"
            )
        overrides = SETTINGS.ood_threshold_overrides if overrides is None else overrides
        self.threshold = float(overrides.get(model, card.ood.threshold)) if enabled else None
        self.scores = OOD_SCORES.labels(model)
        self.outside = OOD_ANSWERS.labels(model)

    def count(self, outputs: Feeds) -> None:
        """Observe a call's scores, and count those over the threshold (NaN included); nothing with scores off."""
        if self.threshold is None:
            return
        scores = np.asarray(outputs[OOD_OUTPUT], dtype=np.float64)
        for score in scores.tolist():
            self.scores.observe(score)
        flagged = len(scores) - int((scores <= self.threshold).sum())
        if flagged:
            self.outside.inc(flagged)
