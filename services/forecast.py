"""Forecasting: weekly history in, `horizon` weeks out, from the LSTM or the GRU forecaster; and their pipelines."""

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
from services.app import ERROR_RESPONSES, JSON_ONLY, json_response
from services.errors import BadRequest
from services.family import VERDICT_TENSORS, pipeline_name, serving, verdict_tensors
from services.inference import InferenceModel
from services.metrics import AnswerCounters
from services.ood import ood_threshold
from services.payloads import log_predictions
from services.runner import OnnxRunner
from services.settings import SETTINGS

MAX_ABS_VALUE = 1e9  # beyond this float32 arithmetic in the net loses the series


def history_values(history: np.ndarray) -> dict[str, list]:
    return {"history": history.tolist()}


class Forecaster:
    """One registered forecaster and the contract stored with it."""

    def __init__(self, stored: bentoml.Model):
        self.runner = OnnxRunner(stored, SETTINGS)  # histories of one length run as one batch
        self.cell = str(self.runner.card.cell)
        self.contract = ForecastContract.from_card(self.runner.card)
        self.counters = AnswerCounters(self.runner.name, threshold=ood_threshold(self.runner.name, self.runner.card))

    async def forecast(self, histories: np.ndarray, horizon: int) -> list[Forecast]:
        """(N, T) raw histories, T >= min_history -> each one's `horizon` weeks and OOD verdict."""
        outputs = await self.runner.submit(self.contract.feeds(histories))
        answers = self.contract.answers(outputs, self.counters.threshold, histories, horizon, self.runner.tag)
        self.counters.count(outputs.get(OOD_OUTPUT))
        log_predictions(self.runner, histories, answers, history_summaries, history_values, forecast_summary)
        return answers


def forecast_summary(answer: Forecast) -> dict[str, Any]:
    """A forecast as logged: its weeks and the OOD verdict."""
    return answer.model_dump(exclude={"model"}, exclude_none=True)


class ForecastFamily:
    def __init__(self, *stored: bentoml.Model):
        forecasters = [Forecaster(s) for s in stored]
        self.forecasters = {f.cell: f for f in forecasters}
        self.runners = [f.runner for f in forecasters]
        # The default is the better one on validation data (never the test split).
        self.default = min(forecasters, key=lambda f: f.runner.card.val_loss)

    def pipelines(self) -> list[InferenceModel]:
        return [ForecastPipeline(f) for f in self.forecasters.values()]

    @staticmethod
    def routes(cards: list[ModelCard]) -> APIRouter:
        contracts = [ForecastContract.from_card(card) for card in cards]
        cells = tuple(str(card.cell) for card in cards)
        return forecast_routes(max(c.min_history for c in contracts), min(c.horizon for c in contracts), cells)


class ForecastPipeline(InferenceModel):
    """`<model>-pipeline`: N weekly histories of one length (FP32, oldest first) in, the next weeks out."""

    platform = "modelroad_pipeline"

    def __init__(self, forecaster: Forecaster):
        runner, contract = forecaster.runner, forecaster.contract
        super().__init__(
            pipeline_name(runner.name),
            runner,
            [TensorSpec("history", "FP32", (-1, -1))],
            [TensorSpec("forecast", "FP32", (-1, contract.horizon)), *VERDICT_TENSORS],
        )
        self.forecaster = forecaster

    async def infer(self, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        history = tensors["history"]
        contract = self.forecaster.contract
        if not 1 <= len(history) <= SETTINGS.max_batch_size:
            raise BadRequest(f"history must hold from 1 to {SETTINGS.max_batch_size} series; got {len(history)}")
        if not contract.min_history <= history.shape[1] <= SETTINGS.max_history:
            raise BadRequest(
                f"each history must have from {contract.min_history} to {SETTINGS.max_history} values; "
                f"got {history.shape[1]}"
            )
        if not np.isfinite(history).all() or np.abs(history).max() > MAX_ABS_VALUE:
            raise BadRequest(f"history values must be finite numbers within ±{MAX_ABS_VALUE:g}")
        answers = await self.forecaster.forecast(history, contract.horizon)
        return {"forecast": np.array([a.forecast for a in answers], dtype=np.float32), **verdict_tensors(answers)}


def whole_number(value: object) -> object:
    """JSON Schema counts 4.0 as an integer; strict int alone would refuse it (and rightly refuses "4" and 4.5)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def forecast_routes(min_history: int, max_horizon: int, cells: tuple[str, ...]) -> APIRouter:
    router = APIRouter(tags=["forecast"], dependencies=[JSON_ONLY])
    Value = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=-MAX_ABS_VALUE, le=MAX_ABS_VALUE)]

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
        family = serving(request, ForecastFamily)
        forecaster = family.forecasters[body.model] if body.model else family.default
        (answer,) = await forecaster.forecast(np.asarray([body.history]), body.horizon)
        return json_response(answer)

    return router
