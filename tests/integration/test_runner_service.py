"""The models in a runner service of their own, API workers calling it (MODELROAD_RUNNER_URL), both served for real."""

import asyncio
import time

import bentoml
import httpx
import numpy as np
import onnxruntime as ort
import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.servers import free_port, stop, wait_ready
from services.runtime.remote import NPZ, decode_feeds, encode_feeds
from tests.helpers import (
    co2_history,
    fashion_test_images,
    offline_forecast,
    offline_image_probabilities,
    offline_text_probabilities,
)
from tests.integration.conftest import private_home, start_server
from tests.training.test_import import scale_graph, write
from training.import_model import import_model

pytestmark = pytest.mark.slow
MODELS = ("fashion-cnn", "co2-lstm", "co2-gru", "wordnet-transformer")  # what the platform serves by default
EXTRA = "wordnet-transformer-int8"  # served beside them (MODELROAD_MODELS), by the API and by its runner
TOKEN = "split-admin-token"


def model_samples(url: str, model: str) -> dict[str, float]:
    """The server's modelroad_* samples for one model, by sample name (e.g. modelroad_batch_size_count)."""
    families = text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text)
    return {
        sample.name: sample.value
        for family in families
        if family.name.startswith("modelroad_")
        for sample in family.samples
        if sample.labels.get("model") == model
    }


def wait_for_warm_up_calls(runner: str, workers: int, timeout: float = 60) -> None:
    """Until every API worker has made its warm-up call of every model (/readyz answers once one worker is ready)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(model_samples(runner, m).get("modelroad_queue_seconds_count", 0) >= workers for m in MODELS):
            return
        time.sleep(0.3)
    raise AssertionError(f"the API workers did not all warm up through the runner within {timeout} s")


@pytest.fixture(scope="module")
def split(registered, session_dir):
    """(API url, runner url, runner process). The API starts first and waits for its runner, as pods may."""
    runner_port = free_port()
    runner_url = f"http://127.0.0.1:{runner_port}"
    api_log, runner_log = session_dir / "split-api.log", session_dir / "split-runner.log"
    # Two API workers; a lone call waits 20 ms on the runner for another worker's, so merging is certain under load.
    api, api_url = start_server(
        private_home(session_dir, "split-api"),
        api_log,
        extra_env={
            "MODELROAD_RUNNER_URL": runner_url,
            "MODELROAD_WORKERS": "2",
            "MODELROAD_MODELS": f"{EXTRA}:latest",
            "MODELROAD_ADMIN_TOKEN": TOKEN,
        },
    )
    runner, _ = start_server(
        private_home(session_dir, "split-runner"),
        runner_log,
        "services.runner_service:ModelRunner",
        extra_env={"MODELROAD_DEVICE": "cpu", "MODELROAD_MAX_WAIT_MS": "20", "MODELROAD_MODELS": f"{EXTRA}:latest"},
        port=runner_port,
    )
    try:
        wait_ready(runner, runner_url, runner_log)
        wait_ready(api, api_url, api_log)
        wait_for_warm_up_calls(runner_url, workers=2)
        yield api_url, runner_url, runner
    finally:
        stop(api)
        stop(runner)


def test_answers_through_the_runner_service_equal_the_offline_onnx_ones(split, registered):
    api, runner, _ = split
    before = {model: model_samples(runner, model) for model in MODELS}
    files, _ = fashion_test_images(4)
    expected = offline_image_probabilities(registered["fashion-cnn"]["tag"], files)
    labels = registered["fashion-cnn"]["labels"]
    for png, row in zip(files, expected):
        body = httpx.post(f"{api}/classify_image", files={"image": ("x.png", png, "image/png")}, timeout=10).json()
        np.testing.assert_allclose([body["probabilities"][label] for label in labels], row, atol=1e-5)
    history = co2_history()
    for cell in ("lstm", "gru"):
        body = httpx.post(f"{api}/forecast", json={"history": history, "horizon": 52, "model": cell}, timeout=10).json()
        np.testing.assert_allclose(
            body["forecast"], offline_forecast(registered[f"co2-{cell}"]["tag"], history, 52), atol=1e-3
        )
    texts = ["a small domesticated carnivore kept as a pet", "a sweet baked food made of flour and sugar"]
    card = registered["wordnet-transformer"]
    answers = httpx.post(f"{api}/classify_texts", json={"texts": texts}, timeout=10).json()
    got = np.array([[a["probabilities"][k] for k in card["labels"]] for a in answers])
    np.testing.assert_allclose(got, offline_text_probabilities(card["tag"], texts), atol=1e-5)
    # The runner computed them (the API has no session of its own), and the API names the runner's device.
    for model, calls in zip(MODELS, (4, 1, 1, 1)):
        count = "modelroad_queue_seconds_count"
        assert model_samples(runner, model)[count] - before[model][count] == calls, model
    assert 'modelroad_model_info{device="cpu",model="fashion-cnn"' in httpx.get(f"{api}/metrics").text


def fashion_counts(runner: str) -> tuple[float, float, float]:
    """The runner's (calls, batches, items) of the CNN so far."""
    samples = model_samples(runner, "fashion-cnn")
    return tuple(
        samples[name]
        for name in ("modelroad_queue_seconds_count", "modelroad_batch_size_count", "modelroad_batch_size_sum")
    )


