"""Each model's OOD threshold in use: the model's graph scores every input (models/ood.py), the family's contract
compares the score with this threshold, and the answer counters (services/ops/metrics.py) count both."""

from __future__ import annotations

from contracts.card import ModelCard
from services.settings import SETTINGS


def ood_threshold(
    model: str, card: ModelCard, overrides: dict[str, float] | None = None, enabled: bool = SETTINGS.ood_scores
) -> float | None:
    """The card's threshold (validation's at 1% false alarms) or MODELROAD_OOD_THRESHOLDS'; None with scores off.

    A model registered before OOD scores existed cannot be served: the start stops with what to do."""
    if card.ood.threshold is None:
        raise ValueError(
            f"{model} was registered without an OOD score (trained before they existed): re-train it with "
            f"`python -m training train {model}`"
        )
    overrides = SETTINGS.ood_threshold_overrides if overrides is None else overrides
    return float(overrides.get(model, card.ood.threshold)) if enabled else None
