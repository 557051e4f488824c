"""Every answer's OOD verdict (services/families/ood.py), on the in-process platform service."""

import bentoml
import numpy as np
import onnxruntime as ort
import pytest

from contracts.answers import verdicts
from contracts.card import ModelCard, OodRecord
from contracts.image import ImageContract
from services.families.ood import ood_threshold
from services.settings import ServeSettings
from tests.helpers import co2_history, fashion_test_images


def offline_scores(tag: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
    stored = bentoml.models.get(tag)
    session = ort.InferenceSession(stored.path_of("model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(["ood_score"], feeds)[0]


def series_value(text: str, name: str, model: str) -> float:
    prefix = f'{name}{{model="{model}"}} '
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix))


def noise_images(n: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, 28, 28)).astype(np.float64)


def test_image_answers_carry_the_graphs_score_and_its_verdict_and_noise_is_flagged(client, cnn_card):
    _, pixels = fashion_test_images(4)
    batch = np.concatenate([pixels, noise_images(4)])
    contract = ImageContract.from_card(ModelCard.from_metadata(cnn_card))
    expected = offline_scores(cnn_card["tag"], contract.feeds_from_pixels(batch))
    before = client.get("/metrics").text
    answers = client.post("/classify_pixels", json={"pixels": batch.tolist()}).json()
    after = client.get("/metrics").text
    threshold = cnn_card["ood"]["threshold"]
    np.testing.assert_allclose([a["ood_score"] for a in answers], expected, rtol=1e-4, atol=1e-3)
    assert [a["in_distribution"] for a in answers] == [bool(s <= threshold) for s in expected]
    assert [a["in_distribution"] for a in answers[4:]] == [False] * 4  # noise is nothing like clothes
    flagged = sum(not a["in_distribution"] for a in answers)
    seen = series_value(after, "modelroad_ood_score_count", "fashion-cnn")
    assert seen - series_value(before, "modelroad_ood_score_count", "fashion-cnn") == 8
    outside = series_value(after, "modelroad_ood_answers_total", "fashion-cnn")
    assert outside - series_value(before, "modelroad_ood_answers_total", "fashion-cnn") == flagged


def test_uploaded_images_and_texts_are_judged_too(client, registered):
    files, _ = fashion_test_images(1)
    image = client.post("/classify_image", files={"image": ("item.png", files[0], "image/png")}).json()
    texts = ["a small domesticated carnivore kept as a pet", "def __init__(self, *args, **kwargs): return None"]
    answers = client.post("/classify_texts", json={"texts": texts}).json()
    for answer in (image, *answers):
        assert isinstance(answer["ood_score"], float) and isinstance(answer["in_distribution"], bool)
    threshold = registered["wordnet-transformer"]["ood"]["threshold"]
    assert [a["in_distribution"] for a in answers] == [a["ood_score"] <= threshold for a in answers]


def test_a_forecast_of_a_history_unlike_co2_is_flagged(client, lstm_card):
    real = client.post("/forecast", json={"history": co2_history(), "model": "lstm"}).json()
    noise = np.random.default_rng(0).normal(350, 20, 156).tolist()
    odd = client.post("/forecast", json={"history": noise, "model": "lstm"}).json()
    threshold = lstm_card["ood"]["threshold"]
    assert real["in_distribution"] == (real["ood_score"] <= threshold)
    assert odd["in_distribution"] is False and odd["ood_score"] > max(threshold, real["ood_score"])


def test_pipelines_answer_with_ood_tensors(client):
    pixels = noise_images(2).astype(np.float32)
    body = {"inputs": [{"name": "pixels", "shape": [2, 28, 28], "datatype": "FP32", "data": pixels.ravel().tolist()}]}
    outputs = {o["name"]: o for o in client.post("/v2/models/fashion-cnn-pipeline/infer", json=body).json()["outputs"]}
    assert outputs["in_distribution"]["datatype"] == "BOOL" and outputs["in_distribution"]["data"] == [False, False]
    assert outputs["ood_score"]["datatype"] == "FP32" and len(outputs["ood_score"]["data"]) == 2
    history = co2_history()
    request = {"inputs": [{"name": "history", "shape": [1, len(history)], "datatype": "FP32", "data": history}]}
    names = [o["name"] for o in client.post("/v2/models/co2-gru-pipeline/infer", json=request).json()["outputs"]]
    assert names == ["forecast", "ood_score", "in_distribution"]


def test_a_threshold_setting_replaces_the_cards():
    card = ModelCard(task="image-classification", ood=OodRecord(threshold=3.0))
    threshold = ood_threshold("test-model", card, {})
    inside = [v["in_distribution"] for v in verdicts({"ood_score": np.array([1.0, 3.0, 5.0, np.nan])}, threshold)]
    assert inside == [True, True, False, False]  # a score that is not a number is never "like the training data"
    overrides = ServeSettings.from_env({"MODELROAD_OOD_THRESHOLDS": "test-model=6, other=1"}).ood_threshold_overrides
    assert overrides == {"test-model": 6.0, "other": 1.0}
    threshold = ood_threshold("test-model", card, overrides)
    assert [v["in_distribution"] for v in verdicts({"ood_score": np.array([5.0])}, threshold)] == [True]
    assert ood_threshold("test-model", card, {}, enabled=False) is None
    assert verdicts({"ood_score": np.array([5.0])}, None) == [{}]  # scores off: answers carry no verdict


def test_a_bad_threshold_setting_stops_the_start_and_an_old_model_asks_to_be_retrained():
    with pytest.raises(ValueError, match="MODELROAD_OOD_THRESHOLDS='fashion-cnn': write model=number"):
        ServeSettings.from_env({"MODELROAD_OOD_THRESHOLDS": "fashion-cnn"})
    with pytest.raises(ValueError, match=r"without an OOD score.*`python -m training train old-model`"):
        ood_threshold("old-model", ModelCard(task="image-classification"), {})
