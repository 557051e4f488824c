"""Image classification API: an uploaded image file, or a JSON batch of pixel arrays."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, ClassVar

import bentoml
import numpy as np
from pydantic import BaseModel, Field

from contracts.preprocessing import ImagePreprocessing, InvalidInput
from services.base import ModelAPI, classify_rows, invalid
from services.runner import OnnxRunner, verified_model
from services.settings import SETTINGS


class ImageClassification(BaseModel):
    label: str
    class_id: int
    probabilities: dict[str, float]


def classify_batch(runner: OnnxRunner, payloads: Sequence[np.ndarray]) -> list[list[ImageClassification]]:
    """payloads: normalized (n_i, C, H, W) float32 arrays -> one list of classifications per payload."""
    labels: list[str] = runner.metadata["labels"]
    logits = runner.run({"pixels": np.concatenate(payloads)})
    return [
        [ImageClassification(label=labels[i], class_id=i, probabilities=p) for i, p in answers]
        for answers in classify_rows(runner, logits, [len(payload) for payload in payloads])
    ]


class ImageAPI(ModelAPI):
    image_model = verified_model(SETTINGS.image_model)
    uploads: ClassVar[dict[str, str]] = {"/classify_image": "classify_upload"}

    def __init__(self) -> None:
        super().__init__()
        stored = self.image_model  # the class-scope BentoModel resolves to the stored model here
        self.image_prep = ImagePreprocessing(**stored.info.metadata["preprocessing"]["image"])
        self.image_runner = OnnxRunner(stored, SETTINGS, classify_batch)
        prep = self.image_prep
        self.add_runner(self.image_runner, np.zeros((1, prep.channels, prep.height, prep.width), np.float32))

    async def classify_upload(self, data: bytes) -> ImageClassification:
        """One PNG/JPEG file's bytes -> its classification."""
        try:
            pixels = self.image_prep.pixels_from_bytes(data, SETTINGS.max_image_pixels)
        except InvalidInput as exc:
            raise invalid(str(exc)) from None
        (answer,) = await self.image_runner.submit(self.image_prep.normalize(pixels[None]))
        return answer

    @bentoml.api(route="/classify_image")
    async def classify_image(
        self, image: Annotated[Path, Field(description="a PNG or JPEG file (multipart field `image`)")]
    ) -> ImageClassification:
        """Classify one uploaded PNG/JPEG (multipart field `image`) of any size or colour."""
        return await self.classify_upload(image.read_bytes())

    @bentoml.api(route="/classify_pixels")
    async def classify_pixels(
        self,
        pixels: Annotated[
            list[list[list[float]]],
            Field(description="images as (N, height, width) grey values 0-255 at the model's size (28x28)"),
        ],
    ) -> list[ImageClassification]:
        """Classify a JSON batch of grey-value images already at the model's size."""
        prep = self.image_prep
        try:
            array = np.asarray(pixels, dtype=np.float64)
        except ValueError:  # ragged nesting
            raise invalid(f"pixels must have shape (N, {prep.height}, {prep.width}); the rows differ in length") from None
        if array.ndim != 3 or array.shape[0] == 0 or array.shape[1:] != (prep.height, prep.width):
            raise invalid(f"pixels must have shape (N, {prep.height}, {prep.width}) with N >= 1; got {list(array.shape)}")
        if len(array) > SETTINGS.max_batch_size:
            raise invalid(f"at most {SETTINGS.max_batch_size} images per request; got {len(array)}")
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 255:
            raise invalid("pixel values must be finite numbers from 0 to 255")
        return await self.image_runner.submit(prep.normalize(array))
