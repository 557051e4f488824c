"""Put an exported model into the BentoML model store with the card the service and people read."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bentoml

from contracts.card import ModelCard


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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


def _without_none(value: Any) -> Any:
    """BentoML metadata refuses None: drop such entries (an absent key reads the same)."""
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value if v is not None]
    return value


def register_model(name: str, files: dict[str, Path], card: dict[str, Any], labels: dict[str, str]) -> str:
    """Copy files into a new store version of `name`; the card gains sha256 of every file, commit and time."""
    metadata = _without_none(json.loads(json.dumps(card)))  # plain JSON types only: tuples become lists
    metadata["sha256"] = {file_name: sha256_file(path) for file_name, path in files.items()}
    metadata["git_commit"] = git_commit()
    metadata["created_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    with bentoml.models.create(name, labels=labels, metadata=metadata) as model:
        for file_name, path in files.items():
            Path(model.path_of(file_name)).parent.mkdir(parents=True, exist_ok=True)  # external data in a subfolder
            shutil.copyfile(path, model.path_of(file_name))
    return str(model.tag)


def list_registered() -> list[dict[str, Any]]:
    """One row per stored model version: tag, family, creation time and key test metrics."""
    rows = []
    for model in bentoml.models.list():
        meta = model.info.metadata
        test = meta.get("metrics", {})
        key = meta.get("key_metric", "")
        baselines = {name: scores.get(key) for name, scores in meta.get("baseline", {}).items()}
        rows.append(
            {
                "tag": str(model.tag),
                "family": model.info.labels.get("family", "?"),
                "created_at": meta.get("created_at", ""),
                "metric": key,
                "value": test.get(key),
                "baselines": baselines,
                "parity_max_abs_diff": meta.get("parity_max_abs_diff"),
                "ood_threshold": meta.get("ood", {}).get("threshold"),
                "digest": ModelCard.from_metadata(meta).digest,
            }
        )
    return sorted(rows, key=lambda r: (r["tag"].split(":")[0], r["created_at"]))
