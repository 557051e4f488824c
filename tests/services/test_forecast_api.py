"""/forecast on the in-process platform service."""

import json

import numpy as np
import pytest

from tests.helpers import co2_history, offline_forecast

HISTORY = co2_history()


def post(client, body):
    return client.post("/forecast", content=json.dumps(body), headers={"content-type": "application/json"})


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_forecast_equals_the_offline_onnx_forecast(client, registered, cell):
    tag = registered[f"co2-{cell}"]["tag"]
    response = post(client, {"history": HISTORY, "horizon": 12, "model": cell})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == tag and len(body["forecast"]) == 12
    np.testing.assert_allclose(body["forecast"], offline_forecast(tag, HISTORY, 12), atol=1e-3)


def test_default_model_is_the_better_on_validation(client, registered):
    better = min(("co2-lstm", "co2-gru"), key=lambda name: registered[name]["val_loss"])
    body = post(client, {"history": HISTORY}).json()
    assert body["model"] == registered[better]["tag"] and len(body["forecast"]) == 52  # horizon defaults to 52


def test_longer_histories_use_the_last_window(client):
    long = co2_history(weeks=600)
    a = post(client, {"history": long, "horizon": 3, "model": "gru"}).json()["forecast"]
    b = post(client, {"history": long[-156:], "horizon": 3, "model": "gru"}).json()["forecast"]
    assert a == b


def test_short_histories_down_to_one_season_are_served(client):
    response = post(client, {"history": HISTORY[-52:], "horizon": 4})
    assert response.status_code == 200 and len(response.json()["forecast"]) == 4


@pytest.mark.parametrize(
    "body,error",
    [
        ({"history": HISTORY, "horizon": 0}, "horizon: Input should be greater than or equal to 1"),
        ({"history": HISTORY, "horizon": 53}, "horizon: Input should be less than or equal to 52"),
        ({"history": [], "horizon": 4}, "history: List should have at least 52 items after validation, not 0"),
        (
            {"history": HISTORY[:51], "horizon": 4},
            "history: List should have at least 52 items after validation, not 51",
        ),
        (
            {"history": HISTORY * 40, "horizon": 4},
            "history: List should have at most 5000 items after validation, not 6240",
        ),
        ({"history": [*HISTORY[:-1], "300"], "horizon": 4}, "history.155: Input should be a valid number"),
        ({"history": [*HISTORY[:-1], None]}, "history.155: Input should be a valid number"),
        ({"history": HISTORY, "horizon": "4"}, "horizon: Input should be a valid integer"),
        ({"history": HISTORY, "horizon": 2.5}, "horizon: Input should be a valid integer"),
        ({"history": HISTORY, "model": "transformer"}, "model: Input should be 'lstm' or 'gru'"),
        ({"series": HISTORY}, "history: Field required"),
        ({"history": [1e300, *HISTORY]}, "history.0: Input should be less than or equal to 1000000000"),
    ],
)
def test_bad_forecast_requests_get_400_saying_the_allowed_range(client, body, error):
    response = post(client, body)
    assert response.status_code == 400, response.text
    assert error in response.json()["error"]


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_anywhere_in_the_history_are_refused(client, token):
    raw = json.dumps({"history": HISTORY}).replace("[", f"[{token}, ", 1)
    response = client.post("/forecast", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 400 and "finite" in response.json()["error"]
