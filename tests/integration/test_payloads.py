"""Payload logs from a real `bentoml serve`: a line per prediction of every family, under the client's request id."""

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np

from harness.servers import stop, wait_ready
from tests.helpers import co2_history
from tests.integration.conftest import start_server


def test_every_prediction_is_logged_with_its_request_id_model_and_summary(registered, session_dir, tmp_path):
    log_path = session_dir / "payloads.log"
    folder = tmp_path / "payloads"
    process, url = start_server(
        Path(os.environ["BENTOML_HOME"]), log_path, extra_env={"MODELROAD_PAYLOAD_LOG": str(folder)}
    )
    pixels = np.full((2, 28, 28), 200.0).tolist()
    try:
        wait_ready(process, url, log_path)
        with httpx.Client(base_url=url, timeout=10) as client:
            answers = [
                client.post("/classify_pixels", json={"pixels": pixels}, headers={"x-request-id": "images-1"}),
                client.post(
                    "/classify_texts",
                    json={"texts": ["a sweet baked food", "a large cat"]},
                    headers={"x-request-id": "texts-1"},
                ),
                client.post(
                    "/forecast", json={"history": co2_history(), "horizon": 4}, headers={"x-request-id": "series-1"}
                ),
                client.post(
                    "/generate_images",
                    json={"n": 2, "seed": 3, "label": "Bag", "steps": 3},
                    headers={"x-request-id": "drawn-1"},
                ),
            ]
        assert [a.status_code for a in answers] == [200, 200, 200, 200]
    finally:
        stop(process)  # the worker writes what is queued as it stops
    lines = [json.loads(line) for path in folder.glob("payloads-*.jsonl") for line in path.read_text().splitlines()]
    by_request = {}
    for line in lines:
        by_request.setdefault(line["request_id"], []).append(line)
    assert sorted(by_request) == ["drawn-1", "images-1", "series-1", "texts-1"]
    asked = {"label": "Bag", "n": 2, "steps": 3, "guidance": 3.0}
    assert [(x["model"], x["input"]) for x in by_request["drawn-1"]] == [
        ("fashion-diffusion", {"seed": 3, **asked}),
        ("fashion-diffusion", {"seed": 4, **asked}),
    ]  # the seeds and the request, never the images
    assert all(not x["answer"] for x in by_request["drawn-1"])
    images, texts, (series,) = by_request["images-1"], by_request["texts-1"], by_request["series-1"]
    assert [x["model"] for x in images] == ["fashion-cnn"] * 2
    assert [x["answer"]["label"] for x in images] == [a["label"] for a in answers[0].json()]
    assert [(x["answer"]["ood_score"], x["answer"]["in_distribution"]) for x in images] == [
        (a["ood_score"], a["in_distribution"]) for a in answers[0].json()
    ]
    assert all(x["input"]["size"] == 784 and "pixels" not in x["input"] for x in images)  # a summary, not values
    assert [x["input"]["chars"] for x in texts] == [18, 11]
    assert texts[0]["version"] == registered["wordnet-transformer"]["tag"].split(":")[1]
    assert series["model"].startswith("co2-")
    assert np.allclose(series["answer"]["forecast"], answers[2].json()["forecast"], atol=1e-3)
    assert series["input"]["size"] == len(co2_history()) and abs(series["input"]["last"] - co2_history()[-1]) < 1e-9
    assert series["answer"]["in_distribution"] == answers[2].json()["in_distribution"]

    # The drift command reads these logs and the cards' reference summaries, nothing else.
    report = tmp_path / "report"
    drift = subprocess.run(
        [sys.executable, "-m", "training", "drift", str(folder), "--out", str(report)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert drift.returncode in (0, 1), drift.stderr  # 1: drift found
    text = (report / "report.md").read_text()
    for model in ("fashion-cnn", "wordnet-transformer", series["model"], "fashion-diffusion"):
        assert f"## {model}:" in text
    assert "a generator's seeds" in text  # nothing to compare
    assert "| chars |" in text and "| step_std |" in text and len(list(report.glob("*.png"))) == 3
