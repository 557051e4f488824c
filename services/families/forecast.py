"""Forecasting: weekly history in, `horizon` weeks out, from the LSTM or the GRU forecaster; and their pipelines."""

import math
from collections.abc import Iterable
from typing import Annotated, Any, Literal

import bentoml
import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, BeforeValidator, Field

from contracts.answers import OOD_OUTPUT
from contracts.card import ModelCard
from contracts.forecast import Forecast, ForecastContract
from contracts.summaries import history_summaries
from contracts.tensors import TensorSpec
from contracts.validators import whole_number
from services.compat.fastapi_routes import DirectRoute
from services.dataplane.models import pipeline_name
from services.edge.routes import ERROR_RESPONSES, JSON_ONLY, json_response
from services.edge.worker import worker
from services.errors import BadRequest
from services.families.base import VERDICT_TENSORS, FamilyPipeline, answering, register_family, verdict_tensors
from services.families.ood import ood_threshold
from services.ops.metrics import AnswerCounters
from services.ops.payloads import log_predictions
from services.runtime.runner import OnnxRunner
from services.settings import SETTINGS

MAX_ABS_VALUE = 1e9  # beyond this float32 arithmetic in the net loses the series


def history_values(history: np.ndarray) -> dict[str, list]:
    return {"history": history.tolist()}


# Two versions of a forecaster agree on a history when no forecast week differs by more than this (in the series'
# units: for CO2, half a ppm, about the forecasters' test MAE).
FORECAST_TOLERANCE = 0.5


@register_family("forecast", lambda s: (s.lstm_model, s.gru_model), console_route="/forecast")
class ForecastFamily:
    """One version of one forecaster (the LSTM's or the GRU's) and the contract stored with it."""

    def __init__(self, stored: bentoml.Model):
        self.runner = OnnxRunner(stored, SETTINGS)  # histories of one length run as one batch
        self.runners = (self.runner,)
        self.contract = ForecastContract.from_card(self.runner.card)
        threshold = ood_threshold(self.runner.name, self.runner.card)
        self.counters = AnswerCounters(self.runner.name, self.runner.version, threshold=threshold)

    def pipeline(self) -> "ForecastPipeline":
        return ForecastPipeline(self)

    async def forecast(self, histories: np.ndarray, horizon: int, record: bool = True) -> list[Forecast]:
        """(N, T) raw histories, T >= min_history -> each one's `horizon` weeks and OOD verdict."""
        outputs = await self.runner.submit(self.contract.feeds(histories))
        answers = self.contract.answers(outputs, self.counters.threshold, histories, horizon, self.runner.tag)
        if record:
            self.counters.count(outputs.get(OOD_OUTPUT))
            log_predictions(self.runner, histories, answers, history_summaries, history_values, forecast_summary)
        return answers

    @staticmethod
    def routes(cards: dict[str, ModelCard]) -> APIRouter:
        contracts = [ForecastContract.from_card(card) for card in cards.values()]
        models = {str(card.cell): name for name, card in cards.items()}
        min_history, horizon = max(c.min_history for c in contracts), min(c.horizon for c in contracts)
        return forecast_routes(min_history, horizon, models)


def forecast_summary(answer: Forecast) -> dict[str, Any]:
    """A forecast as logged: its weeks and the OOD verdict."""
    return answer.model_dump(exclude={"model"}, exclude_none=True)


class ForecastPipeline(FamilyPipeline):
    """`<model>-pipeline`: N weekly histories of one length (FP32, oldest first) in, the next weeks out."""

    family: ForecastFamily

    def __init__(self, family: ForecastFamily):
        contract = family.contract
        super().__init__(
            family,
            [TensorSpec("history", "FP32", (-1, -1))],
            [TensorSpec("forecast", "FP32", (-1, contract.horizon)), *VERDICT_TENSORS],
        )

    async def infer(self, tensors: dict[str, np.ndarray], record: bool = True) -> dict[str, np.ndarray]:
        history = tensors["history"]
        contract = self.family.contract
        if not 1 <= len(history) <= SETTINGS.max_batch_size:
            raise BadRequest(f"history must hold from 1 to {SETTINGS.max_batch_size} series; got {len(history)}")
        if not contract.min_history <= history.shape[1] <= SETTINGS.max_history:
            raise BadRequest(
                f"each history must have from {contract.min_history} to {SETTINGS.max_history} values; "
                f"got {history.shape[1]}"
            )
        if not np.isfinite(history).all() or np.abs(history).max() > MAX_ABS_VALUE:
            raise BadRequest(f"history values must be finite numbers within ±{MAX_ABS_VALUE:g}")
        return self.tensors(await self.family.forecast(history, contract.horizon, record))

    @staticmethod
    def tensors(answers: list[Forecast]) -> dict[str, np.ndarray]:
        """Answers as the pipeline's outputs."""
        return {"forecast": np.array([a.forecast for a in answers], dtype=np.float32), **verdict_tensors(answers)}

    def agreement(self, primary: dict[str, np.ndarray], shadow: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Per history, the largest difference between the two versions' forecasts (over the weeks both give), and
        whether it is within FORECAST_TOLERANCE."""
        weeks = min(primary["forecast"].shape[1], shadow["forecast"].shape[1])
        difference = np.abs(primary["forecast"][:, :weeks] - shadow["forecast"][:, :weeks]).max(axis=1)
        return difference <= FORECAST_TOLERANCE, difference


def better_model(request: Request, models: Iterable[str]) -> str:
    """The forecaster a request naming no cell gets: of those served, the better on validation data (never the test
    split), by the cards of their latest versions; while none is served, the first (whose routes say why)."""
    served = worker(request).models

    def val_loss(model: str) -> float:
        card = served.card(pipeline_name(model))
        loss = card.val_loss if card is not None else None
        return math.inf if loss is None else loss

    return min(models, key=val_loss)


def forecast_routes(min_history: int, max_horizon: int, models: dict[str, str]) -> APIRouter:
    """`models`: each cell's model name."""
    router = APIRouter(tags=["forecast"], dependencies=[JSON_ONLY], route_class=DirectRoute)
    Value = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=-MAX_ABS_VALUE, le=MAX_ABS_VALUE)]
    cells = tuple(models)

    class ForecastRequest(BaseModel):
        history: Annotated[
            list[Value],
            Field(
                min_length=min_history,
                max_length=SETTINGS.max_history,
                fail_fast=True,  # one error for a bad list, not one per item (error bodies stay small)
                description="past weekly values, oldest first",
            ),
        ]
        horizon: Annotated[
            int,
            Field(strict=True, ge=1, le=max_horizon, description="how many weeks to forecast"),
            BeforeValidator(whole_number),
        ] = max_horizon
        model: Annotated[Literal[cells] | None, Field(description="the cell; default: the better on validation")] = None  # type: ignore[valid-type]

    @router.post("/forecast", response_model=Forecast, responses=ERROR_RESPONSES)
    async def forecast(request: Request, body: ForecastRequest) -> Response:
        """Forecast the next `horizon` weeks of a weekly series from its history."""
        choice = answering(request, models[body.model] if body.model else better_model(request, models.values()))
        pipeline: ForecastPipeline = choice.primary
        history = np.asarray([body.history])
        with choice.answering():
            answers = await pipeline.family.forecast(history, body.horizon)
        choice.mirror(lambda: {"history": history.astype(np.float32)}, lambda: pipeline.tensors(answers))
        return json_response(answers[0], choice.version_header)

    return router
