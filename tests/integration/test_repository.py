"""The model repository as users meet it: their own imported models and two versions of one, served side by side,
and the repository extension rolling a new version out under traffic."""

from __future__ import annotations

import threading
import time

import bentoml
import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from harness.servers import stop, wait_ready
from tests.integration.conftest import private_home, start_server
from tests.training.test_import import scale_graph, sklearn_classifier, write
from training.import_model import import_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def zipmap_classifier(tmp_path_factory):
    """skl2onnx's default export of a scaler + classifier (ZipMap on), imported; its inputs and the pipeline."""
    path, x, pipeline = sklearn_classifier(tmp_path_factory.mktemp("sklearn"), True, ["coat", "dress", "shirt"])
    return import_model(path, "sk-zipmap"), x, pipeline


@pytest.fixture(scope="module")
def repository_server(registered, session_dir, tmp_path_factory, zipmap_classifier):
    folder = tmp_path_factory.mktemp("imports")
    older = import_model(write(scale_graph(2.0), folder / "v1.onnx"), "scale")
    newer = import_model(write(scale_graph(3.0), folder / "v2.onnx"), "scale")
    fixed = import_model(write(scale_graph(5.0, batch=1), folder / "fixed.onnx"), "scale-fixed")
    home = private_home(session_dir, "repository-home")
    log_path = session_dir / "repository.log"
    process, url = start_server(
        home, log_path, extra_env={"MODELROAD_MODELS": f"{older},{newer},{fixed},{zipmap_classifier[0]}"}
    )
    try:
        wait_ready(process, url, log_path)
        yield url, older.split(":")[1], newer.split(":")[1]
    finally:
        stop(process)


def scaled(client: triton.InferenceServerClient, model: str, rows: int, version: str = "") -> np.ndarray:
    x = triton.InferInput("x", [rows, 3], "FP32")
    x.set_data_from_numpy(np.ones((rows, 3), np.float32))
    return client.infer(model, [x], model_version=version).as_numpy("y")


def test_two_versions_of_an_imported_model_answer_side_by_side_and_latest_by_default(repository_server):
    url, older, newer = repository_server
    client = triton.InferenceServerClient(url.removeprefix("http://"))
    assert client.get_model_metadata("scale")["versions"] == [older, newer]
    assert scaled(client, "scale", 2, older).tolist() == [[2.0] * 3] * 2
    assert scaled(client, "scale", 2, newer).tolist() == [[3.0] * 3] * 2
    assert scaled(client, "scale", 1).tolist() == [[3.0] * 3]
    assert client.is_model_ready("scale", older) and client.is_model_ready("fashion-cnn-pipeline")


def test_a_model_with_a_fixed_batch_axis_runs_each_call_alone(repository_server):
    url, _, _ = repository_server
    client = triton.InferenceServerClient(url.removeprefix("http://"))
    assert client.get_model_metadata("scale-fixed")["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [1, 3]}]
    assert scaled(client, "scale-fixed", 1).tolist() == [[5.0] * 3]
    with pytest.raises(InferenceServerException, match="must have shape"):
        scaled(client, "scale-fixed", 2)


def test_a_scikit_learn_classifier_exported_with_zipmap_answers_every_output_as_a_tensor(
    repository_server, zipmap_classifier
):
    url, _, _ = repository_server
    _, x, pipeline = zipmap_classifier
    client = triton.InferenceServerClient(url.removeprefix("http://"))
    outputs = client.get_model_metadata("sk-zipmap")["outputs"]
    assert [o["datatype"] for o in outputs] == ["BYTES", "FP32"]
    features = triton.InferInput("X", list(x.shape), "FP32")
    for binary in (False, True):
        features.set_data_from_numpy(x, binary_data=binary)
        answer = client.infer("sk-zipmap", [features])  # no outputs named: every output, in JSON or binary
        np.testing.assert_allclose(answer.as_numpy("output_probability"), pipeline.predict_proba(x), atol=1e-5)
        labels = [v.decode() if isinstance(v, bytes) else v for v in answer.as_numpy("output_label").tolist()]
        assert labels == pipeline.predict(x).tolist()
    # Its class labels came from the ZipMap into the card: classification names them.
    top = [triton.InferRequestedOutput("output_probability", class_count=1)]
    classes = client.infer("sk-zipmap", [features], outputs=top).as_numpy("output_probability")
    assert [entry.decode().rsplit(":", 1)[1] for entry in classes[:, 0]] == pipeline.predict(x).tolist()


def test_an_unknown_version_is_404(repository_server):
    url, _, _ = repository_server
    with pytest.raises(InferenceServerException) as raised:
        scaled(triton.InferenceServerClient(url.removeprefix("http://")), "scale", 1, "nope")
    assert raised.value.status() == "404"


TOKEN = "s3cret-admin-token"


@pytest.fixture(scope="module")
def admin_server(registered, session_dir, tmp_path_factory):
    """Two workers with the repository extension on, serving version 1 of `rollout`."""
    folder = tmp_path_factory.mktemp("rollout")
    first = import_model(write(scale_graph(2.0), folder / "v1.onnx"), "rollout")
    home = private_home(session_dir, "admin-home")
    log_path = session_dir / "admin.log"
    env = {"MODELROAD_MODELS": first, "MODELROAD_ADMIN_TOKEN": TOKEN, "MODELROAD_WORKERS": "2"}
    process, url = start_server(home, log_path, extra_env=env)
    try:
        wait_ready(process, url, log_path, timeout=180)
        yield url, folder, log_path
    finally:
        stop(process)


def admin_client(url: str) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url.removeprefix("http://"))


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def answer_once(url: str, model: str = "rollout") -> tuple[int, float | None]:
    """One infer on a fresh connection (so that both workers answer): status and the factor the model applied."""
    body = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1.0, 1.0, 1.0]}]}
    response = httpx.post(f"{url}/v2/models/{model}/infer", json=body, timeout=30)
    return response.status_code, response.json()["outputs"][0]["data"][0] if response.status_code == 200 else None


