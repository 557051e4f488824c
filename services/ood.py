"""Each answer's OOD verdict: the model's graph scores every input (models/ood.py); here the score meets the
threshold its card records (or MODELROAD_OOD_THRESHOLDS sets), and both are counted for Prometheus."""

from __future__ import annotations

import numpy as np

from contracts.card import ModelCard
from contracts.families import OOD_OUTPUT, Verdicts
from services.metrics import OOD_ANSWERS, OOD_SCORES
from services.runner import Outputs
from services.settings import SETTINGS


class OodJudge:
    """One model's threshold and its series (children made once: `labels()` costs per call)."""

    def __init__(
        self,
        model: str,
        card: ModelCard,
        overrides: dict[str, float] | None = None,
        enabled: bool = SETTINGS.ood_scores,
    ):
        if "threshold" not in card.ood:
            raise ValueError(
                f"{model} was registered without an OOD score (trained before they existed): re-train it with "
                f"`python -m training train {model}`"
            )
        overrides = SETTINGS.ood_threshold_overrides if overrides is None else overrides
        self.threshold = float(overrides.get(model, card.ood["threshold"]))
        self.scores = OOD_SCORES.labels(model)
        self.outside = OOD_ANSWERS.labels(model)
        self.enabled = enabled

    def judge(self, outputs: Outputs) -> Verdicts | None:
        """The verdicts on a batch's scores; None with scores off (MODELROAD_OOD_SCORES=false)."""
        if not self.enabled:
            return None
        scores = np.asarray(outputs[OOD_OUTPUT], dtype=np.float64)
        inside = scores <= self.threshold  # NaN is never inside
        for score in scores.tolist():
            self.scores.observe(score)
        flagged = len(scores) - int(inside.sum())
        if flagged:
            self.outside.inc(flagged)
        return Verdicts(scores, inside)
