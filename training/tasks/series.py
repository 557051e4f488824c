"""Forecasting: the weekly Mauna Loa CO2 series (statsmodels) or a user's CSV (timestamp, value).

Split by time: the last `test_weeks` are the test period, the `val_weeks` before them validation,
the rest training. A window's targets never cross into a later split. The test is a rolling origin:
every `origin_stride` weeks of the test period, forecast the next `horizon` weeks from all the past.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn import metrics
from statsmodels.tsa.holtwinters import ExponentialSmoothing
from torch import nn
from torch.utils.data import TensorDataset

from contracts.preprocessing import ForecastPreprocessing, SeriesScaling
from contracts.summaries import REFERENCE_ITEMS, history_summaries
from contracts.tensors import TensorSpec
from models.ood import Mahalanobis, Scored, window_of, window_shape
from training.config import TrainConfig
from training.ood_sets import series_sets
from training.tasks.base import Predict, Prepared, Task, fingerprint_arrays, register_task

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)
SEASON = 52  # weeks
_BASELINES: dict[str, dict[str, Any]] = {}  # data fingerprint -> baseline scores


def load_co2() -> pd.Series:
    """2284 weeks, 1958-2001, from statsmodels' bundled copy (offline); gaps interpolated in time."""
    import statsmodels.api as sm

    return sm.datasets.co2.load_pandas().data["co2"]


def load_csv(path: Path) -> pd.Series:
    frame = pd.read_csv(path)
    if list(frame.columns[:2]) != ["timestamp", "value"]:
        raise ValueError(f"{path}: the first two columns must be named timestamp,value; got {list(frame.columns[:2])}")
    return pd.Series(frame["value"].to_numpy(float), index=pd.to_datetime(frame["timestamp"])).sort_index()


def forecast_metrics(truth: np.ndarray, forecast: np.ndarray) -> dict[str, float]:
    y, f = np.ravel(truth), np.ravel(forecast)
    return {
        "mae": float(metrics.mean_absolute_error(y, f)),
        "rmse": float(metrics.root_mean_squared_error(y, f)),
        "mape": float(metrics.mean_absolute_percentage_error(y, f)),
        "smape": float(np.mean(2 * np.abs(f - y) / (np.abs(y) + np.abs(f)))),  # scikit-learn has no sMAPE
        "r2": float(metrics.r2_score(y, f)),
    }


def seasonal_naive(series: np.ndarray, origins: np.ndarray, horizon: int) -> np.ndarray:
    """The value one season (52 weeks) before each forecast week."""
    return np.stack([series[o - SEASON + np.arange(horizon) % SEASON] for o in origins])


def holt_winters(series: np.ndarray, origins: np.ndarray, horizon: int) -> np.ndarray:
    """Additive trend and season, refitted on all the past at each origin."""
    forecasts = []
    for origin in origins:
        fit = ExponentialSmoothing(series[:origin], trend="add", seasonal="add", seasonal_periods=SEASON).fit()
        forecasts.append(fit.forecast(horizon))
    return np.stack(forecasts)


