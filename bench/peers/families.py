"""What both peers share: the platform's registered models and its pre- and post-processing.

The benchmark resolves the models in the BentoML store (`model_files`) and writes a spec file
(`write_spec`); a peer reads it (`load_families`) without BentoML, so the peers run in their own venv.
Requests are turned into model inputs and outputs into answers by each family's contract (`feeds`,
`answers`), as in the platform: only the engine differs. The benchmark's in-process engines take their
inputs from the same classes.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from contracts.card import ModelCard
from contracts.forecast import ForecastContract
from contracts.image import ImageContract
from contracts.text import TextContract

SPEC_ENV = "MODELROAD_PEER_SPEC"
Inputs = dict[str, np.ndarray]


@dataclass(frozen=True)
class ModelFiles:
    metadata: dict[str, Any]
    onnx: str
    checkpoint: str  # best.pt of the training run: PyTorch eager needs the weights before ONNX folded them
    tokenizer: str | None = None


def model_files() -> dict[str, ModelFiles]:
    """Where the platform's default models lie, for each family the peers serve (the three classic ones: the
    generator has a benchmark of its own, bench/generation.py). Needs BentoML: the benchmark's venv."""
    import bentoml

    from services.families.base import family_tags
    from services.settings import SETTINGS

    files = {}
    for family in FAMILIES:
        stored = bentoml.models.get(family_tags(SETTINGS)[family][-1])  # the forecast family's last is the GRU
        card = ModelCard.from_metadata(stored.info.metadata)
        tokenizer = getattr(card.preprocessing, "tokenizer", None)
        checkpoint = Path(card.train_config["out_dir"]) / card.train_config["task"] / "best.pt"
        files[family] = ModelFiles(
            stored.info.metadata,
            stored.path_of("model.onnx"),
            str(checkpoint),
            stored.path_of(tokenizer) if tokenizer else None,
        )
    return files


def write_spec(path: Path) -> None:
    """Record `model_files()` for the peers."""
    path.write_text(json.dumps({family: asdict(files) for family, files in model_files().items()}, default=str))


# The request bodies both peers take, as the platform's API defines them.
class ForecastRequest(BaseModel):
    history: list[float]
    horizon: int = 52


class TextRequest(BaseModel):
    text: str


class ImageFamily:
    def __init__(self, files: ModelFiles):
        self.files = files
        self.contract = ImageContract.from_card(ModelCard.from_metadata(files.metadata))

    def inputs(self, image: bytes) -> Inputs:
        return self.contract.feeds_from_files([image])

    def stack(self, items: list[Inputs]) -> Inputs:
        return {"pixels": np.concatenate([item["pixels"] for item in items])}

    def answer(self, item: Inputs, output: np.ndarray) -> dict[str, Any]:
        return self.contract.answers({self.contract.output: output[None]})[0].model_dump()


class ForecastFamily:
    def __init__(self, files: ModelFiles):
        self.files = files
        self.contract = ForecastContract.from_card(ModelCard.from_metadata(files.metadata))

    def inputs(self, history: list[float]) -> Inputs:
        histories = np.asarray([history])
        return {**self.contract.feeds(histories), "raw": histories}

    def stack(self, items: list[Inputs]) -> Inputs:
        return {"history": np.concatenate([item["history"] for item in items])}  # the bench sends one length

    def answer(self, item: Inputs, output: np.ndarray, horizon: int) -> dict[str, Any]:
        outputs = {self.contract.output: output[None]}
        return self.contract.answers(outputs, None, item["raw"], horizon, "peer")[0].model_dump()


class TextFamily:
    def __init__(self, files: ModelFiles):
        self.files = files
        assert files.tokenizer, "a text model stores its tokenizer"
        card = ModelCard.from_metadata(files.metadata)
        self.contract = TextContract.from_card(card, Path(files.tokenizer).parent)

    def inputs(self, text: str) -> Inputs:
        (ids,) = self.contract.token_ids([text])
        return {"ids": np.asarray(ids, dtype=np.int64)}

    def stack(self, items: list[Inputs]) -> Inputs:
        return self.contract.feeds_from_ids([item["ids"].tolist() for item in items])  # padded to the longest

    def answer(self, item: Inputs, output: np.ndarray) -> dict[str, Any]:
        return self.contract.answers({self.contract.output: output[None]})[0].model_dump()


FAMILIES = {"image": ImageFamily, "forecast": ForecastFamily, "text": TextFamily}


def load_families() -> tuple[ImageFamily, ForecastFamily, TextFamily]:
    spec = json.loads(Path(os.environ[SPEC_ENV]).read_text())
    return tuple(kind(ModelFiles(**spec[family])) for family, kind in FAMILIES.items())
