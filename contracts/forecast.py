"""Weekly histories -> a forecaster's input; its output -> the next weeks, in the series' own units."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, Field

from contracts.answers import InDistribution, OodScore, verdicts
from contracts.card import ModelCard
from contracts.preprocessing import ForecastPreprocessing
from contracts.tensors import Feeds


class Forecast(BaseModel):
    forecast: list[float]
    model: str = Field(description="the store tag of the model that answered")
    ood_score: OodScore = None
    in_distribution: InDistribution = None


@dataclass(frozen=True)
class ForecastContract:
    prep: ForecastPreprocessing
    output: str = "output"

    @classmethod
    def from_card(cls, card: ModelCard) -> ForecastContract:
        assert isinstance(card.preprocessing, ForecastPreprocessing), f"{card.task} is not a forecaster"
        return cls(card.preprocessing, card.output)

    @property
    def min_history(self) -> int:
        return self.prep.min_history

    @property
    def horizon(self) -> int:
        """The most weeks the net forecasts."""
        return self.prep.horizon

    def recent(self, histories: np.ndarray) -> np.ndarray:
        """(N, T) raw histories -> (N, min(T, window)) float64: the part the net reads."""
        return np.asarray(histories, dtype=np.float64)[:, -self.prep.window :]

    def feeds(self, histories: np.ndarray) -> Feeds:
        """(N, T) raw histories, T >= min_history -> the net's input."""
        return {"history": self.prep.series.encode(self.recent(histories))}

    def forecasts(self, outputs: Feeds, histories: np.ndarray, horizon: int) -> np.ndarray:
        """(N, horizon) raw forecasts, from the graph's outputs and the histories it read."""
        return self.prep.series.decode(np.asarray(outputs[self.output])[:, :horizon], self.recent(histories))

    def answers(
        self, outputs: Feeds, threshold: float | None, histories: np.ndarray, horizon: int, model: str
    ) -> list[Forecast]:
        """One answer per history: `horizon` weeks (rounded to 4 places), the model's tag, the OOD fields."""
        rows = np.round(self.forecasts(outputs, histories, horizon), 4).tolist()  # one call, not one per value
        return [Forecast(forecast=row, model=model, **v) for row, v in zip(rows, verdicts(outputs, threshold))]