def test_api_workers_send_batches_and_the_runner_batches_calls_together(split, registered):
    api, runner, _ = split
    files, _ = fashion_test_images(8)
    before = fashion_counts(runner)

    async def load() -> list[int]:
        async with httpx.AsyncClient(base_url=api, timeout=30, limits=httpx.Limits(max_connections=32)) as client:

            async def classify(i: int) -> int:
                png = files[i % len(files)]
                return (await client.post("/classify_image", files={"image": ("x.png", png, "image/png")})).status_code

            return await asyncio.gather(*(classify(i) for i in range(256)))

    assert set(asyncio.run(load())) == {200}
    calls, _, items = (after - b for after, b in zip(fashion_counts(runner), before))
    assert items == 256 and calls < 256  # every image once, in calls that each carried a worker's batch

    # Calls arriving together from different connections (API workers, pods) run as one batch.
    body = encode_feeds({"pixels": np.zeros((2, 1, 28, 28), np.float32)})

    async def call_together() -> list[int]:
        async def call() -> int:
            async with httpx.AsyncClient(base_url=runner, timeout=30) as client:  # a connection each
                return (await client.post(f"/run/{registered['fashion-cnn']['tag']}", content=body)).status_code

        return await asyncio.gather(*(call() for _ in range(16)))

    before = fashion_counts(runner)
    assert set(asyncio.run(call_together())) == {200}
    calls, batches, items = (after - b for after, b in zip(fashion_counts(runner), before))
    assert (calls, items) == (16, 32) and batches < calls


@pytest.mark.parametrize(
    "path,body,status,error",
    [
        (
            "/run/fashion-cnn:nope",
            encode_feeds({"pixels": np.zeros((1, 1, 28, 28), np.float32)}),
            404,
            "this runner serves",
        ),
        ("/run/{cnn}", b"not an archive", 400, "not an .npz archive"),
        (
            "/run/{cnn}",
            encode_feeds({"pixels": np.zeros((1, 1, 28, 28), np.float64)}),
            400,
            "pixels must be FP32; got float64",
        ),
        ("/run/{cnn}", encode_feeds({"pixels": np.zeros((1, 28, 28), np.float32)}), 400, "pixels must have shape"),
        ("/run/{cnn}", encode_feeds({"pixels": np.array([None, 1], dtype=object)}), 400, "plain arrays"),
    ],
)
def test_bad_calls_to_the_runner_get_a_4xx_json_error_and_it_goes_on(split, registered, path, body, status, error):
    _, runner, _ = split
    cnn = registered["fashion-cnn"]["tag"]
    response = httpx.post(runner + path.format(cnn=cnn), content=body, headers={"content-type": NPZ}, timeout=10)
    assert response.status_code == status and error in response.json()["error"]
    good = httpx.post(
        f"{runner}/run/{cnn}", content=encode_feeds({"pixels": np.zeros((3, 1, 28, 28), np.float32)}), timeout=10
    )
    assert good.status_code == 200 and good.headers["x-modelroad-device"] == "cpu"
    outputs = decode_feeds(good.content)
    assert outputs["logits"].shape == (3, 10) and outputs["ood_score"].shape == (3,)


