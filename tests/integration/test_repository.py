"""The model repository as users meet it: their own imported models and two versions of one, served side by side."""

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from harness.servers import stop, wait_ready
from tests.integration.conftest import private_home, start_server
from tests.training.test_import import scale_graph, write
from training.import_model import import_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def repository_server(registered, session_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("imports")
    older = import_model(write(scale_graph(2.0), folder / "v1.onnx"), "scale")
    newer = import_model(write(scale_graph(3.0), folder / "v2.onnx"), "scale")
    fixed = import_model(write(scale_graph(5.0, batch=1), folder / "fixed.onnx"), "scale-fixed")
    home = private_home(session_dir, "repository-home")
    log_path = session_dir / "repository.log"
    process, url = start_server(home, log_path, extra_env={"MODELROAD_MODELS": f"{older},{newer},{fixed}"})
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


def test_an_unknown_version_is_404(repository_server):
    url, _, _ = repository_server
    with pytest.raises(InferenceServerException) as raised:
        scaled(triton.InferenceServerClient(url.removeprefix("http://")), "scale", 1, "nope")
    assert raised.value.status() == "404"
