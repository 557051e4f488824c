"""Triton's own client (`tritonclient[http]`) against a real `bentoml serve`: the protocol as its users speak it."""

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.helpers import (
    co2_history,
    fashion_test_images,
    offline_forecast,
    offline_image_probabilities,
    offline_text_probabilities,
)

pytestmark = pytest.mark.slow
TEXTS = ["a small domesticated carnivore kept as a pet", "a sweet baked food made of flour and sugar"]


@pytest.fixture(scope="module")
def triton_client(server):
    client = triton.InferenceServerClient(server.removeprefix("http://"), network_timeout=30)
    yield client
    client.close()


def infer(client, model: str, array: np.ndarray, input_name: str, datatype: str, binary: bool) -> triton.InferResult:
    tensor = triton.InferInput(input_name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    model_outputs = [o["name"] for o in client.get_model_metadata(model)["outputs"]]
    outputs = [triton.InferRequestedOutput(name, binary_data=binary) for name in model_outputs]
    return client.infer(model, [tensor], outputs=outputs, request_id="req-7")


def test_server_and_model_metadata_and_readiness(triton_client, registered):
    assert triton_client.is_server_live() and triton_client.is_server_ready()
    # No admin token: no repository.
    extensions = ["binary_tensor_data", "classification", "model_configuration", "statistics"]
    assert triton_client.get_server_metadata()["extensions"] == extensions
    with pytest.raises(InferenceServerException) as off:
        triton_client.get_model_repository_index()
    assert off.value.status() == "404"
    with pytest.raises(InferenceServerException) as no_shared_memory:  # off unless MODELROAD_SHARED_MEMORY
        triton_client.get_system_shared_memory_status()
    assert no_shared_memory.value.status() == "404"
    for name, card in registered.items():
        if name.endswith("-int8"):
            continue  # registered, not served by default
        version = card["tag"].split(":")[1]
        assert triton_client.is_model_ready(name) and triton_client.is_model_ready(name, version)
        assert triton_client.get_model_metadata(name, version)["versions"] == [version]
        assert triton_client.is_model_ready(f"{name}-pipeline")


def test_the_model_configuration_and_classification_as_tritonclient_asks(triton_client, registered):
    version = registered["fashion-cnn"]["tag"].split(":")[1]
    config, metadata = (
        triton_client.get_model_config("fashion-cnn", version),
        triton_client.get_model_metadata("fashion-cnn"),
    )
    assert config["name"] == "fashion-cnn" and config["max_batch_size"] == 64
    assert [-1, *config["input"][0]["dims"]] == metadata["inputs"][0]["shape"]
    with pytest.raises(InferenceServerException) as unknown:
        triton_client.get_model_config("no-such-model")
    assert unknown.value.status() == "404" and "no model named 'no-such-model'" in unknown.value.message()
    files, _ = fashion_test_images(2)
    expected = offline_image_probabilities(registered["fashion-cnn"]["tag"], files)
    image = triton.InferInput("image", [2], "BYTES")
    image.set_data_from_numpy(np.array(files, dtype=np.object_))
    for binary in (True, False):
        wanted = [triton.InferRequestedOutput("probabilities", binary_data=binary, class_count=2)]
        top = triton_client.infer("fashion-cnn-pipeline", [image], outputs=wanted).as_numpy("probabilities")
        answered = [[(e.decode() if isinstance(e, bytes) else e).split(":") for e in row] for row in top]
        assert [[int(index) for _, index, _ in row] for row in answered] == np.argsort(-expected)[:, :2].tolist()
        labels = registered["fashion-cnn"]["labels"]
        assert [row[0][2] for row in answered] == [labels[i] for i in expected.argmax(1)]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_every_raw_model_answers_as_the_offline_onnx_model(triton_client, registered, binary):
    files, _ = fashion_test_images(4)
    from contracts.card import ModelCard
    from contracts.image import ImageContract

    image = ImageContract.from_card(ModelCard.from_metadata(registered["fashion-cnn"]))
    pixels = image.feeds_from_files(files)["pixels"]
    result = infer(triton_client, "fashion-cnn", pixels, "pixels", "FP32", binary)
    assert result.get_response()["id"] == "req-7"
    logits = result.as_numpy(result.get_response()["outputs"][0]["name"])
    np.testing.assert_allclose(
        np.exp(logits) / np.exp(logits).sum(1, keepdims=True),
        offline_image_probabilities(registered["fashion-cnn"]["tag"], files),
        atol=1e-5,
    )

    history = co2_history()
    for cell in ("lstm", "gru"):
        name = f"co2-{cell}"
        result = infer(triton_client, f"{name}-pipeline", np.asarray([history], np.float32), "history", "FP32", binary)
        np.testing.assert_allclose(
            result.as_numpy("forecast")[0], offline_forecast(registered[name]["tag"], history, 52), atol=0.05
        )

    card = ModelCard.from_metadata(registered["wordnet-transformer"])
    # the raw text model takes token ids (the pipeline takes strings)
    tensor_in = [triton.InferInput("input_ids", [1, 3], "INT64"), triton.InferInput("attention_mask", [1, 3], "INT64")]
    tensor_in[0].set_data_from_numpy(np.array([[5, 6, 7]], np.int64), binary_data=binary)
    tensor_in[1].set_data_from_numpy(np.ones((1, 3), np.int64), binary_data=binary)
    raw = triton_client.infer("wordnet-transformer", tensor_in).as_numpy(card.output)
    assert raw.shape == (1, card.classes)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_the_pipelines_take_what_a_user_has(triton_client, registered, binary):
    files, pixels = fashion_test_images(3)
    expected = offline_image_probabilities(registered["fashion-cnn"]["tag"], files)
    if binary:  # encoded files are not UTF-8: JSON's BYTES are strings, so they go in the binary section
        by_file = infer(
            triton_client, "fashion-cnn-pipeline", np.array(files, dtype=np.object_), "image", "BYTES", binary
        )
        np.testing.assert_allclose(by_file.as_numpy("probabilities"), expected, atol=1e-5)
    by_pixels = infer(triton_client, "fashion-cnn-pipeline", pixels.astype(np.float32), "pixels", "FP32", binary)
    assert by_pixels.as_numpy("class_id").tolist() == expected.argmax(1).tolist()

    texts = np.array([t.encode() for t in TEXTS], dtype=np.object_)
    result = infer(triton_client, "wordnet-transformer-pipeline", texts, "text", "BYTES", binary)
    np.testing.assert_allclose(
        result.as_numpy("probabilities"),
        offline_text_probabilities(registered["wordnet-transformer"]["tag"], TEXTS),
        atol=1e-5,
    )
    labels = [label.decode() if isinstance(label, bytes) else label for label in result.as_numpy("label")]
    assert all(label in registered["wordnet-transformer"]["labels"] for label in labels)


def test_every_error_is_parsed_by_tritonclient(triton_client):
    bad = triton.InferInput("pixels", [1, 28, 28], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 28, 28), np.float32))
    fine = triton.InferInput("pixels", [1, 1, 28, 28], "FP32")
    fine.set_data_from_numpy(np.zeros((1, 1, 28, 28), np.float32))
    wrong_type = triton.InferInput("pixels", [1, 1, 28, 28], "FP64")
    wrong_type.set_data_from_numpy(np.zeros((1, 1, 28, 28), np.float64))
    cases = [
        (lambda: triton_client.get_model_metadata("no-such-model"), "404", "no model named"),
        (lambda: triton_client.get_model_metadata("fashion-cnn", "0"), "404", "has no version '0'"),
        (lambda: triton_client.infer("fashion-cnn", [bad]), "400", "must have shape [-1, 1, 28, 28]"),
        (lambda: triton_client.infer("fashion-cnn", [wrong_type]), "400", "pixels must be FP32"),
        (
            lambda: triton_client.infer("fashion-cnn", [fine], outputs=[triton.InferRequestedOutput("nope")]),
            "400",
            "no output 'nope'",
        ),
        (lambda: triton_client.infer("nope", [fine]), "404", "no model named 'nope'"),
    ]
    for call, status, message in cases:
        with pytest.raises(InferenceServerException) as raised:
            call()
        assert raised.value.status() == status and message in raised.value.message(), (status, raised.value)
    assert triton_client.is_server_ready()
