"""The generator on a real `bentoml serve`: the event stream read by an HTTP client to its end, a client that goes
away stopping its loop, seeds that hold whatever else is batched, and the pipeline through tritonclient."""

import asyncio
import base64
import io
import json
import os
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from harness.servers import stop, wait_ready
from tests.integration.conftest import start_server

pytestmark = pytest.mark.slow


def steps_taken(url: str) -> float:
    """The generator's denoising steps so far, all workers together."""
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text):
        if family.name == "modelroad_generation_steps":
            return sum(s.value for s in family.samples if s.labels.get("model") == "fashion-diffusion")
    return 0.0


def pixels(image: str) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(image))) as png:
        return np.asarray(png)


def test_the_stream_is_read_to_its_end_by_an_http_client(server):
    body = {"n": 2, "seed": 77, "label": "Coat", "steps": 10}
    events = []
    with httpx.stream("POST", f"{server}/generate_images/stream", json=body, timeout=30) as response:
        assert response.status_code == 200 and response.headers["x-model-version"].startswith("fashion-diffusion:")
        name = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((name, json.loads(line.removeprefix("data: "))))
    assert [data["step"] for name, data in events if name == "step"] == list(range(1, 11))
    assert events[-1][0] == "done"
    whole = httpx.post(f"{server}/generate_images", json=body, timeout=30).json()
    assert events[-1][1] == whole


def test_a_client_that_goes_away_stops_its_generation(server):
    before = steps_taken(server)
    body = {"n": 16, "seed": 1, "steps": 100}
    with httpx.stream("POST", f"{server}/generate_images/stream", json=body, timeout=30) as response:
        lines = response.iter_lines()
        seen = 0
        while seen < 3:
            seen += next(lines).startswith("event: step")
    # The connection is closed here, three steps in.
    time.sleep(1.0)
    settled = steps_taken(server)
    time.sleep(1.0)
    assert steps_taken(server) == settled, "the loop went on after its client left"
    assert settled - before < 60, f"{settled - before:.0f} of 100 steps taken for a client that left after 3"


def test_a_seed_gives_the_same_images_whatever_is_batched_with_it(server):
    asks = [
        {"n": 1, "seed": 500, "label": "Sandal", "steps": 20},
        {"n": 5, "seed": 600, "label": "Shirt", "steps": 20},
        {"n": 16, "seed": 700, "steps": 12, "guidance": 1.5},
        {"n": 3, "seed": 800, "label": "Bag", "steps": 30},
    ]

    async def together() -> list[dict]:
        async with httpx.AsyncClient(base_url=server, timeout=60) as client:
            answers = await asyncio.gather(*(client.post("/generate_images", json=ask) for ask in asks * 3))
        assert all(a.status_code == 200 for a in answers), [a.text for a in answers if a.status_code != 200]
        return [a.json() for a in answers]

    concurrent = asyncio.run(together())
    for i, ask in enumerate(asks):
        alone = httpx.post(f"{server}/generate_images", json=ask, timeout=60).json()
        for answer in concurrent[i :: len(asks)]:
            assert answer["images"] == alone["images"], f"{ask} differs when batched with others"


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_the_pipeline_answers_tritonclient_with_the_routes_images(server, binary):
    client = triton.InferenceServerClient(server.removeprefix("http://"), network_timeout=60)
    inputs = []
    for name, datatype, value in (
        ("seed", "INT64", np.array([90], np.int64)),
        ("n", "INT64", np.array([4], np.int64)),
        ("label", "BYTES", np.array([b"Trouser"], np.object_)),
        ("steps", "INT64", np.array([8], np.int64)),
    ):
        tensor = triton.InferInput(name, [1], datatype)
        tensor.set_data_from_numpy(value, binary_data=binary)
        inputs.append(tensor)
    outputs = [triton.InferRequestedOutput(name, binary_data=binary) for name in ("images", "seeds")]
    result = client.infer("fashion-diffusion-pipeline", inputs, outputs=outputs)
    client.close()
    images = result.as_numpy("images")
    assert images.dtype == np.uint8 and images.shape == (4, 28, 28)
    assert result.as_numpy("seeds").tolist() == [90, 91, 92, 93]
    expected = httpx.post(
        f"{server}/generate_images", json={"n": 4, "seed": 90, "label": "Trouser", "steps": 8}, timeout=30
    ).json()
    assert all(np.array_equal(image, pixels(png)) for image, png in zip(images, expected["images"]))


def test_a_server_without_the_generator_serves_the_other_families(registered, session_dir):
    """MODELROAD_GENERATION_MODEL and _GAN_MODEL empty: a store without the generators starts, without their routes."""
    home = session_dir / "no-generator"
    (home / "models").mkdir(parents=True)
    for name in ("fashion-cnn", "co2-lstm", "co2-gru", "wordnet-transformer"):
        (home / "models" / name).symlink_to(Path(os.environ["BENTOML_HOME"]) / "models" / name)
    log_path = session_dir / "no-generator.log"
    process, url = start_server(home, log_path, extra_env={"MODELROAD_GENERATION_MODEL": "", "MODELROAD_GAN_MODEL": ""})
    try:
        wait_ready(process, url, log_path)
        assert httpx.post(f"{url}/classify_text", json={"text": "a small dog"}).status_code == 200
        assert httpx.post(f"{url}/generate_images", json={"n": 1}).status_code == 404
        assert "/generate_images" not in httpx.get(f"{url}/docs.json").json()["paths"]
    finally:
        stop(process)
