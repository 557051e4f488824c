"""The benchmark's peers serve the platform's own models: their answers equal the registered ONNX files'."""

import json

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc

from bench.peers.families import model_files
from bench.run import (
    GRPC,
    OIP_MODEL,
    OIP_PEERS,
    PEERS,
    ROOT,
    family_feeds,
    oip_requests,
    prepare_peers,
    ready_path,
    server_command,
    serves,
)
from harness.servers import free_port, served
from tests.helpers import (
    co2_history,
    fashion_test_images,
    offline_forecast,
    offline_image_probabilities,
    offline_text_probabilities,
)


@pytest.mark.slow
@pytest.mark.parametrize("peer", PEERS)
def test_a_peer_answers_as_the_registered_models_do(peer, registered, tmp_path):
    port = free_port()
    with served(
        server_command(peer, port, workers=1), port, prepare_peers(tmp_path, [peer]), tmp_path / "peer.log", ROOT
    ) as url:
        files, _ = fashion_test_images(2)
        image_card, text_card = registered["fashion-cnn"], registered["wordnet-transformer"]
        for png, row in zip(files, offline_image_probabilities(image_card["tag"], files)):
            body = httpx.post(f"{url}/classify_image", files={"image": ("x.png", png, "image/png")}, timeout=10).json()
            np.testing.assert_allclose([body["probabilities"][label] for label in image_card["labels"]], row, atol=1e-4)

        text = "a small domesticated carnivore kept as a pet"
        body = httpx.post(f"{url}/classify_text", json={"text": text}, timeout=10).json()
        expected = offline_text_probabilities(text_card["tag"], [text])[0]
        np.testing.assert_allclose([body["probabilities"][label] for label in text_card["labels"]], expected, atol=1e-4)

        history = co2_history()
        body = httpx.post(f"{url}/forecast", json={"history": history, "horizon": 13}, timeout=10).json()
        np.testing.assert_allclose(
            body["forecast"], offline_forecast(registered["co2-gru"]["tag"], history, 13), atol=1e-3
        )


def logits_of(response: httpx.Response) -> np.ndarray:
    """The first output of an inference-protocol answer (the logits; the OOD score follows), in JSON or Triton's
    binary form."""
    header_length = response.headers.get("inference-header-content-length")
    if header_length is None:
        return np.array(response.json()["outputs"][0]["data"], np.float32)
    start = int(header_length)
    size = json.loads(response.content[:start])["outputs"][0]["parameters"]["binary_data_size"]
    return np.frombuffer(response.content[start : start + size], np.float32)


@pytest.mark.slow
@pytest.mark.parametrize("peer", OIP_PEERS)
def test_an_inference_protocol_peer_answers_the_benchmark_requests_as_the_onnx_file_does(peer, registered, tmp_path):
    import onnxruntime as ort

    expected = ort.InferenceSession(model_files()["image"].onnx).run(None, family_feeds()["image"][1])[0].ravel()
    port, grpc_port = free_port(), free_port()
    with served(
        server_command(peer, port, workers=1, grpc_port=grpc_port),
        port,
        prepare_peers(tmp_path, [peer]),
        tmp_path / "peer.log",
        ROOT,
        ready_path=ready_path(peer),
    ) as url:
        requests = oip_requests()
        for family in serves(peer):
            if family == GRPC:  # the same tensors by the peer's gRPC server, as the benchmark sends them
                ((name, pixels),) = family_feeds()["image"][1].items()
                with triton_grpc.InferenceServerClient(f"127.0.0.1:{grpc_port}") as client:
                    tensor = triton_grpc.InferInput(name, list(pixels.shape), "FP32")
                    tensor.set_data_from_numpy(pixels.astype(np.float32))
                    answer = client.infer(OIP_MODEL, [tensor])
                np.testing.assert_allclose(
                    answer.as_numpy(answer.get_response().outputs[0].name).ravel(), expected, atol=1e-5
                )
                continue
            request = requests[family]
            headers = {"Content-Type": request.content_type, **dict(request.headers)}
            response = httpx.post(url + request.route, content=request.body, headers=headers, timeout=10)
            assert response.status_code == 200, response.text
            np.testing.assert_allclose(logits_of(response), expected, atol=1e-5)
