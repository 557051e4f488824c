import numpy as np
import pandas as pd
import pytest
import torch

from training.config import TrainConfig
from training.tasks.series import ForecastTask, forecast_metrics, seasonal_naive

TASK = ForecastTask("gru")


@pytest.fixture(scope="module")
def co2():
    return TASK.load_data(TrainConfig(task="co2-gru"))


def test_co2_is_split_by_time_with_test_and_validation_at_the_end(co2):
    series = co2.extras["series"]
    assert len(series) == 2284 and np.isfinite(series).all()  # the 59 gaps are interpolated
    test_start = len(series) - TASK.test_weeks
    assert co2.extras["test_ends"][0] == test_start and co2.extras["test_ends"][-1] + TASK.horizon <= len(series)


def test_no_window_sees_targets_from_a_later_split(co2):
    n = len(co2.extras["series"])
    test_start, val_start = n - TASK.test_weeks, n - TASK.test_weeks - TASK.val_weeks
    scale = co2.preprocessing.series.scale
    series = co2.extras["series"]
    # Recover each training window's end from its targets: target = (future - last) / scale.
    x, y = co2.train.tensors
    assert x.shape == (len(x), TASK.window) and y.shape == (len(x), TASK.horizon)
    last_train_end = val_start - TASK.horizon  # the latest window whose 52 targets stay in training
    expected_last = (series[last_train_end : last_train_end + TASK.horizon] - series[last_train_end - 1]) / scale
    np.testing.assert_allclose(y[-1].numpy(), expected_last, atol=1e-5)
    assert len(co2.train) == last_train_end - TASK.window + 1
    assert len(co2.val) == test_start - TASK.horizon - val_start + 1


def test_scale_is_fitted_on_training_data_only(co2, tmp_path):
    # Changing the test period must not change the stored scale.
    series = co2.extras["series"].copy()
    series[-TASK.test_weeks :] *= 10
    dates = pd.to_datetime(co2.extras["dates"])
    path = tmp_path / "co2.csv"
    pd.DataFrame({"timestamp": dates, "value": series}).to_csv(path, index=False)
    changed = TASK.load_data(TrainConfig(task="co2-gru", data=str(path)))
    assert changed.preprocessing.series == co2.preprocessing.series


def test_user_csv_needs_timestamp_and_value_columns(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("date,reading\n2020-01-01,1\n")
    with pytest.raises(ValueError, match="timestamp,value"):
        TASK.load_data(TrainConfig(data=str(path)))


def test_training_draws_histories_of_one_to_three_seasons(co2):
    x = co2.train.tensors[0][:4]
    generator = torch.Generator().manual_seed(0)
    lengths = {TASK.augment((x,), generator)[0].shape[1] for _ in range(50)}
    assert min(lengths) >= TASK.min_history and max(lengths) <= TASK.window and len(lengths) > 10
    (short,) = TASK.augment((x,), generator)
    torch.testing.assert_close(short, x[:, -short.shape[1] :])  # the most recent values, level reference kept


def test_seasonal_naive_repeats_last_year():
    series = np.arange(200, dtype=float)
    forecast = seasonal_naive(series, np.array([150]), horizon=3)
    np.testing.assert_array_equal(forecast, [[98, 99, 100]])


def test_forecast_metrics_agree_with_hand_computation():
    truth, forecast = np.array([[100.0, 200.0]]), np.array([[110.0, 190.0]])
    m = forecast_metrics(truth, forecast)
    assert m["mae"] == 10 and m["rmse"] == 10
    assert m["mape"] == pytest.approx((0.1 + 0.05) / 2)
    assert m["smape"] == pytest.approx((20 / 210 + 20 / 390) / 2)


def test_registered_forecasters_carry_scaling_metrics_and_both_baselines(lstm_card, gru_card):
    for card in (lstm_card, gru_card):
        assert set(card["baseline"]) == {"seasonal_naive", "holt_winters"}
        assert {"mae", "rmse", "mape", "smape", "r2"} <= set(card["metrics"])
        assert card["preprocessing"]["window"] == 156 and card["preprocessing"]["series"]["scale"] > 0
        assert card["parity_max_abs_diff"] <= 1e-4
        assert card["inputs"][0]["shape"] == ["batch", "time"]
    assert lstm_card["model_config"]["cell"] == "lstm" and gru_card["model_config"]["cell"] == "gru"
