"""/classify_image and /classify_pixels on the in-process platform service."""

import numpy as np
import pytest

from tests.helpers import fashion_test_images, offline_image_probabilities


def test_readyz_after_load_and_warm_up(client):
    assert client.get("/readyz").status_code == 200


def test_uploaded_png_is_classified_as_the_offline_onnx_model_does(client, cnn_card):
    files, _ = fashion_test_images(4)
    expected = offline_image_probabilities(cnn_card["tag"], files)
    labels = cnn_card["labels"]
    for png, row in zip(files, expected):
        response = client.post("/classify_image", files={"image": ("item.png", png, "image/png")})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["class_id"] == int(row.argmax()) and body["label"] == labels[body["class_id"]]
        np.testing.assert_allclose([body["probabilities"][label] for label in labels], row, atol=1e-5)


def test_pixel_batch_answers_one_result_per_image_in_order(client, cnn_card):
    files, pixels = fashion_test_images(3)
    expected = offline_image_probabilities(cnn_card["tag"], files).argmax(1)
    response = client.post("/classify_pixels", json={"pixels": pixels.tolist()})
    assert response.status_code == 200
    assert [r["class_id"] for r in response.json()] == expected.tolist()


@pytest.mark.parametrize(
    "kwargs,error",
    [
        ({"files": {"image": ("x.png", b"hello", "image/png")}}, "not a readable PNG/JPEG image"),
        ({"files": {"image": ("x.png", b"", "image/png")}}, "empty"),
        ({"files": {"photo": ("x.png", b"123", "image/png")}}, "do not match the expected ['image']"),
        ({"content": b"", "headers": {"content-type": "multipart/form-data; boundary=x"}}, "do not match"),
    ],
)
def test_bad_uploads_get_400_with_a_json_error(client, kwargs, error):
    response = client.post("/classify_image", **kwargs)
    assert response.status_code == 400
    assert error in response.json()["error"]


def test_the_model_field_names_the_image_classifier_that_answers_and_no_other(client, cnn_card):
    """The family's own model by name answers as without the field; another family's model, a name not served,
    a second field or a model field that is not text are refused, naming what can answer."""
    (png,), _ = fashion_test_images(1)
    plain = client.post("/classify_image", files={"image": png})
    named = client.post("/classify_image", files={"image": png}, data={"model": "fashion-cnn"})
    assert named.status_code == 200 and named.json() == plain.json()
    assert named.headers["x-model-version"] == cnn_card["tag"]
    for other in ("wordnet-transformer", "fashion-diffusion", "fashion-diffusion-decoder", "no-such-model", ""):
        refused = client.post("/classify_image", files={"image": png}, data={"model": other})
        assert refused.status_code == 400
        assert refused.json()["error"] == f"model {other!r} cannot answer here; the models that can: fashion-cnn"
    long = client.post("/classify_image", files={"image": png}, data={"model": "m" * 100_000})
    assert long.status_code == 400 and len(long.json()["error"]) < 200
    twice = client.post(
        "/classify_image", files=[("image", ("x.png", png)), ("model", (None, b"a")), ("model", (None, b"b"))]
    )
    assert twice.status_code == 400 and "optionally 'model' (text)" in twice.json()["error"]
    as_file = client.post("/classify_image", files={"image": png, "model": ("m.txt", b"fashion-cnn")})
    assert as_file.status_code == 400 and "do not match the expected ['image']" in as_file.json()["error"]
    pixels = client.post("/classify_pixels", json={"pixels": [[[0] * 28] * 28], "model": "co2-lstm"})
    assert pixels.status_code == 400 and "the models that can: fashion-cnn" in pixels.json()["error"]


@pytest.mark.parametrize(
    "body,error",
    [
        (b'{"pixels": [[[1, 2]]]}', "pixels.0.0: List should have at least 28 items"),
        (b'{"pixels": []}', "pixels: List should have at least 1 item"),
        (b'{"pixels": [[[1, 2], [3]]]}', "pixels.0.0: List should have at least 28 items"),
        (b'{"pixels": "abc"}', "pixels: Input should be a valid array"),
        (b'{"pixel": []}', "pixels: Field required"),
        (b'{"pixels": [[[NaN]]]}', "pixels.0.0.0: Input should be a finite number"),
        (b"{not json", "Invalid JSON"),
        (b"", "body: Field required"),
    ],
)
def test_bad_pixel_batches_get_400_with_a_json_error(client, body, error):
    response = client.post("/classify_pixels", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert error in response.json()["error"]


def test_out_of_range_and_too_many_images_are_refused(client):
    dark = np.zeros((1, 28, 28))
    response = client.post("/classify_pixels", json={"pixels": (dark - 1).tolist()})
    assert response.status_code == 400 and "greater than or equal to 0" in response.json()["error"]
    response = client.post("/classify_pixels", json={"pixels": np.zeros((65, 28, 28)).tolist()})
    assert response.status_code == 400 and "pixels: List should have at most 64 items" in response.json()["error"]


def test_the_service_stays_healthy_after_bad_input(client):
    client.post("/classify_image", files={"image": ("x.png", b"\x89PNG garbage", "image/png")})
    assert client.get("/readyz").status_code == 200
    files, _ = fashion_test_images(1)
    assert client.post("/classify_image", files={"image": ("a.png", files[0], "image/png")}).status_code == 200


def test_booleans_are_not_pixel_values(client):
    # JSON Schema's numbers exclude true/false; pydantic's lax floats would take them as 1.0 and 0.0
    response = client.post("/classify_pixels", json={"pixels": [[[True] * 28] * 28]})
    assert response.status_code == 400 and "valid number" in response.json()["error"]