class Traffic:
    """Requests to `rollout` from a thread, each on a new connection, until stopped: every status and factor seen."""

    def __init__(self, url: str):
        self.url, self.seen, self.running = url, [], True
        self.thread = threading.Thread(target=self._send)

    def _send(self) -> None:
        while self.running:
            self.seen.append(answer_once(self.url))

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.running = False
        self.thread.join()


def test_the_extension_refuses_requests_without_the_token_and_never_logs_it(admin_server):
    url, _, log_path = admin_server
    client = admin_client(url)
    with pytest.raises(InferenceServerException) as missing:
        client.get_model_repository_index()
    with pytest.raises(InferenceServerException) as wrong:
        client.load_model("rollout", headers={"Authorization": "Bearer not-the-token"})
    assert (missing.value.status(), wrong.value.status()) == ("401", "403")
    assert "Bearer" in missing.value.message() and "not the admin token" in wrong.value.message()
    assert httpx.post(f"{url}/v2/repository/index").headers["www-authenticate"] == "Bearer"
    assert "model_repository" in client.get_server_metadata()["extensions"]
    client.get_model_repository_index(headers=AUTH)
    assert TOKEN not in log_path.read_text()


def test_the_index_lists_the_store_with_what_is_served(admin_server):
    url, _, _ = admin_server
    index = admin_client(url).get_model_repository_index(headers=AUTH)
    states = {(e["name"], e["state"]) for e in index}
    assert {("rollout", "READY"), ("fashion-cnn", "READY"), ("fashion-cnn-pipeline", "READY")} <= states
    stored = {(str(m.tag.name), m.tag.version) for m in bentoml.models.list()}
    assert stored <= {(e["name"], e["version"]) for e in index}
    assert ("wordnet-transformer-int8", "UNAVAILABLE") in states  # in the store, not served
    only_ready = httpx.post(f"{url}/v2/repository/index", json={"ready": True}, headers=AUTH).json()
    assert only_ready and all(e["state"] == "READY" for e in only_ready)


def test_a_new_version_rolls_out_under_traffic_without_a_lost_request_then_unloads(admin_server):
    url, folder, _ = admin_server
    client = admin_client(url)
    older = client.get_model_metadata("rollout")["versions"]
    newer = import_model(write(scale_graph(3.0), folder / "v2.onnx"), "rollout").split(":")[1]
    with Traffic(url) as rollout:
        time.sleep(0.5)
        client.load_model("rollout", headers=AUTH)
        after = [answer_once(url) for _ in range(40)]  # both workers, on new connections
        time.sleep(0.3)
    assert {status for status, _ in rollout.seen} == {200}, "a request was lost during the rollout"
    assert {factor for _, factor in rollout.seen} == {2.0, 3.0}
    assert set(after) == {(200, 3.0)}, "a worker still served the old version after load returned"
    assert client.get_model_metadata("rollout")["versions"] == [newer]
    with pytest.raises(InferenceServerException) as retired:
        scaled(client, "rollout", 1, older[0])
    assert retired.value.status() == "404"

    with Traffic(url) as unload:
        time.sleep(0.3)
        client.unload_model("rollout", headers=AUTH)
        after = [answer_once(url)[0] for _ in range(20)]
    assert {status for status, _ in unload.seen} <= {200, 404} and set(after) == {404}
    assert ("rollout", newer, "UNAVAILABLE") in {
        (e["name"], e["version"], e["state"]) for e in client.get_model_repository_index(headers=AUTH)
    }
    assert httpx.get(f"{url}/readyz").status_code == 200


def test_refusals_of_the_extension(admin_server):
    url, _, _ = admin_server
    client = admin_client(url)
    cases = [
        (lambda: client.unload_model("fashion-cnn", headers=AUTH), "409", "family route"),
        (lambda: client.unload_model("fashion-cnn-pipeline", headers=AUTH), "404", "no stored model"),
        (lambda: client.load_model("no-such-model", headers=AUTH), "404", "no model named"),
        (lambda: client.load_model("Bad Name!", headers=AUTH), "400", "is not a model name"),
        (lambda: client.load_model("rollout", headers=AUTH, config="{}"), "400", "load takes the parameters `version`"),
    ]
    for call, status, message in cases:
        with pytest.raises(InferenceServerException) as refused:
            call()
        assert (refused.value.status(), message in refused.value.message()) == (status, True)
