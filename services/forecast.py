"""Forecasting API: weekly history in, `horizon` weeks out, from the LSTM or the GRU forecaster."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

import bentoml
import numpy as np
from pydantic import BaseModel, Field

from contracts.preprocessing import SeriesScaling
from services.base import ModelAPI, invalid
from services.runner import OnnxRunner, run_calls, verified_model
from services.settings import SETTINGS

MAX_ABS_VALUE = 1e9  # beyond this float32 arithmetic in the net loses the series


class Forecast(BaseModel):
    forecast: list[float]
    model: str = Field(description="the store tag of the model that answered")


def forecast_batch(runner: OnnxRunner, payloads: Sequence[np.ndarray]) -> list[np.ndarray]:
    """payloads: encoded (1, T) histories -> one forecast row each; histories of one length run as one batch."""
    return [output[0] for output in run_calls(runner, [{"history": payload} for payload in payloads])]


class Forecaster:
    """One registered forecaster and the preprocessing stored with it."""

    def __init__(self, stored: bentoml.Model):
        meta = stored.info.metadata
        prep = meta["preprocessing"]
        self.cell: str = meta["model_config"]["cell"]
        self.scaling = SeriesScaling(**prep["series"])
        self.window, self.min_history, self.horizon = prep["window"], prep["min_history"], prep["horizon"]
        self.val_loss: float = meta["val_loss"]
        self.runner = OnnxRunner(stored, SETTINGS, forecast_batch)


class ForecastAPI(ModelAPI):
    lstm_model = verified_model(SETTINGS.lstm_model)
    gru_model = verified_model(SETTINGS.gru_model)

    def __init__(self) -> None:
        super().__init__()
        forecasters = [Forecaster(stored) for stored in (self.lstm_model, self.gru_model)]
        self.forecasters = {f.cell: f for f in forecasters}
        for f in forecasters:
            self.add_runner(f.runner, np.zeros((1, f.window), np.float32))
        # The default is the better one on validation data (never the test split).
        self.default_forecaster = min(forecasters, key=lambda f: f.val_loss)

    @bentoml.api(route="/forecast")
    async def forecast(
        self,
        history: Annotated[list[Annotated[float, Field(strict=True)]], Field(description="past weekly values, oldest first")],
        horizon: Annotated[int, Field(strict=True, description="how many weeks to forecast")] = 52,
        model: Annotated[Literal["lstm", "gru"] | None, Field(description="the cell; default: the better on validation")] = None,
    ) -> Forecast:
        """Forecast the next `horizon` weeks of a weekly series from its history."""
        forecaster = self.forecasters[model] if model else self.default_forecaster
        if not 1 <= horizon <= forecaster.horizon:
            raise invalid(f"horizon must be from 1 to {forecaster.horizon}; got {horizon}")
        if not forecaster.min_history <= len(history) <= SETTINGS.max_history:
            raise invalid(f"history must have from {forecaster.min_history} to {SETTINGS.max_history} values; got {len(history)}")
        values = np.asarray(history, dtype=np.float64)
        if not np.isfinite(values).all() or np.abs(values).max() > MAX_ABS_VALUE:
            raise invalid(f"history values must be finite numbers within ±{MAX_ABS_VALUE:g}")
        values = values[None, -forecaster.window :]  # the window the net was trained on
        output = await forecaster.runner.submit(forecaster.scaling.encode(values))
        forecast = forecaster.scaling.decode(output[None, :horizon], values)[0]
        return Forecast(forecast=[round(float(v), 4) for v in forecast], model=forecaster.runner.tag)
