"""Each family's request -> model input -> answer, once, torch-free.

The services, the benchmark's peers and the tests all turn requests into ONNX feeds and outputs into
answers with these; only the engine and the HTTP around them differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
from PIL import Image
from pydantic import BaseModel, Field

from contracts.card import ModelCard
from contracts.preprocessing import (
    MAX_IMAGE_BYTES,
    MAX_IMAGE_PIXELS,
    ImagePreprocessing,
    SeriesScaling,
    TextEncoding,
)

Feeds = dict[str, np.ndarray]  # ONNX input name -> array, batch axis first
OOD_OUTPUT = "ood_score"  # every family's graph answers with this beside its prediction (models/ood.py)


# Every answer the platform gives says whether its input is like the training data (services/ood.py); the
# benchmark's peers, which compute no verdict, leave both null.
OodScore = Annotated[
    float | None, Field(description="how unlike the training data the input is (0: typical; higher: less like it)")
]
InDistribution = Annotated[bool | None, Field(description="ood_score is at or below the model's threshold")]


class ImageClassification(BaseModel):
    label: str
    class_id: int
    probabilities: dict[str, float]
    ood_score: OodScore = None
    in_distribution: InDistribution = None


class TextClassification(BaseModel):
    label: str
    probabilities: dict[str, float]
    ood_score: OodScore = None
    in_distribution: InDistribution = None


class Forecast(BaseModel):
    forecast: list[float]
    model: str = Field(description="the store tag of the model that answered")
    ood_score: OodScore = None
    in_distribution: InDistribution = None


@dataclass(frozen=True)
class Verdicts:
    """A batch's OOD scores (N,) and whether each is at or below the threshold (N,)."""

    scores: np.ndarray
    inside: np.ndarray

    def fields(self) -> list[dict[str, float | bool]]:
        return [
            {"ood_score": round(score, 4), "in_distribution": inside}
            for score, inside in zip(self.scores.tolist(), self.inside.tolist())
        ]


def judged(verdicts: Verdicts | None, n: int) -> list[dict[str, float | bool]]:
    return verdicts.fields() if verdicts is not None else [{}] * n


def softmax(logits: np.ndarray) -> np.ndarray:
    """(N, K) logits -> (N, K) probabilities, computed in float64."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def ranked(probabilities: np.ndarray, labels: tuple[str, ...]) -> list[tuple[int, dict[str, float]]]:
    """(N, K) probabilities -> per row (class id, {label: probability rounded to 6 places})."""
    classes = probabilities.argmax(axis=-1).tolist()
    return [(c, dict(zip(labels, row))) for c, row in zip(classes, np.round(probabilities, 6).tolist())]


@dataclass(frozen=True)
class ImageContract:
    prep: ImagePreprocessing
    labels: tuple[str, ...]

    @classmethod
    def from_card(cls, card: ModelCard) -> ImageContract:
        return cls(ImagePreprocessing(**card.preprocessing["image"]), card.labels)

    def feeds_from_files(
        self, files: list[bytes], max_pixels: int = MAX_IMAGE_PIXELS, max_bytes: int = MAX_IMAGE_BYTES
    ) -> Feeds:
        """Encoded PNG/JPEG files -> the model's input (raises InvalidInput naming what is wrong)."""
        return self.feeds_from_images(self.open_files(files, max_pixels, max_bytes))

    def open_files(self, files: list[bytes], max_pixels: int, max_bytes: int) -> list[Image.Image]:
        """Each file's header read and checked: cheap, and what decoding them would cost is known."""
        return [self.prep.open(f, max_pixels, max_bytes) for f in files]

    def feeds_from_images(self, images: list[Image.Image]) -> Feeds:
        if len(images) == 1:  # the common case, without a copy
            return {"pixels": self.prep.normalize(self.prep.decode(images[0])[None])}
        return {"pixels": self.prep.normalize(np.stack([self.prep.decode(image) for image in images]))}

    def feeds_from_pixels(self, pixels: np.ndarray) -> Feeds:
        """(N, H, W) grey values 0-255 at the model's size -> the model's input."""
        return {"pixels": self.prep.normalize(pixels)}

    def answers(self, probabilities: np.ndarray, verdicts: Verdicts | None = None) -> list[ImageClassification]:
        """(N, K) softmax probabilities (and their OOD verdicts) -> one answer per row."""
        return [
            ImageClassification(label=self.labels[i], class_id=i, probabilities=p, **v)
            for (i, p), v in zip(ranked(probabilities, self.labels), judged(verdicts, len(probabilities)))
        ]


@dataclass(frozen=True)
class ForecastContract:
    scaling: SeriesScaling
    window: int  # the last `window` values of a history are used
    min_history: int
    horizon: int  # the most weeks the net forecasts

    @classmethod
    def from_card(cls, card: ModelCard) -> ForecastContract:
        prep = card.preprocessing
        return cls(SeriesScaling(**prep["series"]), prep["window"], prep["min_history"], prep["horizon"])

    def recent(self, histories: np.ndarray) -> np.ndarray:
        """(N, T) raw histories -> (N, min(T, window)) float64: the part the net reads."""
        return np.asarray(histories, dtype=np.float64)[:, -self.window :]

    def feeds(self, recent: np.ndarray) -> Feeds:
        return {"history": self.scaling.encode(recent)}

    def forecasts(self, output: np.ndarray, recent: np.ndarray, horizon: int) -> np.ndarray:
        """(N, horizon) raw forecasts, from the net's (N, self.horizon) output and the histories it read."""
        return self.scaling.decode(np.asarray(output)[:, :horizon], recent)


@dataclass(frozen=True)
class TextContract:
    encoding: TextEncoding
    tokenizer_path: str
    labels: tuple[str, ...]

    @classmethod
    def from_card(cls, card: ModelCard, model_dir: str | Path) -> TextContract:
        prep = card.preprocessing
        return cls(TextEncoding(**prep["text"]), str(Path(model_dir) / prep["tokenizer"]), card.labels)

    def tokenizer(self):  # -> tokenizers.Tokenizer; loaded by whoever holds it, once
        from tokenizers import Tokenizer

        return Tokenizer.from_file(self.tokenizer_path)

    def feeds(self, token_ids: list[list[int]]) -> Feeds:
        """Token id lists -> input_ids and attention_mask, padded to the longest."""
        input_ids, attention_mask = self.encoding.pad(token_ids)
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def answers(self, probabilities: np.ndarray, verdicts: Verdicts | None = None) -> list[TextClassification]:
        """(N, K) softmax probabilities (and their OOD verdicts) -> one answer per row."""
        return [
            TextClassification(label=self.labels[i], probabilities=p, **v)
            for (i, p), v in zip(ranked(probabilities, self.labels), judged(verdicts, len(probabilities)))
        ]
