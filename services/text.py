"""Text classification API: one text, or a batch of texts, to WordNet noun categories."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import bentoml
from pydantic import BaseModel, Field
from tokenizers import Tokenizer

from contracts.preprocessing import TextEncoding
from services.base import ModelAPI, classify_rows, invalid
from services.runner import OnnxRunner, verified_model
from services.settings import SETTINGS


class TextClassification(BaseModel):
    label: str
    probabilities: dict[str, float]


def classify_token_batch(runner: OnnxRunner, payloads: Sequence[list[list[int]]]) -> list[list[TextClassification]]:
    """payloads: each request's token id lists -> one list of classifications per request.

    All requests in the batch are padded together to the batch's longest text.
    """
    labels: list[str] = runner.metadata["labels"]
    encoding = TextEncoding(**runner.metadata["preprocessing"]["text"])
    input_ids, attention_mask = encoding.pad([ids for payload in payloads for ids in payload])
    logits = runner.run({"input_ids": input_ids, "attention_mask": attention_mask})
    return [
        [TextClassification(label=labels[i], probabilities=p) for i, p in answers]
        for answers in classify_rows(runner, logits, [len(payload) for payload in payloads])
    ]


class TextAPI(ModelAPI):
    text_model = verified_model(SETTINGS.text_model)

    def __init__(self) -> None:
        super().__init__()
        stored = self.text_model
        preprocessing = stored.info.metadata["preprocessing"]
        self.tokenizer = Tokenizer.from_file(stored.path_of(preprocessing["tokenizer"]))
        self.text_encoding = TextEncoding(**preprocessing["text"])
        self.text_runner = OnnxRunner(stored, SETTINGS, classify_token_batch)
        self.add_runner(self.text_runner, self.text_encoding.token_ids(self.tokenizer, ["a warm-up text"]))

    def _token_ids(self, texts: list[str]) -> list[list[int]]:
        for i, text in enumerate(texts):
            if not text.strip():
                raise invalid(f"text {i} is empty: send at least one word")
            if len(text) > SETTINGS.max_text_chars:
                raise invalid(f"text {i} has {len(text)} characters; at most {SETTINGS.max_text_chars} are allowed")
        return self.text_encoding.token_ids(self.tokenizer, texts)

    @bentoml.api(route="/classify_text")
    async def classify_text(
        self, text: Annotated[str, Field(strict=True, description="a description of a thing, e.g. a dictionary gloss")]
    ) -> TextClassification:
        """Classify one text into a WordNet noun category (animal, food, person, ...)."""
        (answer,) = await self.text_runner.submit(self._token_ids([text]))
        return answer

    @bentoml.api(route="/classify_texts")
    async def classify_texts(
        self, texts: Annotated[list[Annotated[str, Field(strict=True)]], Field(description="texts, classified in order")]
    ) -> list[TextClassification]:
        """Classify a batch of texts; the answers come in the same order."""
        if not 1 <= len(texts) <= SETTINGS.max_batch_size:
            raise invalid(f"texts must hold from 1 to {SETTINGS.max_batch_size} texts; got {len(texts)}")
        return await self.text_runner.submit(self._token_ids(texts))
