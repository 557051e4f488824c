"""The road's OOD step (training/ood.py): what it measures and records in the card."""

import numpy as np
import pytest

from training.ood import detection


def test_detection_is_scikit_learns_auroc_and_fpr_at_95_tpr():
    inside, outside = np.arange(100.0), np.arange(100.0) + 1000
    assert detection(inside, outside) == {"auroc": 1.0, "fpr_at_95_tpr": 0.0}
    assert detection(inside, inside[::-1].copy())["auroc"] == pytest.approx(0.5)
    assert detection(outside, inside)["auroc"] == 0.0  # scores pointing the wrong way


@pytest.mark.parametrize(
    "card_fixture,sets,baseline",
    [
        ("cnn_card", {"digits", "photo crops", "noise", "flat"}, True),
        ("lstm_card", {"sunspots (yearly)", "Nile flow (yearly)", "random walk", "noise"}, False),
    ],
)
def test_the_card_records_threshold_false_alarms_and_detection_per_set(
    request, session_dir, card_fixture, sets, baseline
):
    card = request.getfixturevalue(card_fixture)
    ood = card["ood"]
    assert ood["target_fpr"] == 0.01 and isinstance(ood["threshold"], float) and ood["score"]
    assert 0 <= ood["test_fpr"] <= 1
    assert sets <= set(ood["sets"])
    for measured in ood["sets"].values():
        assert 0 <= measured["auroc"] <= 1 and 0 <= measured["fpr_at_95_tpr"] <= 1 and measured["n"] > 0
    assert ood["sets"]["noise"]["auroc"] > 0.9  # even a briefly trained net knows noise is not its data
    assert ("baseline" in ood) == baseline
    if baseline:
        assert ood["baseline"]["score"] == "1 - top probability" and sets <= set(ood["baseline"]["sets"])
    assert (session_dir / "artifacts" / card["tag"].split(":")[0] / "ood_scores.png").stat().st_size > 10_000
