"""Images: encoded files or grey pixels -> the CNN's input; its logits -> one classification per image."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from pydantic import BaseModel

from contracts.answers import InDistribution, OodScore, ranked, verdicts
from contracts.card import ModelCard
from contracts.preprocessing import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, ImagePreprocessing
from contracts.tensors import Feeds


class ImageClassification(BaseModel):
    label: str
    class_id: int
    probabilities: dict[str, float]
    ood_score: OodScore = None
    in_distribution: InDistribution = None


@dataclass(frozen=True)
class ImageContract:
    prep: ImagePreprocessing
    labels: tuple[str, ...]
    output: str = "output"

    @classmethod
    def from_card(cls, card: ModelCard) -> ImageContract:
        assert isinstance(card.preprocessing, ImagePreprocessing), f"{card.task} is not an image model"
        return cls(card.preprocessing, card.labels, card.output)

    def open_files(
        self, files: list[bytes], max_pixels: int = MAX_IMAGE_PIXELS, max_bytes: int = MAX_IMAGE_BYTES
    ) -> list[Image.Image]:
        """Each file's header read and checked (raises InvalidInput): cheap, and what decoding costs is known."""
        return [self.prep.open(f, max_pixels, max_bytes) for f in files]

    def feeds(self, images: list[Image.Image]) -> Feeds:
        """Opened images, any size or colour -> the model's input."""
        if len(images) == 1:  # the common case, without a copy
            return {"pixels": self.prep.normalize(self.prep.decode(images[0])[None])}
        return {"pixels": self.prep.normalize(np.stack([self.prep.decode(image) for image in images]))}

    def feeds_from_files(self, files: list[bytes]) -> Feeds:
        """Encoded PNG/JPEG files -> the model's input (raises InvalidInput naming what is wrong)."""
        return self.feeds(self.open_files(files))

    def feeds_from_pixels(self, pixels: np.ndarray) -> Feeds:
        """(N, H, W) grey values 0-255 at the model's size -> the model's input."""
        return {"pixels": self.prep.normalize(pixels)}

    def answers(self, outputs: Feeds, threshold: float | None = None) -> list[ImageClassification]:
        """The graph's outputs for N images -> one answer per image (OOD fields when `threshold` is given)."""
        rows = ranked(outputs, self.output, self.labels)
        return [
            ImageClassification(label=self.labels[i], class_id=i, probabilities=p, **v)
            for (i, p), v in zip(rows, verdicts(outputs, threshold))
        ]
