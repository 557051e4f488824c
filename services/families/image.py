"""Image classification: an uploaded image file, or a JSON batch of grey pixel arrays; and its pipeline."""

from typing import Annotated

import bentoml
import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from contracts.answers import OOD_OUTPUT, classes_derived
from contracts.card import ModelCard
from contracts.image import ImageClassification, ImageContract
from contracts.summaries import array_summaries
from contracts.tensors import Feeds, TensorSpec
from services.compat.fastapi_routes import DirectRoute, media_types
from services.compat.multipart_upload import uploaded_file
from services.edge.routes import ERROR_RESPONSES, JSON_ONLY, json_response
from services.errors import BadRequest
from services.families.base import (
    VERDICT_TENSORS,
    ClassifierPipeline,
    answering_named,
    model_field,
    prepared,
    register_family,
    verdict_tensors,
)
from services.families.ood import ood_threshold
from services.ops.metrics import AnswerCounters
from services.ops.payloads import answer_summary, log_predictions
from services.runtime.runner import OnnxRunner
from services.settings import SETTINGS

UPLOAD_FIELD = "image"
MODEL_FIELD = "model"
INLINE_PIXELS = 512 * 512  # declared pixels of a request decoded on the event loop (~1 ms); more go to a thread


def image_values(image: np.ndarray) -> dict[str, list]:
    return {"pixels": image.tolist()}


@register_family("image", lambda s: (s.image_model,), console_route="/classify_image", task="image-classification")
class ImageFamily:
    """One version of the image classifier."""

    def __init__(self, stored: bentoml.Model):
        card = ModelCard.from_metadata(stored.info.metadata)
        self.contract = ImageContract.from_card(card)
        self.runner = OnnxRunner(stored, SETTINGS, derive=classes_derived(self.contract.output))
        self.runners = (self.runner,)
        threshold = ood_threshold(self.runner.name, card)
        self.counters = AnswerCounters(self.runner.name, self.runner.version, card.labels, threshold)

    def pipeline(self) -> "ImagePipeline":
        return ImagePipeline(self)

    async def classify(self, feeds: Feeds, record: bool = True) -> list[ImageClassification]:
        outputs = await self.runner.submit(feeds)
        answers = self.contract.answers(outputs, self.counters.threshold)
        if record:
            self.counters.count(outputs.get(OOD_OUTPUT), [a.label for a in answers])
            images = feeds[self.runner.inputs[0].name]
            log_predictions(self.runner, images, answers, array_summaries, image_values, answer_summary)
        return answers

    async def feeds_from_files(self, files: list[bytes]) -> Feeds:
        """Headers checked here; pixels decoded here when small, in the preparing threads when not."""
        images = self.contract.open_files(files, SETTINGS.max_image_pixels, SETTINGS.max_image_bytes)
        declared = sum(image.width * image.height for image in images)
        return await prepared(self.contract.feeds, images, heavy=declared > INLINE_PIXELS)

    def feeds_from_pixels(self, pixels: np.ndarray) -> Feeds:
        prep = self.contract.prep
        if pixels.ndim != 3 or pixels.shape[1:] != (prep.height, prep.width) or len(pixels) == 0:
            raise BadRequest(
                f"pixels must have shape (N, {prep.height}, {prep.width}) with N >= 1; got {list(pixels.shape)}"
            )
        if not np.isfinite(pixels).all() or pixels.min() < 0 or pixels.max() > 255:
            raise BadRequest("pixel values must be finite numbers from 0 to 255")
        return self.contract.feeds_from_pixels(pixels)

    @staticmethod
    def routes(cards: dict[str, ModelCard]) -> APIRouter:
        """The family's model first, then the other image classifiers served at start (a request's `model`)."""
        prep = ImageContract.from_card(next(iter(cards.values()))).prep
        return image_routes(list(cards), prep.height, prep.width)