class ForecastTask(Task):
    model = "rnn"
    kind = "forecasting"
    inputs = (TensorSpec("history", "FP32", ("batch", "time")),)
    output_name = "forecast"
    key_metric = "mae"
    window = 3 * SEASON  # the history the net is trained on
    min_history = SEASON  # shorter windows are drawn in training, so 1..3 seasons all work
    horizon = SEASON
    val_weeks = 4 * SEASON
    test_weeks = 4 * SEASON
    origin_stride = 13
    # ~1,700 training windows: small batches for enough steps; both cells train in ~2 min on 2 cores.
    train_defaults: ClassVar[dict[str, Any]] = {
        "epochs": 60,
        "batch_size": 32,
        "lr": 2e-3,
        "patience": 8,
        "warmup_steps": 50,
    }

    def search_space(self, trial: optuna.Trial) -> None:
        trial.suggest_float("lr", 5e-4, 5e-3, log=True)
        trial.suggest_categorical("batch_size", [16, 32, 64])
        trial.suggest_categorical("model.hidden", [32, 64, 128])
        trial.suggest_float("model.dropout", 0.0, 0.3)

    def __init__(self, cell: str):
        self.cell = cell
        self.name = f"co2-{cell}"
        self.expected_seconds = {"lstm": 45.0, "gru": 110.0}.get(cell, 110.0)  # the GRU stops later

    def load_data(self, cfg: TrainConfig) -> Prepared:
        raw = load_csv(Path(cfg.data)) if cfg.data else load_co2()
        series = raw.interpolate(method="time").bfill().to_numpy(np.float64)
        n = len(series)
        test_start = n - self.test_weeks
        val_start = test_start - self.val_weeks
        if val_start < self.window + self.horizon:
            raise ValueError(
                f"{n} points are too few: need {self.window + self.horizon + self.val_weeks + self.test_weeks}"
            )
        train_series = series[:val_start]
        # Scale: the typical size of the change a forecast must predict, on training data only.
        deltas = np.concatenate([train_series[h:] - train_series[:-h] for h in range(1, self.horizon + 1)])
        scaling = SeriesScaling(scale=round(float(deltas.std()), 6))

        def windows(ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            history = np.stack([series[e - self.window : e] for e in ends])
            future = np.stack([series[e : e + self.horizon] for e in ends])
            return history, future

        def dataset(history: np.ndarray, future: np.ndarray) -> TensorDataset:
            target = (future - history[:, -1:]) / scaling.scale
            return TensorDataset(torch.from_numpy(scaling.encode(history)), torch.from_numpy(target.astype(np.float32)))

        # A window ending at e has targets e..e+horizon-1: they must stay inside the window's own split.
        train_ends = np.arange(self.window, val_start - self.horizon + 1)
        val_ends = np.arange(max(self.window, val_start), test_start - self.horizon + 1)
        test_ends = np.arange(test_start, n - self.horizon + 1, self.origin_stride)
        if cfg.dry_run:
            train_ends = train_ends[:: max(1, len(train_ends) // 256)]
        test_history, test_future = windows(test_ends)
        return Prepared(
            train=dataset(*windows(train_ends)),
            val=dataset(*windows(val_ends)),
            test=dataset(test_history, test_future),
            source=str(cfg.data or "statsmodels co2 (weekly, Mauna Loa)"),
            fingerprint=fingerprint_arrays(series),
            preprocessing=ForecastPreprocessing(scaling, self.window, self.min_history, self.horizon),
            extras={
                "series": series,
                "dates": raw.index.strftime("%Y-%m-%d").tolist(),
                "test_ends": test_ends,
                "test_history": test_history,
                "test_future": test_future,
                "scaling": scaling,
            },
        )

    def model_config(self, data: Prepared) -> dict[str, Any]:
        return {"cell": self.cell, "horizon": self.horizon}

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor, class_weights: torch.Tensor | None) -> torch.Tensor:
        return F.huber_loss(outputs, targets, delta=0.5)

    def augment(self, inputs: tuple[torch.Tensor, ...], generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        # Train on histories of 1..3 seasons (the last values, so the level reference stays): any served length works.
        (history,) = inputs
        length = int(torch.randint(self.min_history, self.window + 1, (1,), generator=generator))
        return (history[:, -length:],)

    def export_inputs(self, data: Prepared) -> list[tuple[torch.Tensor, ...]]:
        series, scaling = data.extras["series"], data.extras["scaling"]
        long = np.stack([series[e - 2 * self.window : e] for e in data.extras["test_ends"][:4]])
        history = data.test.tensors[0]
        # Export from a short history: the exporter steps through every time step of the example while
        # tracing (a 156-week GRU took a minute, 16 weeks take seconds); the axis stays dynamic.
        # Parity is then checked at lengths 1, the training window and twice it.
        short = torch.from_numpy(scaling.encode(data.extras["test_history"][:8, -16:]))
        return [(short,), (history[:3, -1:],), (history[:8],), (torch.from_numpy(scaling.encode(long)),)]

    ood_recipe = (
        "Mahalanobis distance of the history's shape (the size of its steps, its trend and its seasonal swing, "
        "relative to the training scale; not its level) to the training windows'"
    )

    def served_lengths(self) -> tuple[int, ...]:
        """History lengths the score is fitted and calibrated at: served histories have 1 to 3 seasons."""
        return (self.min_history, (self.min_history + self.window) // 2, self.window)

    def ood_scorer(self, net: nn.Module, data: Prepared) -> Scored:
        history = data.train.tensors[0]
        shapes = torch.cat([window_shape(history[:, -length:]) for length in self.served_lengths()])
        return Scored(net, {"window_shape": Mahalanobis.fit(shapes)}, {"window_shape": window_of})

    def ood_calibration_inputs(self, data: Prepared) -> list[tuple[torch.Tensor, ...]]:
        history = data.val.tensors[0]
        return [(history[:, -length:],) for length in self.served_lengths()]

    def ood_test_inputs(self, data: Prepared) -> list[tuple[torch.Tensor, ...]]:
        # Every week of the test period as the end of a one-season history: as many as there are weeks.
        series, scaling = data.extras["series"], data.extras["scaling"]
        ends = range(int(data.extras["test_ends"][0]), len(series) + 1)
        windows = np.stack([series[e - self.min_history : e] for e in ends])
        return [(torch.from_numpy(scaling.encode(windows)),)]

    def ood_sets(self, data: Prepared) -> dict[str, list[tuple[torch.Tensor, ...]]]:
        series, scaling = data.extras["series"], data.extras["scaling"]
        sets = series_sets(series, self.min_history, np.random.default_rng(0))
        return {name: [(torch.from_numpy(scaling.encode(windows)),)] for name, windows in sets.items()}

    def example(self, data: Prepared) -> dict[str, Any]:
        """The series' last `window` weeks (the end of the test split): what to forecast from next."""
        return {"history": [round(float(v), 3) for v in data.extras["series"][-self.window :]]}

    def reference_summaries(self, data: Prepared) -> list[dict[str, Any]]:
        # Raw training windows, as users send histories (level included: drift in level is drift to report).
        series = data.extras["series"]
        last_end = len(series) - self.test_weeks - self.val_weeks
        ends = np.unique(np.linspace(self.window, last_end, REFERENCE_ITEMS).astype(int))
        return history_summaries([series[e - self.window : e] for e in ends])

    def forecast(self, predict: Predict, history: np.ndarray, scaling: SeriesScaling) -> np.ndarray:
        return scaling.decode(predict(torch.from_numpy(scaling.encode(history))), history)

    def evaluate(self, predict: Predict, data: Prepared, run_dir: Path) -> dict[str, Any]:
        extras = data.extras
        forecasts = self.forecast(predict, extras["test_history"], extras["scaling"])
        scores = forecast_metrics(extras["test_future"], forecasts)
        self._plot(extras, forecasts, run_dir / "forecast.png")
        return scores

    def baseline(self, data: Prepared) -> dict[str, Any]:
        # The same data gives the same baselines: LSTM and GRU trained in one process fit Holt-Winters once.
        if data.fingerprint not in _BASELINES:
            extras = data.extras
            series, ends, truth = extras["series"], extras["test_ends"], extras["test_future"]
            _BASELINES[data.fingerprint] = {
                "seasonal_naive": forecast_metrics(truth, seasonal_naive(series, ends, self.horizon)),
                "holt_winters": forecast_metrics(truth, holt_winters(series, ends, self.horizon)),
            }
        return _BASELINES[data.fingerprint]

    def _plot(self, extras: dict[str, Any], forecasts: np.ndarray, path: Path) -> None:
        series, ends, dates = extras["series"], extras["test_ends"], pd.to_datetime(extras["dates"])
        start = max(0, ends[0] - 2 * self.window)
        fig, ax = plt.subplots(figsize=(11, 4.5))
        ax.plot(dates[start:], series[start:], color="black", lw=1, label="observed")
        shown = range(0, len(ends), SEASON // self.origin_stride)  # non-overlapping years
        naive = seasonal_naive(series, ends, self.horizon)
        for k, i in enumerate(shown):
            span = dates[ends[i] : ends[i] + self.horizon]
            ax.plot(span, forecasts[i], color="tab:red", lw=1.5, label=f"{self.cell.upper()}" if k == 0 else None)
            ax.plot(span, naive[i], color="tab:gray", lw=1, ls="--", label="seasonal naive" if k == 0 else None)
        ax.axvline(dates[ends[0]], color="tab:blue", lw=0.8, ls=":", label="test period starts")
        ax.set_ylabel("CO2 (ppm)")
        ax.legend(loc="upper left")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)


register_task(ForecastTask("lstm"))
register_task(ForecastTask("gru"))
