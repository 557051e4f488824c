"""Text classification: one text, or a batch of texts, to WordNet noun categories; and its pipeline."""

from typing import Annotated

import bentoml
import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from contracts.answers import OOD_OUTPUT, classes_derived
from contracts.card import ModelCard
from contracts.summaries import text_summaries
from contracts.tensors import TensorSpec
from contracts.text import TextClassification, TextContract
from services.compat.fastapi_routes import DirectRoute
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
from services.runtime.runner import OnnxRunner, padded_calls
from services.settings import SETTINGS

INLINE_CHARS = 4_000  # characters of a request tokenized on the event loop (~1 ms); more go to a thread


def text_values(text: str) -> dict[str, str]:
    return {"text": text}


@register_family("text", lambda s: (s.text_model,), console_route="/classify_text", task="text-classification")
class TextFamily:
    """One version of the text classifier."""

    def __init__(self, stored: bentoml.Model):
        card = ModelCard.from_metadata(stored.info.metadata)
        self.contract = TextContract.from_card(card, stored.path)
        self.contract.tokenizer  # noqa: B018 - loaded now, not on the first request
        # Requests of other lengths share a batch, padded to its longest text: the attention mask ignores padding.
        pad = padded_calls({"input_ids": self.contract.encoding.pad_id, "attention_mask": 0})
        self.runner = OnnxRunner(stored, SETTINGS, pad, derive=classes_derived(self.contract.output))
        self.runners = (self.runner,)
        threshold = ood_threshold(self.runner.name, card)
        self.counters = AnswerCounters(self.runner.name, self.runner.version, card.labels, threshold)

    def pipeline(self) -> "TextPipeline":
        return TextPipeline(self)

    async def classify(self, texts: list[str], record: bool = True) -> list[TextClassification]:
        heavy = sum(map(len, texts)) > INLINE_CHARS
        feeds = await prepared(self.contract.feeds, texts, heavy=heavy)
        outputs = await self.runner.submit(feeds)
        answers = self.contract.answers(outputs, self.counters.threshold)
        if record:
            self.counters.count(outputs.get(OOD_OUTPUT), [a.label for a in answers])
            log_predictions(self.runner, texts, answers, text_summaries, text_values, answer_summary)
        return answers

    @staticmethod
    def routes(cards: dict[str, ModelCard]) -> APIRouter:
        """The family's model first, then the other text classifiers served at start (a request's `model`)."""
        return text_routes(list(cards))


class TextPipeline(ClassifierPipeline):
    """`<model>-pipeline`: texts (BYTES, UTF-8) in; labels and probabilities out."""

    family: TextFamily

    def __init__(self, family: TextFamily):
        super().__init__(
            family,
            [TensorSpec("text", "BYTES", (-1,))],
            [
                TensorSpec("label", "BYTES", (-1,)),
                TensorSpec("probabilities", "FP32", (-1, len(family.contract.labels))),
                *VERDICT_TENSORS,
            ],
        )

    async def infer(self, tensors: dict[str, np.ndarray], record: bool = True) -> dict[str, np.ndarray]:
        array = tensors["text"]
        if not 1 <= len(array) <= SETTINGS.max_batch_size:
            raise BadRequest(f"text must hold from 1 to {SETTINGS.max_batch_size} texts; got {len(array)}")
        texts = []
        for i, raw in enumerate(array):
            try:
                text = raw.decode()
            except UnicodeDecodeError:
                raise BadRequest(f"text {i} is not UTF-8") from None
            if not text.strip() or len(text) > SETTINGS.max_text_chars:
                raise BadRequest(f"text {i} must have from 1 to {SETTINGS.max_text_chars} characters, not only spaces")
            texts.append(text)
        return self.tensors(await self.family.classify(texts, record))

    def tensors(self, answers: list[TextClassification]) -> dict[str, np.ndarray]:
        """Answers as the pipeline's outputs."""
        labels = self.family.contract.labels
        return {
            "label": np.array([a.label.encode() for a in answers], dtype=np.object_),
            "probabilities": np.array([[a.probabilities[k] for k in labels] for a in answers], dtype=np.float32),
            **verdict_tensors(answers),
        }


Text = Annotated[
    str,
    Field(
        strict=True,
        min_length=1,
        max_length=SETTINGS.max_text_chars,
        pattern=r"\S",
        description="a description of a thing, e.g. a dictionary gloss (not only spaces)",
    ),
]


def text_routes(models: list[str]) -> APIRouter:
    """`models`: the family's own first (the default), then the other text classifiers served at start."""
    model = models[0]
    router = APIRouter(tags=["text"], dependencies=[JSON_ONLY], route_class=DirectRoute)

    class OneText(BaseModel):
        text: Text
        model: str | None = model_field(models)

    class Texts(BaseModel):
        texts: Annotated[
            list[Text],
            Field(min_length=1, max_length=SETTINGS.max_batch_size, fail_fast=True, description="classified in order"),
        ]
        model: str | None = model_field(models)

    async def classify(
        request: Request, texts: list[str], asked: str | None
    ) -> tuple[list[TextClassification], dict[str, str]]:
        """The answers of the version the policy chooses (a shadow gets a copy), and the header naming it."""
        choice = answering_named(request, model, asked, TextPipeline)
        pipeline: TextPipeline = choice.primary
        with choice.answering():
            answers = await pipeline.family.classify(texts)
        choice.mirror(
            lambda: {"text": np.array([t.encode() for t in texts], dtype=np.object_)}, lambda: pipeline.tensors(answers)
        )
        return answers, choice.version_header

    @router.post("/classify_text", response_model=TextClassification, responses=ERROR_RESPONSES)
    async def classify_text(request: Request, body: OneText) -> Response:
        """Classify one text into a WordNet noun category (animal, food, person, ...)."""
        (answer,), version = await classify(request, [body.text], body.model)
        return json_response(answer, version)

    @router.post("/classify_texts", response_model=list[TextClassification], responses=ERROR_RESPONSES)
    async def classify_texts(request: Request, body: Texts) -> Response:
        """Classify a batch of texts; the answers come in the same order."""
        return json_response(*await classify(request, body.texts, body.model))

    return router
