"""Triton's own gRPC client (`tritonclient[grpc]`) against a real `bentoml serve` with 2 workers on one gRPC port:
every model and pipeline, raw and typed contents, async calls, keys, the repository RPCs, the health service,
the metrics, a second server refused the port, and the drain."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import time

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.http as triton_http
import tritonclient.utils.shared_memory as shm
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import model_config_pb2
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc
from tritonclient.utils import InferenceServerException

from harness.servers import free_port, stop, wait_ready
from loadtests.infer import main
from tests.helpers import co2_history, fashion_test_images, offline_forecast, offline_image_probabilities
from tests.integration.conftest import ROOT, private_home, start_server

pytestmark = pytest.mark.slow

KEY, TOKEN = "grpc-key-0123456789", "grpc-admin-token"
AUTH = {"authorization": f"Bearer {KEY}"}
TEXTS = ["a small domesticated carnivore kept as a pet", "a sweet baked food made of flour and sugar"]


@pytest.fixture(scope="module")
def payload_folder(tmp_path_factory):
    return tmp_path_factory.mktemp("grpc-payloads")


@pytest.fixture(scope="module")
def grpc_server(registered, session_dir, tmp_path_factory, payload_folder):
    """(process, http url, grpc address, log path): keys, the admin token, a payload log, 2 workers, gRPC on a
    free port."""
    keys_file = tmp_path_factory.mktemp("grpc-keys") / "keys"
    keys_file.write_text(f"sha256:{hashlib.sha256(KEY.encode()).hexdigest()}\n")
    port = free_port()
    env = {
        "MODELROAD_GRPC_PORT": str(port),
        "MODELROAD_WORKERS": "2",
        "MODELROAD_API_KEYS_FILE": str(keys_file),
        "MODELROAD_ADMIN_TOKEN": TOKEN,
        "MODELROAD_DRAIN_S": "2",
        "MODELROAD_PAYLOAD_LOG": str(payload_folder),
        "MODELROAD_SHARED_MEMORY": "1",
    }
    log_path = session_dir / "grpc.log"
    process, url = start_server(private_home(session_dir, "grpc-home"), log_path, extra_env=env)
    try:
        wait_ready(process, url, log_path)
        yield process, url, f"127.0.0.1:{port}", log_path
    finally:
        stop(process)


@pytest.fixture(scope="module")
def client(grpc_server):
    with triton.InferenceServerClient(grpc_server[2]) as c:
        yield c


def infer(client, model: str, array: np.ndarray, name: str, datatype: str, **kwargs) -> triton.InferResult:
    tensor = triton.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return client.infer(model, [tensor], **{"headers": AUTH, **kwargs})


def test_probes_metadata_and_readiness(client, registered):
    assert client.is_server_live() and client.is_server_ready()  # probes: no key needed
    metadata = client.get_server_metadata(headers=AUTH)
    extensions = [
        *("binary_tensor_data", "classification", "model_configuration", "statistics"),
        *("model_repository", "system_shared_memory"),
    ]
    assert metadata.name == "modelroad" and list(metadata.extensions) == extensions
    version = registered["fashion-cnn"]["tag"].split(":")[1]
    described = client.get_model_metadata("fashion-cnn", version, headers=AUTH)
    assert list(described.versions) == [version] and described.inputs[0].datatype == "FP32"
    assert list(described.inputs[0].shape) == [-1, 1, 28, 28]
    for name in ("fashion-cnn", "co2-lstm-pipeline", "wordnet-transformer-pipeline"):
        assert client.is_model_ready(name, headers=AUTH)


def test_every_pipeline_answers_as_the_offline_model_raw_and_async(client, registered, payload_folder):
    files, pixels = fashion_test_images(3)
    expected = offline_image_probabilities(registered["fashion-cnn"]["tag"], files)
    by_file = infer(
        client,
        "fashion-cnn-pipeline",
        np.array(files, dtype=np.object_),
        "image",
        "BYTES",
        request_id="r-9",
        headers={**AUTH, "x-request-id": "grpc-call-9"},
    )
    np.testing.assert_allclose(by_file.as_numpy("probabilities"), expected, atol=1e-5)
    assert by_file.get_response().id == "r-9" and by_file.as_numpy("ood_score").shape == (3,)
    deadline = time.monotonic() + 10  # the payload log is written off the request path
    while time.monotonic() < deadline and "grpc-call-9" not in "".join(
        path.read_text() for path in payload_folder.glob("payloads-*.jsonl")
    ):
        time.sleep(0.1)
    logged = [
        json.loads(line) for path in payload_folder.glob("payloads-*.jsonl") for line in path.read_text().splitlines()
    ]
    assert [line["model"] for line in logged if line["request_id"] == "grpc-call-9"] == ["fashion-cnn"] * 3

    history = co2_history()
    for cell in ("lstm", "gru"):
        result = infer(client, f"co2-{cell}-pipeline", np.asarray([history], np.float32), "history", "FP32")
        expected_forecast = offline_forecast(registered[f"co2-{cell}"]["tag"], history, 52)
        np.testing.assert_allclose(result.as_numpy("forecast")[0], expected_forecast, atol=0.05)

    texts = np.array([t.encode() for t in TEXTS], dtype=np.object_)
    labels = infer(client, "wordnet-transformer-pipeline", texts, "text", "BYTES").as_numpy("label")
    assert {label.decode() for label in labels} <= set(registered["wordnet-transformer"]["labels"])

    answers: queue.Queue = queue.Queue()
    tensor = triton.InferInput("pixels", list(pixels.shape), "FP32")
    tensor.set_data_from_numpy(pixels.astype(np.float32))
    for _ in range(8):
        client.async_infer(
            "fashion-cnn-pipeline", [tensor], lambda result, error: answers.put((result, error)), headers=AUTH
        )
    for _ in range(8):
        result, error = answers.get(timeout=30)
        assert error is None and result.as_numpy("class_id").tolist() == expected.argmax(1).tolist()


def test_the_model_configuration_and_classification_as_tritonclient_asks(client, registered):
    version = registered["fashion-cnn"]["tag"].split(":")[1]
    config = client.get_model_config("fashion-cnn", version, headers=AUTH).config
    assert (config.name, config.platform, config.max_batch_size) == ("fashion-cnn", "onnxruntime_onnx", 64)
    pixels = ("pixels", model_config_pb2.TYPE_FP32, [1, 28, 28])
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [pixels]
    assert config.dynamic_batching.max_queue_delay_microseconds == 1000
    with pytest.raises(InferenceServerException) as unknown:
        client.get_model_config("no-such-model", headers=AUTH)
    assert (
        unknown.value.status() == "StatusCode.NOT_FOUND" and "no model named 'no-such-model'" in unknown.value.message()
    )
    files, _ = fashion_test_images(2)
    expected = offline_image_probabilities(registered["fashion-cnn"]["tag"], files)
    image = triton.InferInput("image", [2], "BYTES")
    image.set_data_from_numpy(np.array(files, dtype=np.object_))
    wanted = [triton.InferRequestedOutput("probabilities", class_count=3)]
    top = client.infer("fashion-cnn-pipeline", [image], outputs=wanted, headers=AUTH).as_numpy("probabilities")
    answered = [[entry.decode().split(":") for entry in row] for row in top]
    assert [[int(index) for _, index, _ in row] for row in answered] == np.argsort(-expected)[:, :3].tolist()
    np.testing.assert_allclose(
        [[float(s) for s, _, _ in row] for row in answered], np.sort(expected)[:, ::-1][:, :3], atol=1e-5
    )
    with pytest.raises(InferenceServerException) as refused:
        client.infer(
            "fashion-cnn-pipeline", [image], outputs=[triton.InferRequestedOutput("label", class_count=1)], headers=AUTH
        )
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT" and "needs numeric scores" in refused.value.message()


def test_statistics_sum_every_workers_calls_and_agree_over_both_protocols(grpc_server, client, registered):
    version = registered["fashion-cnn"]["tag"].split(":")[1]
    rest = triton_http.InferenceServerClient(grpc_server[1].removeprefix("http://"))

    def over_rest() -> dict:
        return rest.get_inference_statistics("fashion-cnn", version, headers=AUTH)["model_stats"][0]

    before = over_rest()
    for _ in range(8):  # a channel each: the kernel spreads new connections over the 2 workers' shared port
        with triton.InferenceServerClient(grpc_server[2]) as fresh:
            infer(fresh, "fashion-cnn", np.zeros((2, 1, 28, 28), np.float32), "pixels", "FP32")
    after = over_rest()
    assert after["inference_count"] - before["inference_count"] == 16
    assert after["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"] == 8
    assert after["inference_stats"]["queue"]["count"] - before["inference_stats"]["queue"]["count"] == 8
    assert 1 <= after["execution_count"] - before["execution_count"] <= 8
    (over_grpc,) = client.get_inference_statistics("fashion-cnn", version, headers=AUTH).model_stats
    assert over_grpc.inference_count == after["inference_count"]
    assert over_grpc.execution_count == after["execution_count"]
    assert over_grpc.inference_stats.compute_infer.ns == after["inference_stats"]["compute_infer"]["ns"]
    assert {(s.name, s.version) for s in client.get_inference_statistics(headers=AUTH).model_stats} >= {
        ("fashion-cnn", version),
        ("fashion-cnn-pipeline", version),
    }
    with pytest.raises(InferenceServerException) as unknown:
        client.get_inference_statistics("no-such-model", headers=AUTH)
    assert unknown.value.status() == "StatusCode.NOT_FOUND" and "no model named" in unknown.value.message()
    rest.close()


def refuse_what_lies_outside_the_regions(rest, client, sizes: dict[str, int]) -> None:
    """An output bigger than its place, an input past its region: refused by name (the regions stay)."""
    small = triton.InferRequestedOutput("logits")
    small.set_shared_memory("out", 16)
    tensor = triton.InferInput("pixels", [4, 1, 28, 28], "FP32")
    tensor.set_shared_memory("in", sizes["in"])
    with pytest.raises(InferenceServerException) as too_small:
        client.infer("fashion-cnn", [tensor], outputs=[small], headers=AUTH)
    assert too_small.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "more than the 16 asked" in too_small.value.message()
    past = triton_http.InferInput("pixels", [4, 1, 28, 28], "FP32")
    past.set_shared_memory("in", sizes["in"], offset=8)
    with pytest.raises(InferenceServerException) as beyond:
        rest.infer("fashion-cnn", [past], headers=AUTH)
    assert beyond.value.status() == "400" and "run past region 'in'" in beyond.value.message()


def test_inputs_and_outputs_in_system_shared_memory_over_both_protocols(grpc_server, client):
    rest = triton_http.InferenceServerClient(grpc_server[1].removeprefix("http://"))
    pixels = np.random.default_rng(0).normal(size=(4, 1, 28, 28)).astype(np.float32)
    expected = infer(client, "fashion-cnn", pixels, "pixels", "FP32").as_numpy("logits")
    keys = {"in": f"/modelroad-in-{os.getpid()}", "out": f"/modelroad-out-{os.getpid()}"}
    sizes = {"in": pixels.nbytes, "out": expected.nbytes}
    handles = {name: shm.create_shared_memory_region(name, keys[name], sizes[name]) for name in keys}
    try:
        shm.set_shared_memory_region(handles["in"], [pixels])
        rest.register_system_shared_memory("in", keys["in"], sizes["in"], headers=AUTH)
        client.register_system_shared_memory("out", keys["out"], sizes["out"], headers=AUTH)
        listed = rest.get_system_shared_memory_status(headers=AUTH)
        assert {(r["name"], r["key"], r["byte_size"]) for r in listed} == {(n, keys[n], sizes[n]) for n in keys}
        assert set(client.get_system_shared_memory_status(headers=AUTH).regions) == {"in", "out"}
        for module, protocol_client in ((triton_http, rest), (triton, client)):  # a region from either, on both
            for _ in range(4):  # several calls: both workers answer from the regions the record names
                shm.set_shared_memory_region(handles["out"], [np.zeros_like(expected)])
                tensor = module.InferInput("pixels", list(pixels.shape), "FP32")
                tensor.set_shared_memory("in", sizes["in"])
                wanted = module.InferRequestedOutput("logits")
                wanted.set_shared_memory("out", sizes["out"])
                protocol_client.infer("fashion-cnn", [tensor], outputs=[wanted], headers=AUTH)
                answered = shm.get_contents_as_numpy(handles["out"], np.float32, list(expected.shape))
                np.testing.assert_allclose(answered, expected, atol=1e-5)
        refuse_what_lies_outside_the_regions(rest, client, sizes)
        rest.unregister_system_shared_memory("in", headers=AUTH)
        tensor = triton.InferInput("pixels", list(pixels.shape), "FP32")
        tensor.set_shared_memory("in", sizes["in"])
        with pytest.raises(InferenceServerException) as gone:
            client.infer("fashion-cnn", [tensor], headers=AUTH)
        assert "no shared memory region 'in' is registered" in gone.value.message()
        assert set(client.get_system_shared_memory_status(headers=AUTH).regions) == {"out"}
    finally:
        rest.unregister_system_shared_memory(headers=AUTH)
        for handle in handles.values():
            shm.destroy_shared_memory_region(handle)
        rest.close()
    assert client.get_system_shared_memory_status(headers=AUTH).regions == {}


def test_typed_contents_and_requested_outputs_through_a_generated_stub(grpc_server, registered):
    _, pixels = fashion_test_images(2)
    request = pb.ModelInferRequest(model_name="fashion-cnn-pipeline", id="typed")
    request.inputs.add(name="pixels", datatype="FP32", shape=pixels.shape).contents.fp32_contents.extend(
        pixels.astype(np.float32).ravel().tolist()
    )
    request.outputs.add(name="class_id")
    with grpc.insecure_channel(grpc_server[2]) as channel:
        response, call = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer.with_call(request, metadata=AUTH.items())
    assert [o.name for o in response.outputs] == ["class_id"] and response.id == "typed"
    assert np.frombuffer(response.raw_output_contents[0], np.int64).shape == (2,)
    version = registered["fashion-cnn"]["tag"]
    assert ("x-model-version", version) in call.trailing_metadata()


def test_every_refusal_is_a_grpc_status_with_the_rest_message(grpc_server, client):
    address = grpc_server[2]
    fine = np.zeros((1, 1, 28, 28), np.float32)
    cases = [
        (lambda: infer(client, "fashion-cnn", fine, "image", "FP32"), "INVALID_ARGUMENT", "has no input ['image']"),
        (lambda: infer(client, "fashion-cnn", fine[0], "pixels", "FP32"), "INVALID_ARGUMENT", "must have shape"),
        (
            lambda: infer(client, "fashion-cnn", fine.astype(np.float64), "pixels", "FP64"),
            "INVALID_ARGUMENT",
            "must be FP32",
        ),
        (lambda: infer(client, "no-such-model", fine, "pixels", "FP32"), "NOT_FOUND", "no model named 'no-such-model'"),
        (lambda: client.get_model_metadata("fashion-cnn", "0", headers=AUTH), "NOT_FOUND", "has no version '0'"),
        (lambda: infer(client, "fashion-cnn", fine, "pixels", "FP32", headers={}), "UNAUTHENTICATED", "API key"),
        (
            lambda: client.get_model_metadata("fashion-cnn", headers={"x-api-key": "wrong"}),
            "UNAUTHENTICATED",
            "API key",
        ),
        (
            lambda: infer(client, "fashion-cnn-pipeline", np.array([b"not an image"], np.object_), "image", "BYTES"),
            "INVALID_ARGUMENT",
            "image",
        ),
    ]
    for call, code, message in cases:
        with pytest.raises(InferenceServerException) as raised:
            call()
        assert raised.value.status() == f"StatusCode.{code}" and message in raised.value.message(), raised.value

    bad_length = pb.ModelInferRequest(model_name="fashion-cnn")
    bad_length.inputs.add(name="pixels", datatype="FP32", shape=[1, 1, 28, 28])
    bad_length.raw_input_contents.append(b"\0" * 100)
    with grpc.insecure_channel(address) as channel, pytest.raises(grpc.RpcError) as raised:
        pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(bad_length, metadata=AUTH.items())
    assert (
        raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        and "needs 3136 bytes; got 100" in raised.value.details()
    )
    too_large = np.zeros((400, 1, 28, 28 * 10), np.float32)  # 12.5 MB: over the 10 MiB body limit
    with pytest.raises(InferenceServerException) as raised:
        infer(client, "fashion-cnn", too_large, "pixels", "FP32")
    assert raised.value.status() == "StatusCode.RESOURCE_EXHAUSTED"


def test_repository_rpcs_need_the_admin_token(client):
    for headers, code in (({}, "UNAUTHENTICATED"), ({"authorization": "Bearer wrong"}, "PERMISSION_DENIED")):
        with pytest.raises(InferenceServerException) as raised:
            client.get_model_repository_index(headers=headers)
        assert raised.value.status() == f"StatusCode.{code}"
    admin = {"authorization": f"Bearer {TOKEN}"}
    index = client.get_model_repository_index(headers=admin)
    assert {"fashion-cnn", "fashion-cnn-pipeline"} <= {m.name for m in index.models if m.state == "READY"}
    client.load_model("fashion-cnn", headers=admin)  # the latest again: served as before
    assert client.is_model_ready("fashion-cnn", headers=AUTH)
    with pytest.raises(InferenceServerException) as raised:
        client.unload_model("fashion-cnn", headers=admin)
    assert (
        raised.value.status() == "StatusCode.FAILED_PRECONDITION" and "serves a family route" in raised.value.message()
    )
    with pytest.raises(InferenceServerException) as raised:
        client.load_model("no-such-model", headers=admin)
    assert raised.value.status() == "StatusCode.NOT_FOUND"


def test_the_health_service_and_the_metrics(grpc_server, client):
    _, url, address, _ = grpc_server
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service)).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as raised:
            health.Check(health_pb2.HealthCheckRequest(service="nope"))
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    infer(client, "fashion-cnn", np.zeros((1, 1, 28, 28), np.float32), "pixels", "FP32")
    exposition = httpx.get(f"{url}/metrics").text
    answered = re.search(
        r'modelroad_requests_total\{endpoint="/inference.GRPCInferenceService/ModelInfer",method="POST",'
        r'protocol="grpc",status="200"\} (\S+)',
        exposition,
    )
    assert answered and float(answered.group(1)) >= 1
    assert 'endpoint="/inference.GRPCInferenceService/ModelInfer",reason="unauthorized"' in exposition


def test_a_second_server_on_the_same_grpc_port_fails_to_start_with_a_clear_error(grpc_server, session_dir):
    port = grpc_server[2].rpartition(":")[2]
    log_path = session_dir / "grpc-second.log"
    process, _ = start_server(
        private_home(session_dir, "grpc-second-home"), log_path, extra_env={"MODELROAD_GRPC_PORT": port}
    )
    try:
        process.wait(120)  # it stops by itself (BentoML would restart a worker that fails to start, for ever)
    finally:
        stop(process)
    assert f"gRPC port {port} is served by another modelroad server" in log_path.read_text()
    with triton.InferenceServerClient(grpc_server[2]) as first:  # the first server keeps its port, all of it
        assert first.is_server_ready()


def test_the_load_generator_and_a_locust_user_speak_grpc(grpc_server, tmp_path, monkeypatch, capsys):
    _, url, address, _ = grpc_server
    monkeypatch.setenv("MODELROAD_API_KEY", KEY)
    short = ["--warmup", "0.5", "--window", "1", "--max-seconds", "4", "--out", str(tmp_path / "infer")]
    grpc_args = ["--model", "fashion-cnn", "--protocol", "grpc", "--grpc"]
    status = main([url, *grpc_args, address, "--concurrency", "1,4", *short])
    assert status == 0, capsys.readouterr()
    steps = json.loads((tmp_path / "infer" / "steps.json").read_text())["steps"]
    assert [s["load"] for s in steps] == ["c=1", "c=4"] and all(list(s["statuses"]) == ["200"] for s in steps)
    assert steps[0]["server_compute_ms"] > 0  # the gRPC calls ran on the platform's runners
    assert main([url, *grpc_args, "127.0.0.1:9", *short]) == 2  # nothing there: one line, exit 2

    out = tmp_path / "locust"
    command = [sys.executable, "-m", "loadtests.run", "--host", url, "--grpc", address, "--users", "4"]
    command += ["--duration", "5s", "--p95-ms", "2000", "--out", str(out), "--users-class", "GrpcUser"]
    assert subprocess.run(command, cwd=ROOT, env=os.environ, timeout=120, check=False).returncode == 0
    with open(f"{out}_stats.csv") as file:
        row = next(r for r in csv.DictReader(file) if r["Name"] == "ModelInfer fashion-cnn-pipeline")
    assert row["Type"] == "grpc" and int(row["Request Count"]) > 0 and int(row["Failure Count"]) == 0


def test_sigterm_answers_the_calls_in_flight_and_refuses_new_ones(grpc_server, client):
    """Last in this module: the server drains and stops."""
    process = grpc_server[0]
    pixels = np.zeros((64, 1, 28, 28), np.float32)
    tensor = triton.InferInput("pixels", list(pixels.shape), "FP32")
    tensor.set_data_from_numpy(pixels)
    answers: queue.Queue = queue.Queue()
    for _ in range(16):
        client.async_infer("fashion-cnn", [tensor], lambda result, error: answers.put(error), headers=AUTH)
    os.killpg(process.pid, signal.SIGTERM)
    # Each call sent around the signal is answered, or refused with the drain's message: none is cut off.
    for error in [answers.get(timeout=30) for _ in range(16)]:
        assert error is None or "shutting down" in error.message(), error
    time.sleep(0.3)  # within the 2 s drain
    with pytest.raises(InferenceServerException) as refused:
        client.infer("fashion-cnn", [tensor], headers=AUTH)
    assert refused.value.status() == "StatusCode.UNAVAILABLE" and "shutting down" in refused.value.message()
    process.wait(30)
