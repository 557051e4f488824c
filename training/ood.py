"""The road's OOD step: fit a task's score on the training split, calibrate it on validation, and, once the
graph is exported, set its threshold and measure it against inputs the model never saw (training/ood_sets.py).

What lands in the card under `ood`: the score's recipe, the threshold (the validation split's quantile at
TARGET_FPR false alarms), the test split's false-alarm rate, and per evaluation set scikit-learn's AUROC and
FPR at 95% TPR, for the score and, where the task has one, the simple baseline (1 - top probability).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn import metrics

from models.ood import Scored
from training.tasks.base import Prepared, Task

TARGET_FPR = 0.01  # false alarms on validation data the threshold allows

# (inputs...) -> (outputs, ood scores) as numpy: the exported graph, as evaluation sees it.
PredictScored = Callable[..., tuple[np.ndarray, np.ndarray]]


def fit_scored(task: Task, net: torch.nn.Module, data: Prepared) -> Scored:
    """The task's score around `net`, fitted on the training split and calibrated on validation."""
    scored = task.ood_scorer(net, data)
    scored.calibrate(task.ood_calibration_inputs(data))
    return scored.eval()


def scores(predict: PredictScored, inputs: list[tuple]) -> tuple[np.ndarray, np.ndarray]:
    """(outputs, scores) of batches of inputs, concatenated."""
    results = [predict(*batch) for batch in inputs]
    return np.concatenate([r[0] for r in results]), np.concatenate([r[1] for r in results])


def detection(inside: np.ndarray, outside: np.ndarray) -> dict[str, float]:
    """How well scores separate in-distribution from OOD inputs (OOD is the positive class)."""
    truth = np.r_[np.zeros(len(inside)), np.ones(len(outside))]
    values = np.r_[inside, outside]
    fpr, tpr, _ = metrics.roc_curve(truth, values)
    return {
        "auroc": round(float(metrics.roc_auc_score(truth, values)), 4),
        "fpr_at_95_tpr": round(float(fpr[np.searchsorted(tpr, 0.95)]), 4),
    }


def ood_report(predict: PredictScored, task: Task, data: Prepared, run_dir: Path) -> dict[str, Any]:
    """Threshold from validation, false alarms on test, detection of each OOD set; a histogram PNG."""
    _, val = scores(predict, task.ood_calibration_inputs(data))
    threshold = float(np.quantile(val, 1 - TARGET_FPR))
    test_outputs, test = scores(predict, task.ood_test_inputs(data))
    sets = {name: scores(predict, inputs) for name, inputs in task.ood_sets(data).items()}
    everything = np.concatenate([s for _, s in sets.values()])
    report: dict[str, Any] = {
        "score": task.ood_recipe,
        "threshold": round(threshold, 4),
        "target_fpr": TARGET_FPR,
        "test_fpr": round(float(np.mean(test > threshold)), 4),
        "sets": {
            name: {**detection(test, s), "flagged": round(float(np.mean(s > threshold)), 4), "n": len(s)}
            for name, (_, s) in sets.items()
        },
        "all": {**detection(test, everything), "flagged": round(float(np.mean(everything > threshold)), 4)},
    }
    baseline = task.ood_baseline(test_outputs)
    if baseline is not None:
        outside = {name: task.ood_baseline(outputs) for name, (outputs, _) in sets.items()}
        report["baseline"] = {
            "score": "1 - top probability",
            "sets": {name: detection(baseline, s) for name, s in outside.items()},
            "all": detection(baseline, np.concatenate(list(outside.values()))),
        }
    plot_scores(test, {name: s for name, (_, s) in sets.items()}, threshold, run_dir / "ood_scores.png")
    return report


def plot_scores(inside: np.ndarray, outside: dict[str, np.ndarray], threshold: float, path: Path) -> None:
    everything = np.concatenate([inside, *outside.values()])
    bins = np.linspace(np.quantile(everything, 0.001), np.quantile(everything, 0.995), 60)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.hist(np.clip(inside, bins[0], bins[-1]), bins, density=True, alpha=0.6, label="test split (in distribution)")
    for name, values in outside.items():
        ax.hist(np.clip(values, bins[0], bins[-1]), bins, density=True, histtype="step", linewidth=1.5, label=name)
    ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.2f}")
    ax.set_xlabel("ood_score (higher: less like the training data)")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
