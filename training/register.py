"""Put an exported model into the BentoML model store with the card the service and people read."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bentoml

from contracts.card import ModelCard, file_sha256


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
            cwd=Path(__file__).parent,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def register_model(name: str, files: dict[str, Path], card: ModelCard) -> tuple[str, dict[str, Any]]:
    """Copy files into a new store version of `name`; the card gains sha256 of every file, commit and time.

    Returns the store tag and the metadata stored."""
    card = dataclasses.replace(
        card,
        sha256={file_name: file_sha256(path) for file_name, path in files.items()},
        git_commit=git_commit(),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    metadata = json.loads(json.dumps(card.to_metadata()))  # plain JSON types only
    labels = {"task": card.task, **({"family": card.family} if card.family else {})}
    labels |= {"variant": card.variant} if card.variant else {}
    with bentoml.models.create(name, labels=labels, metadata=metadata) as model:
        for file_name, path in files.items():
            Path(model.path_of(file_name)).parent.mkdir(parents=True, exist_ok=True)  # external data in a subfolder
            shutil.copyfile(path, model.path_of(file_name))
    return str(model.tag), metadata


def list_registered() -> list[dict[str, Any]]:
    """One row per stored model version: tag, family, creation time and key test metrics."""
    rows = []
    for model in bentoml.models.list():
        card = ModelCard.from_metadata(model.info.metadata)
        key = card.key_metric
        rows.append(
            {
                "tag": str(model.tag),
                "family": model.info.labels.get("family", "?"),
                "created_at": card.created_at,
                "metric": key,
                "value": card.metrics.get(key),
                "baselines": {name: scores.get(key) for name, scores in card.baseline.items()},
                "parity_max_abs_diff": card.parity_max_abs_diff,
                "ood_threshold": card.ood.threshold,
                "digest": card.digest,
            }
        )
    return sorted(rows, key=lambda r: (r["tag"].split(":")[0], r["created_at"]))
