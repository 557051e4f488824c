"""/generate_images, its stream and its pipeline on the in-process platform service."""

import base64
import dataclasses
import io
import json

import numpy as np
import pytest
from PIL import Image

from contracts.sampling import GUIDANCE
from services.ops.metrics import GENERATED_IMAGES, GENERATION_STEPS


def decoded(image: str) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(image))) as png:
        assert png.format == "PNG" and png.mode == "L"
        return np.asarray(png)


def generate(client, **body) -> dict:
    response = client.post("/generate_images", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_images_of_a_class_come_as_pngs_with_their_seeds_and_version(client, registered):
    tag = registered["fashion-diffusion"]["tag"]
    response = client.post("/generate_images", json={"n": 3, "seed": 5, "label": "Sneaker", "steps": 4})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["seeds"] == [5, 6, 7] and body["label"] == "Sneaker" and body["model"] == tag
    assert body["steps"] == 4 and body["guidance"] == GUIDANCE
    images = [decoded(image) for image in body["images"]]
    assert [image.shape for image in images] == [(28, 28)] * 3
    assert response.headers["x-model-version"] == tag


def test_a_seed_gives_the_same_image_whatever_it_is_asked_with(client):
    three = generate(client, n=3, seed=40, label="Bag", steps=6)
    again = generate(client, n=3, seed=40, label="Bag", steps=6)
    second_alone = generate(client, n=1, seed=41, label="Bag", steps=6)
    assert three["images"] == again["images"]
    assert three["images"][1] == second_alone["images"][0]
    other_class = generate(client, n=1, seed=41, label="Trouser", steps=6)
    assert other_class["images"][0] != second_alone["images"][0]


def test_without_a_seed_the_server_draws_one_and_says_which(client):
    body = generate(client, n=2, steps=2)
    assert body["label"] is None and body["seeds"][1] == body["seeds"][0] + 1
    assert generate(client, n=1, seed=body["seeds"][1], steps=2)["images"][0] == body["images"][1]


def test_accept_png_answers_the_png_itself_for_one_image(client):
    response = client.post("/generate_images", json={"seed": 3, "steps": 3}, headers={"Accept": "image/png"})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert base64.b64encode(response.content).decode() == generate(client, seed=3, steps=3)["images"][0]
    refused = client.post("/generate_images", json={"n": 2, "steps": 3}, headers={"Accept": "image/png"})
    assert refused.status_code == 406 and "n 1" in refused.json()["error"]


@pytest.mark.parametrize(
    "body,error",
    [
        ({"n": 0}, "n: Input should be greater than or equal to 1"),
        ({"n": 17}, "n: Input should be less than or equal to 16"),
        ({"n": "2"}, "n: Input should be a valid integer"),
        ({"steps": 0}, "steps: Input should be greater than or equal to 1"),
        ({"steps": 101}, "steps: Input should be less than or equal to 100"),
        ({"seed": -1}, "seed: Input should be greater than or equal to 0"),
        ({"seed": 2**53}, "seed: Input should be less than or equal to 9007199254740991"),
        ({"guidance": -0.5}, "guidance: Input should be greater than or equal to 0"),
        ({"guidance": 11}, "guidance: Input should be less than or equal to 10"),
        ({"guidance": "2"}, "guidance: Input should be a valid number"),
        ({"n": 2.5}, "n: Input should be a valid integer"),
        ({"label": "Hat"}, "label: Input should be 'T-shirt/top'"),
        ({"colour": "red"}, "colour: Extra inputs are not permitted"),
        ([1, 2], "Input should be an object"),
    ],
)
def test_bad_generation_requests_get_400_saying_what_is_wrong(client, body, error):
    for path in ("/generate_images", "/generate_images/stream"):
        response = client.post(path, json=body)
        assert response.status_code == 400, response.text
        assert error in response.json()["error"]


def test_a_whole_number_written_as_a_float_is_an_integer_as_json_schema_says(client):
    assert generate(client, n=2.0, seed=40.0, steps=6.0, label="Bag")["seeds"] == [40, 41]


def test_a_nan_guidance_is_refused(client):
    body = b'{"guidance": NaN}'
    response = client.post("/generate_images", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and "guidance" in response.json()["error"]


def events_of(text: str) -> list[tuple[str, dict]]:
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        events.append((lines["event"], json.loads(lines["data"])))
    return events


def test_the_stream_sends_each_step_previews_and_then_the_images(client):
    body = {"n": 2, "seed": 9, "label": "Dress", "steps": 12}
    with client.stream("POST", "/generate_images/stream", json=body) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        events = events_of(response.read().decode())
    steps = [data for name, data in events if name == "step"]
    assert [s["step"] for s in steps] == list(range(1, 13)) and {s["of"] for s in steps} == {12}
    assert [s["step"] for s in steps if "preview" in s] == [5, 10]
    assert decoded(steps[4]["preview"]).shape == (28, 56)  # the two images side by side
    name, done = events[-1]
    assert name == "done" and done == generate(client, **body)


def test_steps_and_images_are_counted(client):
    steps, images = GENERATION_STEPS.labels("fashion-diffusion"), GENERATED_IMAGES.labels("fashion-diffusion")
    before = steps._value.get(), images._value.get()
    generate(client, n=3, steps=7)
    assert (steps._value.get(), images._value.get()) == (before[0] + 7, before[1] + 3)


def test_the_pipeline_generates_through_the_inference_protocol(client):
    inputs = [
        {"name": "seed", "datatype": "INT64", "shape": [1], "data": [40]},
        {"name": "n", "datatype": "INT64", "shape": [1], "data": [3]},
        {"name": "label", "datatype": "BYTES", "shape": [1], "data": ["Bag"]},
        {"name": "steps", "datatype": "INT64", "shape": [1], "data": [6]},
    ]
    response = client.post("/v2/models/fashion-diffusion-pipeline/infer", json={"inputs": inputs})
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert outputs["images"]["shape"] == [3, 28, 28] and outputs["seeds"]["data"] == [40, 41, 42]
    images = np.array(outputs["images"]["data"], dtype=np.uint8).reshape(3, 28, 28)
    expected = generate(client, n=3, seed=40, label="Bag", steps=6)["images"]
    assert all(np.array_equal(image, decoded(png)) for image, png in zip(images, expected))
    bad = client.post("/v2/models/fashion-diffusion-pipeline/infer", json={"inputs": [inputs[0]]})
    assert bad.status_code == 400 and "n" in bad.json()["error"]


def test_the_decoder_is_served_as_a_raw_model(client):
    latents = np.zeros((2, 32), dtype=np.float32)
    body = {"inputs": [{"name": "latents", "datatype": "FP32", "shape": [2, 32], "data": latents.ravel().tolist()}]}
    response = client.post("/v2/models/fashion-diffusion-decoder/infer", json=body)
    assert response.status_code == 200, response.text
    (pixels,) = response.json()["outputs"]
    assert pixels["name"] == "pixels" and pixels["shape"] == [2, 1, 28, 28]


def test_the_request_timeout_covers_the_streams_whole_loop_and_ends_it_with_an_error_event(client, monkeypatch):
    from services.families import generation

    monkeypatch.setattr(generation, "SETTINGS", dataclasses.replace(generation.SETTINGS, request_timeout_s=0.0))
    with client.stream("POST", "/generate_images/stream", json={"n": 2, "steps": 50}) as response:
        assert response.status_code == 200  # the stream had begun: the failure is an event, not a status
        events = events_of(response.read().decode())
    assert events == [("error", {"error": "no answer within the request timeout of 0 s"})]


def test_the_gan_draws_in_one_step_when_a_request_names_it(client, registered):
    tag = registered["fashion-gan"]["tag"]
    steps = GENERATION_STEPS.labels("fashion-gan")
    before = steps._value.get()
    body = generate(client, model="fashion-gan", n=3, seed=5, label="Sneaker")
    assert body["model"] == tag and body["seeds"] == [5, 6, 7] and body["label"] == "Sneaker"
    assert body["steps"] == 1 and body["guidance"] is None
    assert [decoded(image).shape for image in body["images"]] == [(28, 28)] * 3
    assert steps._value.get() == before + 1  # one generator call for the three images
    assert generate(client, n=1, seed=5, label="Sneaker", steps=3)["model"].startswith("fashion-diffusion:")


def test_a_gan_image_depends_on_its_seed_alone(client):
    three = generate(client, model="fashion-gan", n=3, seed=40, label="Bag")
    second_alone = generate(client, model="fashion-gan", n=1, seed=41, label="Bag")
    assert three["images"][1] == second_alone["images"][0]
    assert generate(client, model="fashion-gan", n=3, seed=40, label="Bag") == three
    other_class = generate(client, model="fashion-gan", n=1, seed=41, label="Trouser")
    assert other_class["images"][0] != second_alone["images"][0]
    anyclass = generate(client, model="fashion-gan", n=4, seed=7)  # each image's class drawn from its seed
    assert anyclass["images"][2] == generate(client, model="fashion-gan", n=1, seed=9)["images"][0]


def test_the_gans_stream_sends_one_done_event(client):
    body = {"model": "fashion-gan", "n": 2, "seed": 9, "label": "Dress"}
    with client.stream("POST", "/generate_images/stream", json=body) as response:
        assert response.status_code == 200
        events = events_of(response.read().decode())
    assert events == [("done", generate(client, **body))]


def test_an_unknown_generator_gets_400_naming_the_generators(client):
    for path in ("/generate_images", "/generate_images/stream"):
        response = client.post(path, json={"model": "fashion-vae"})
        assert response.status_code == 400, response.text
        assert "model: Input should be 'fashion-diffusion' or 'fashion-gan'" in response.json()["error"]


def test_the_gan_takes_the_diffusion_settings_and_says_it_drew_in_one_step(client):
    plain = generate(client, model="fashion-gan", n=2, seed=3, label="Coat")
    tuned = generate(client, model="fashion-gan", n=2, seed=3, label="Coat", steps=10, guidance=2)
    assert tuned == plain and (tuned["steps"], tuned["guidance"]) == (1, None)


def test_the_gans_pipeline_and_generator_are_served_by_the_inference_protocol(client):
    inputs = [
        {"name": "seed", "datatype": "INT64", "shape": [1], "data": [40]},
        {"name": "n", "datatype": "INT64", "shape": [1], "data": [2]},
        {"name": "label", "datatype": "BYTES", "shape": [1], "data": ["Bag"]},
    ]
    response = client.post("/v2/models/fashion-gan-pipeline/infer", json={"inputs": inputs})
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    images = np.array(outputs["images"]["data"], dtype=np.uint8).reshape(2, 28, 28)
    expected = generate(client, model="fashion-gan", n=2, seed=40, label="Bag")["images"]
    assert all(np.array_equal(image, decoded(png)) for image, png in zip(images, expected))
    steps = {"name": "steps", "datatype": "INT64", "shape": [1], "data": [6]}
    tuned = client.post("/v2/models/fashion-gan-pipeline/infer", json={"inputs": [*inputs, steps]})
    assert tuned.status_code == 200 and tuned.json()["outputs"] == response.json()["outputs"]
    noise = {"name": "noise", "datatype": "FP32", "shape": [1, 64], "data": [0.0] * 64}
    labels = {"name": "labels", "datatype": "INT64", "shape": [1], "data": [8]}
    raw = client.post("/v2/models/fashion-gan/infer", json={"inputs": [noise, labels]})
    assert raw.status_code == 200 and raw.json()["outputs"][0]["shape"] == [1, 1, 28, 28]
