"""The model card: what the store records beside every model, read in one typed place.

Training writes it as the model's BentoML metadata (plain JSON types); services, the benchmark, its peers
and the tests read it back with `ModelCard.from_metadata` instead of indexing an untyped dict.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class InputRecord:
    """One ONNX input as training recorded it: numpy dtype name, dims (a str names a dynamic axis)."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]


@dataclass(frozen=True)
class ModelCard:
    task: str  # "image-classification", "forecasting", "text-classification", "imported"
    family: str | None = None  # the net's name in models/ (None for an imported model)
    inputs: tuple[InputRecord, ...] = ()
    outputs: tuple[InputRecord, ...] = ()  # recorded for imported models; a family's model names its `output`
    output: str = "output"
    labels: tuple[str, ...] = ()  # class names, by class id
    preprocessing: dict[str, Any] = field(default_factory=dict)  # parameters the family's contract takes
    key_metric: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)  # on the test split, from the exported graph
    baseline: dict[str, dict[str, Any]] = field(default_factory=dict)
    ood: dict[str, Any] = field(default_factory=dict)  # the OOD score's threshold and evaluation (training/ood.py)
    reference: dict[str, list[float]] = field(default_factory=dict)  # training inputs summarized (for drift)
    parity_max_abs_diff: float | None = None
    opset: int | None = None
    model_config: dict[str, Any] = field(default_factory=dict)
    train_config: dict[str, Any] = field(default_factory=dict)
    val_loss: float | None = None
    sha256: dict[str, str] = field(default_factory=dict)  # every stored file
    git_commit: str = ""
    created_at: str = ""
    data_source: str = ""
    data_fingerprint: str = ""
    variant: str | None = None  # e.g. "int8"
    variant_of: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # anything else recorded (history, timings)

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> ModelCard:
        special = ("inputs", "outputs", "labels")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra", *special}

        def records(key: str) -> tuple[InputRecord, ...]:
            return tuple(InputRecord(i["name"], i["dtype"], tuple(i["shape"])) for i in metadata.get(key, ()))

        return cls(
            inputs=records("inputs"),
            outputs=records("outputs"),
            labels=tuple(metadata.get("labels") or ()),
            extra={k: v for k, v in metadata.items() if k not in names and k not in special},
            **{k: v for k, v in metadata.items() if k in names},
        )

    @property
    def classes(self) -> int:
        return len(self.labels)

    @property
    def digest(self) -> str:
        """One digest of every stored file (their recorded sha256), to pin a model as container images are pinned."""
        return digest_of(self.sha256)


def digest_of(files: Mapping[str, str]) -> str:
    manifest = "".join(f"{name} {sha}\n" for name, sha in sorted(files.items()))
    return "sha256:" + hashlib.sha256(manifest.encode()).hexdigest()