class ImagePipeline(ClassifierPipeline):
    """`<model>-pipeline`: encoded image files (BYTES) or grey pixels (FP32, 0-255) in; labels and probabilities out."""

    family: ImageFamily

    def __init__(self, family: ImageFamily):
        prep = family.contract.prep
        super().__init__(
            family,
            [TensorSpec("image", "BYTES", (-1,)), TensorSpec("pixels", "FP32", (-1, prep.height, prep.width))],
            [
                TensorSpec("label", "BYTES", (-1,)),
                TensorSpec("class_id", "INT64", (-1,)),
                TensorSpec("probabilities", "FP32", (-1, len(family.contract.labels))),
                *VERDICT_TENSORS,
            ],
            required=(),  # one of the two
        )

    async def infer(self, tensors: dict[str, np.ndarray], record: bool = True) -> dict[str, np.ndarray]:
        if len(tensors) != 1:
            raise BadRequest(f"{self.name} takes one input: `image` (encoded files) or `pixels`; got {sorted(tensors)}")
        ((name, array),) = tensors.items()
        if not 1 <= len(array) <= SETTINGS.max_batch_size:
            raise BadRequest(f"{name} must hold from 1 to {SETTINGS.max_batch_size} images; got {len(array)}")
        if name == "image":
            feeds = await self.family.feeds_from_files(list(array))
        else:
            feeds = self.family.feeds_from_pixels(array)
        return self.tensors(await self.family.classify(feeds, record))

    def tensors(self, answers: list[ImageClassification]) -> dict[str, np.ndarray]:
        """Answers as the pipeline's outputs."""
        labels = self.family.contract.labels
        return {
            "label": np.array([a.label.encode() for a in answers], dtype=np.object_),
            "class_id": np.array([a.class_id for a in answers], dtype=np.int64),
            "probabilities": np.array([[a.probabilities[k] for k in labels] for a in answers], dtype=np.float32),
            **verdict_tensors(answers),
        }


def image_routes(models: list[str], height: int, width: int) -> APIRouter:
    """`models`: the family's own first (the default), then the other image classifiers served at start."""
    model = models[0]
    router = APIRouter(tags=["image"], route_class=DirectRoute)
    Grey = Annotated[float, Field(strict=True, ge=0, le=255, allow_inf_nan=False)]  # strict: true/false are not grey
    # fail_fast: one error for a bad list, not one per item (error bodies stay small)
    Row = Annotated[list[Grey], Field(min_length=width, max_length=width, fail_fast=True)]
    Image = Annotated[list[Row], Field(min_length=height, max_length=height, fail_fast=True)]

    class Pixels(BaseModel):
        pixels: Annotated[
            list[Image],
            Field(
                min_length=1,
                max_length=SETTINGS.max_batch_size,
                fail_fast=True,
                description=f"images as (N, {height}, {width}) grey values 0-255 at the model's size",
            ),
        ]
        model: str | None = model_field(models)

    upload_body = {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": [UPLOAD_FIELD],
                        "additionalProperties": False,
                        "properties": {
                            UPLOAD_FIELD: {
                                "type": "string",
                                "format": "binary",
                                "minLength": 1,
                                "description": "a PNG or JPEG file",
                            },
                            MODEL_FIELD: {
                                "type": "string",
                                "enum": models,
                                "description": f"the model that answers (default: {model}); any served image "
                                "classifier",
                            },
                        },
                    }
                }
            },
        }
    }

    @router.post(
        "/classify_image",
        response_model=ImageClassification,
        responses=ERROR_RESPONSES,
        openapi_extra=upload_body,
        dependencies=[media_types("multipart/form-data")],
    )
    async def classify_image(request: Request) -> Response:
        """Classify one uploaded PNG/JPEG (multipart field `image`) of any size or colour; the text field `model`
        names another image classifier to answer."""
        body, content_type = await request.body(), request.headers["content-type"]
        file, fields = uploaded_file(body, content_type, UPLOAD_FIELD, (MODEL_FIELD,))
        choice = answering_named(request, model, fields.get(MODEL_FIELD), ImagePipeline)
        pipeline: ImagePipeline = choice.primary
        with choice.answering():
            answers = await pipeline.family.classify(await pipeline.family.feeds_from_files([file]))
        choice.mirror(lambda: {"image": np.array([file], dtype=np.object_)}, lambda: pipeline.tensors(answers))
        return json_response(answers[0], choice.version_header)

    @router.post(
        "/classify_pixels",
        response_model=list[ImageClassification],
        responses=ERROR_RESPONSES,
        dependencies=[JSON_ONLY],
    )
    async def classify_pixels(request: Request, body: Pixels) -> Response:
        """Classify a JSON batch of grey-value images already at the model's size."""
        choice = answering_named(request, model, body.model, ImagePipeline)
        pipeline: ImagePipeline = choice.primary
        pixels = np.asarray(body.pixels, dtype=np.float64)
        with choice.answering():
            answers = await pipeline.family.classify(pipeline.family.feeds_from_pixels(pixels))
        choice.mirror(lambda: {"pixels": pixels.astype(np.float32)}, lambda: pipeline.tensors(answers))
        return json_response(answers, choice.version_header)

    return router
