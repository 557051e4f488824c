"""Scores and plots shared by the families: scikit-learn metrics, matplotlib PNGs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no screen on servers and CI
import matplotlib.pyplot as plt
import numpy as np
from sklearn import metrics


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    ids = list(range(len(labels)))
    precision, recall, f1, _ = metrics.precision_recall_fscore_support(
        y_true, y_pred, labels=ids, average="macro", zero_division=0
    )
    report = metrics.classification_report(
        y_true, y_pred, labels=ids, target_names=list(labels), output_dict=True, zero_division=0
    )
    return {
        "accuracy": float(metrics.accuracy_score(y_true, y_pred)),
        "macro_precision": float(precision),
        "macro_recall": float(recall),
        "macro_f1": float(f1),
        "per_class": {name: {k: float(v) for k, v in report[name].items()} for name in labels},
        "confusion_matrix": metrics.confusion_matrix(y_true, y_pred, labels=ids).tolist(),
    }


def plot_confusion_matrix(matrix: Sequence[Sequence[int]], labels: Sequence[str], path: Path) -> None:
    size = max(6.0, 0.45 * len(labels))
    fig, ax = plt.subplots(figsize=(size, size))
    metrics.ConfusionMatrixDisplay(np.asarray(matrix), display_labels=list(labels)).plot(
        ax=ax, xticks_rotation="vertical", colorbar=False, include_values=len(labels) <= 12
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_history(history: list[dict[str, float]], path: Path) -> None:
    epochs = [h["epoch"] for h in history]
    keys = [k for k in ("train_loss", "val_loss", "val_score") if all(k in h for h in history)]
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        ax.plot(epochs, [h[key] for h in history], marker="o")
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