def test_an_extra_model_is_served_through_the_runner_service_too(split, registered):
    api, runner, _ = split
    stored = bentoml.models.get(registered[EXTRA]["tag"])
    ids = np.array([[5, 17, 42, 9], [7, 3, 0, 0]], dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": (ids > 0).astype(np.int64)}
    body = {
        "inputs": [
            {"name": n, "shape": list(a.shape), "datatype": "INT64", "data": a.ravel().tolist()}
            for n, a in feeds.items()
        ]
    }
    before = model_samples(runner, EXTRA).get("modelroad_queue_seconds_count", 0)
    response = httpx.post(f"{api}/v2/models/{EXTRA}/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text
    session = ort.InferenceSession(stored.path_of("model.onnx"), providers=["CPUExecutionProvider"])
    expected = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    for output in response.json()["outputs"]:
        np.testing.assert_allclose(np.reshape(output["data"], output["shape"]), expected[output["name"]], atol=1e-4)
    assert model_samples(runner, EXTRA)["modelroad_queue_seconds_count"] > before  # the runner computed it


def test_the_runner_service_follows_load_and_the_split_and_closes_what_no_worker_serves(split, tmp_path):
    api, runner, _ = split
    first, second = (
        import_model(write(scale_graph(factor), tmp_path / f"v{factor}.onnx"), "gpu-layout").split(":")[1]
        for factor in (2.0, 3.0)
    )
    auth = {"Authorization": f"Bearer {TOKEN}"}
    repository = f"{api}/v2/repository/models/gpu-layout"
    body = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1.0, 1.0, 1.0]}]}

    def answers(n: int) -> set[tuple[str, float]]:
        seen = set()
        for _ in range(n):  # new connections: both API workers answer
            response = httpx.post(f"{api}/v2/models/gpu-layout/infer", json=body, timeout=30)
            assert response.status_code == 200, response.text
            seen.add((response.json()["model_version"], response.json()["outputs"][0]["data"][0]))
        return seen

    def loaded_on_runner() -> dict[str, float]:
        families = text_string_to_metric_families(httpx.get(f"{runner}/metrics", timeout=10).text)
        info = [s for f in families if f.name == "modelroad_model_info" for s in f.samples]
        return {s.labels["version"]: s.value for s in info if s.labels["model"] == "gpu-layout"}

    load = httpx.post(f"{repository}/load", json={"parameters": {"version": first}}, headers=auth, timeout=120)
    assert load.status_code == 200, load.text
    assert answers(6) == {(first, 2.0)}
    split_policy = {"split": {first: 50, second: 50}}
    assert httpx.post(f"{repository}/traffic", json=split_policy, headers=auth, timeout=120).status_code == 200
    assert answers(30) == {(first, 2.0), (second, 3.0)}
    assert (
        httpx.post(
            f"{repository}/load", json={"parameters": {"version": second}}, headers=auth, timeout=120
        ).status_code
        == 200
    )
    assert answers(6) == {(second, 3.0)}
    assert loaded_on_runner() == {first: 0.0, second: 1.0}, "the runner kept a version no API worker serves"


# Last: it stops the runner.
def test_without_its_runner_the_api_answers_503_with_retry_after_and_stays_up(split):
    api, _, runner = split
    stop(runner)
    text = httpx.post(f"{api}/classify_text", json={"text": "a small domesticated carnivore"}, timeout=10)
    files, _ = fashion_test_images(1)
    image = httpx.post(f"{api}/classify_image", files={"image": ("x.png", files[0], "image/png")}, timeout=10)
    for response in (text, image):
        assert response.status_code == 503
        assert "model runner" in response.json()["error"] and response.headers["retry-after"] == "1"
    assert httpx.get(f"{api}/livez").status_code == 200
