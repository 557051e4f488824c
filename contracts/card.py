"""The model card: what the store records beside every model, written and read in this one typed place.

Training and `python -m training import` build a `ModelCard` and register `to_metadata()` (plain JSON types);
services, the benchmark, its peers and the tests read it back with `ModelCard.from_metadata`. No other module
reads a card's fields by string keys.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contracts.preprocessing import PREPROCESSING, Preprocessing
from contracts.tensors import TensorSpec


@dataclass(frozen=True)
class OodRecord:
    """The OOD score's threshold (validation's at `target_fpr` false alarms) and its evaluation (training/ood.py)."""

    threshold: float | None = None  # None: registered before OOD scores existed
    target_fpr: float | None = None
    evaluation: dict[str, Any] = field(default_factory=dict)  # the recipe, test false alarms, AUROC per OOD set

    def to_metadata(self) -> dict[str, Any]:
        return {**self.evaluation, "threshold": self.threshold, "target_fpr": self.target_fpr}

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> OodRecord:
        rest = {k: v for k, v in metadata.items() if k not in ("threshold", "target_fpr")}
        return cls(metadata.get("threshold"), metadata.get("target_fpr"), rest)


@dataclass(frozen=True)
class ModelCard:
    task: str  # "image-classification", "forecasting", "text-classification", "image-generation", "imported"
    family: str | None = None  # the net's name in models/ (None for an imported model)
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()  # recorded for imported models; a family's model names its `output`
    output: str = "output"
    labels: tuple[str, ...] = ()  # class names, by class id
    preprocessing: Preprocessing | None = None  # what the family's contract needs to prepare requests
    key_metric: str = ""
    example: dict[str, Any] = field(default_factory=dict)  # a request body its family route takes, from the test data
    metrics: dict[str, Any] = field(default_factory=dict)  # on the test split, from the exported graph
    baseline: dict[str, dict[str, Any]] = field(default_factory=dict)
    ood: OodRecord = field(default_factory=OodRecord)
    reference: dict[str, list[float]] = field(default_factory=dict)  # training inputs summarized (for drift)
    parity_max_abs_diff: float | None = None
    opset: int | None = None
    model_config: dict[str, Any] = field(default_factory=dict)  # the net's config (models/), as trained
    train_config: dict[str, Any] = field(default_factory=dict)
    val_loss: float | None = None
    sha256: dict[str, str] = field(default_factory=dict)  # every stored file
    git_commit: str = ""
    created_at: str = ""
    data_source: str = ""
    data_fingerprint: str = ""
    variant: str | None = None  # e.g. "int8"
    variant_of: str | None = None
    # What this model was fine-tuned from (`python -m training finetune`): base_model (its tag), its digest, the
    # layers kept and frozen, the schedule; empty for a model trained from its seed.
    parent: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # anything else recorded (history, timings, machine)

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> ModelCard:
        typed = ("inputs", "outputs", "labels", "preprocessing", "ood")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra", *typed}
        task = metadata["task"]
        prep = metadata.get("preprocessing")
        return cls(
            inputs=tuple(TensorSpec.from_record(r) for r in metadata.get("inputs", ())),
            outputs=tuple(TensorSpec.from_record(r) for r in metadata.get("outputs", ())),
            labels=tuple(metadata.get("labels") or ()),
            preprocessing=PREPROCESSING[task].from_metadata(prep) if prep and task in PREPROCESSING else None,
            ood=OodRecord.from_metadata(metadata.get("ood") or {}),
            extra={k: v for k, v in metadata.items() if k not in names and k not in typed},
            **{k: v for k, v in metadata.items() if k in names},
        )

    def to_metadata(self) -> dict[str, Any]:
        """Plain JSON types, without None (BentoML's metadata refuses it; an absent key reads the same)."""
        plain = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        plain.update(
            inputs=[spec.to_record() for spec in self.inputs],
            outputs=[spec.to_record() for spec in self.outputs],
            labels=list(self.labels),
            preprocessing=self.preprocessing.to_metadata() if self.preprocessing else None,
            ood=self.ood.to_metadata() if self.ood.threshold is not None else None,
        )
        return _without_none({**self.extra, **plain})

    @property
    def baselines_line(self) -> str:
        """The baselines' test scores on the key metric, for a person: "tfidf_logistic_regression 0.6936"."""
        scored = ((name, s.get(self.key_metric)) for name, s in self.baseline.items())
        return ", ".join(f"{name} {value:.4f}" for name, value in scored if isinstance(value, float))

    @property
    def classes(self) -> int:
        return len(self.labels)

    @property
    def cell(self) -> str | None:
        """A forecaster's recurrent cell ("lstm", "gru"): the name `/forecast` picks it by."""
        return self.model_config.get("cell")

    @property
    def digest(self) -> str:
        """One digest of every stored file (their recorded sha256), to pin a model as container images are pinned."""
        return digest_of(self.sha256)


def _without_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_without_none(v) for v in value if v is not None]
    return value


def digest_of(files: Mapping[str, str]) -> str:
    manifest = "".join(f"{name} {sha}\n" for name, sha in sorted(files.items()))
    return "sha256:" + hashlib.sha256(manifest.encode()).hexdigest()


def file_sha256(path: str | Path) -> str:
    """A file's sha256 (hex), read in 1 MiB chunks: what the card records and the service checks at load."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
