"""Texts -> the Transformer's token ids; its logits -> one classification per text."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from pydantic import BaseModel

from contracts.answers import InDistribution, OodScore, ranked, verdicts
from contracts.card import ModelCard
from contracts.preprocessing import TextEncoding, TextPreprocessing
from contracts.tensors import Feeds


class TextClassification(BaseModel):
    label: str
    probabilities: dict[str, float]
    ood_score: OodScore = None
    in_distribution: InDistribution = None


class TextContract:
    def __init__(self, prep: TextPreprocessing, model_dir: str | Path, labels: tuple[str, ...], output: str = "output"):
        self.prep, self.labels, self.output = prep, labels, output
        self.tokenizer_path = str(Path(model_dir) / prep.tokenizer)

    @classmethod
    def from_card(cls, card: ModelCard, model_dir: str | Path) -> TextContract:
        assert isinstance(card.preprocessing, TextPreprocessing), f"{card.task} is not a text model"
        return cls(card.preprocessing, model_dir, card.labels, card.output)

    @property
    def encoding(self) -> TextEncoding:
        return self.prep.text

    @cached_property
    def tokenizer(self):  # -> tokenizers.Tokenizer, loaded on first use, once
        from tokenizers import Tokenizer

        return Tokenizer.from_file(self.tokenizer_path)

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        return self.encoding.token_ids(self.tokenizer, texts)

    def feeds(self, texts: list[str]) -> Feeds:
        """Texts -> input_ids and attention_mask, padded to the longest."""
        return self.feeds_from_ids(self.token_ids(texts))

    def feeds_from_ids(self, token_ids: list[list[int]]) -> Feeds:
        input_ids, attention_mask = self.encoding.pad(token_ids)
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def answers(self, outputs: Feeds, threshold: float | None = None) -> list[TextClassification]:
        """The graph's outputs for N texts -> one answer per text (OOD fields when `threshold` is given)."""
        rows = ranked(outputs, self.output, self.labels)
        return [
            TextClassification(label=self.labels[i], probabilities=p, **v)
            for (i, p), v in zip(rows, verdicts(outputs, threshold))
        ]
