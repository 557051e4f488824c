"""The Open Inference Protocol on the in-process platform: metadata, JSON and binary tensors, every error path.

Bodies are made and read by tritonclient's own codec (`generate_request_body`, `parse_response_body`),
so the binary extension is the one its users send.
"""

import numpy as np
import pytest
import tritonclient.http as triton
from prometheus_client import REGISTRY

from tests.helpers import fashion_test_images, offline_image_probabilities, offline_text_probabilities

JSON = {"content-type": "application/json"}
HEADER_LENGTH = "Inference-Header-Content-Length"


def binary_infer(client, model: str, inputs: list, outputs: list | None = None):
    body, header_length = triton.InferenceServerClient.generate_request_body(inputs, outputs=outputs)
    headers = {"content-type": "application/octet-stream"}
    if header_length is not None:
        headers["Inference-Header-Content-Length"] = str(header_length)
    response = client.post(f"/v2/models/{model}/infer", content=body, headers=headers)
    assert response.status_code == 200, response.text
    length = response.headers.get("inference-header-content-length")
    return triton.InferenceServerClient.parse_response_body(
        response.content, header_length=int(length) if length else None
    )


def test_server_metadata_names_the_binary_extension(client):
    body = client.get("/v2").json()
    assert body["name"] == "modelroad" and "binary_tensor_data" in body["extensions"]
    assert client.get("/v2/health/live").status_code == 200 and client.get("/v2/health/ready").status_code == 200


def test_every_registered_model_and_each_pipeline_is_listed_with_its_tensors(client, registered):
    cnn = client.get("/v2/models/fashion-cnn").json()
    assert cnn["versions"] == [registered["fashion-cnn"]["tag"].split(":")[1]]
    assert cnn["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
    assert cnn["outputs"][0]["datatype"] == "FP32" and cnn["outputs"][0]["shape"] == [-1, 10]
    text = client.get("/v2/models/wordnet-transformer").json()
    assert {i["name"]: i["shape"] for i in text["inputs"]} == {"input_ids": [-1, -1], "attention_mask": [-1, -1]}
    for name in ("fashion-cnn-pipeline", "co2-lstm-pipeline", "co2-gru-pipeline", "wordnet-transformer-pipeline"):
        response = client.get(f"/v2/models/{name}")
        assert response.status_code == 200 and response.json()["platform"] == "modelroad_pipeline", name
        version = response.json()["versions"][0]
        assert client.get(f"/v2/models/{name}/versions/{version}/ready").status_code == 200


def test_raw_model_in_json_answers_as_the_offline_onnx_model(client, cnn_card):
    files, pixels = fashion_test_images(3)
    expected = offline_image_probabilities(cnn_card["tag"], files)
    batch = ((pixels.astype(np.float32) / 255 - 0.2860) / 0.3530)[:, None]
    request = {
        "id": "r-1",
        "inputs": [{"name": "pixels", "shape": list(batch.shape), "datatype": "FP32", "data": batch.tolist()}],
    }
    body = client.post("/v2/models/fashion-cnn/infer", json=request).json()
    assert body["id"] == "r-1" and body["model_name"] == "fashion-cnn"
    output, score = body["outputs"]
    assert (score["name"], score["datatype"], score["shape"]) == ("ood_score", "FP32", [3])
    logits = np.asarray(output["data"], dtype=np.float64).reshape(output["shape"])
    probabilities = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(probabilities / probabilities.sum(1, keepdims=True), expected, atol=1e-4)


def test_the_image_pipeline_takes_encoded_files_in_binary_and_answers_labels(client, cnn_card):
    files, pixels = fashion_test_images(4)
    expected = offline_image_probabilities(cnn_card["tag"], files)
    image = triton.InferInput("image", [len(files)], "BYTES")
    image.set_data_from_numpy(np.array(files, dtype=np.object_))
    result = binary_infer(client, "fashion-cnn-pipeline", [image])
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected, atol=1e-5)
    assert [label.decode() for label in result.as_numpy("label")] == [cnn_card["labels"][i] for i in expected.argmax(1)]
    grey = triton.InferInput("pixels", list(pixels.shape), "FP32")
    grey.set_data_from_numpy(pixels.astype(np.float32), binary_data=False)
    wanted = [triton.InferRequestedOutput("class_id", binary_data=False)]
    assert (
        binary_infer(client, "fashion-cnn-pipeline", [grey], wanted).as_numpy("class_id").tolist()
        == expected.argmax(1).tolist()
    )


def test_the_text_pipeline_takes_strings(client, registered):
    texts = ["a small domesticated carnivore kept as a pet", "a sweet baked food made of flour and sugar"]
    expected = offline_text_probabilities(registered["wordnet-transformer"]["tag"], texts)
    text = triton.InferInput("text", [2], "BYTES")
    text.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_))
    np.testing.assert_allclose(
        binary_infer(client, "wordnet-transformer-pipeline", [text]).as_numpy("probabilities"), expected, atol=1e-5
    )


def test_the_forecast_pipeline_answers_as_the_family_route(client):
    from tests.helpers import co2_history

    history = co2_history()
    route = client.post("/forecast", json={"history": history, "model": "gru"}).json()["forecast"]
    request = {"inputs": [{"name": "history", "shape": [1, len(history)], "datatype": "FP32", "data": history}]}
    output = client.post("/v2/models/co2-gru-pipeline/infer", json=request).json()["outputs"][0]
    assert output["shape"] == [1, 52]
    np.testing.assert_allclose(output["data"], route, atol=1e-2)  # FP32 on the wire


PIXELS = {"name": "pixels", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.0] * 784}


@pytest.mark.parametrize(
    "path,body,status,error",
    [
        ("/v2/models/nothing/infer", {"inputs": [PIXELS]}, 404, "no model named 'nothing'"),
        ("/v2/models/fashion-cnn/versions/nope/infer", {"inputs": [PIXELS]}, 404, "has no version 'nope'"),
        (
            "/v2/models/fashion-cnn/infer",
            {"inputs": [{**PIXELS, "datatype": "FP64"}]},
            400,
            "pixels must be FP32; got float64",
        ),
        ("/v2/models/fashion-cnn/infer", {"inputs": [{**PIXELS, "datatype": "FP17"}]}, 400, "unknown datatype 'FP17'"),
        (
            "/v2/models/fashion-cnn/infer",
            {"inputs": [{**PIXELS, "shape": [1, 28, 28]}]},
            400,
            "must have shape [-1, 1, 28, 28]",
        ),
        (
            "/v2/models/fashion-cnn/infer",
            {"inputs": [{**PIXELS, "data": [0.0] * 783}]},
            400,
            "holds 784 elements; the data has 783",
        ),
        ("/v2/models/fashion-cnn/infer", {"inputs": [{**PIXELS, "data": ["a"] * 784}]}, 400, "not FP32 values"),
        (
            "/v2/models/wordnet-transformer/infer",
            {
                "inputs": [
                    {"name": n, "shape": [1, 2], "datatype": "INT64", "data": [1.5, 2]}
                    for n in ("input_ids", "attention_mask")
                ]
            },
            400,
            "cannot be INT64 without loss",
        ),
        ("/v2/models/fashion-cnn/infer", {"inputs": [{**PIXELS, "name": "image"}]}, 400, "has no input ['image']"),
        (
            "/v2/models/fashion-cnn/infer",
            {"inputs": [PIXELS], "outputs": [{"name": "nope"}]},
            400,
            "has no output 'nope'",
        ),
        ("/v2/models/fashion-cnn/infer", {"inputs": [{**PIXELS, "shape": [-1, 1, 28, 28]}]}, 400, "negative dimension"),
        ("/v2/models/fashion-cnn/infer", {"input": []}, 400, "inputs: Field required"),
        (
            "/v2/models/fashion-cnn/infer",
            {
                "inputs": [
                    {**PIXELS, "data": None, "parameters": {"shared_memory_region": "r", "shared_memory_byte_size": 4}}
                ]
            },
            400,
            "input pixels: shared memory is off on this server (MODELROAD_SHARED_MEMORY)",
        ),
        (
            "/v2/models/fashion-cnn-pipeline/infer",
            {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["x"]}]},
            400,
            "not a readable PNG/JPEG",
        ),
        (
            "/v2/models/wordnet-transformer-pipeline/infer",
            {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [" "]}]},
            400,
            "not only spaces",
        ),
        (
            "/v2/models/co2-gru-pipeline/infer",
            {"inputs": [{"name": "history", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]},
            400,
            "from 52 to 5000 values; got 3",
        ),
    ],
)
def test_bad_infer_requests_get_the_status_and_error_the_protocol_says(client, path, body, status, error):
    response = client.post(path, json=body)
    assert response.status_code == status, response.text
    assert error in response.json()["error"]


def test_a_binary_body_past_the_json_limit_is_held_to_the_body_limit(client):
    pixels = triton.InferInput("pixels", [700, 1, 28, 28], "FP32")  # 2.2 MB of tensors: past the 2 MiB JSON limit
    pixels.set_data_from_numpy(np.zeros((700, 1, 28, 28), np.float32))
    body, length = triton.InferenceServerClient.generate_request_body([pixels])
    # As tritonclient sends it: no Content-Type, the JSON part's length in its header (was 413 "JSON body of ...").
    response = client.post("/v2/models/fashion-cnn/infer", content=body, headers={HEADER_LENGTH: str(length)})
    assert response.status_code == 200, response.text
    padded = b'{"inputs": []}' + b" " * (3 * 2**20)  # the JSON part itself is still held to the JSON limit
    refused = client.post("/v2/models/fashion-cnn/infer", content=padded, headers={HEADER_LENGTH: str(len(padded))})
    assert refused.status_code == 413 and "JSON header of" in refused.json()["error"]


def test_binary_data_sizes_that_do_not_add_up_are_refused(client):
    header = (
        b'{"inputs": [{"name": "pixels", "shape": [1, 1, 28, 28], "datatype": "FP32", '
        b'"parameters": {"binary_data_size": 3136}}]}'
    )
    for binary, error in ((b"\0" * 3000, "runs past the body's binary data"), (b"\0" * 3200, "that no input claims")):
        response = client.post(
            "/v2/models/fashion-cnn/infer",
            content=header + binary,
            headers={"Inference-Header-Content-Length": str(len(header))},
        )
        assert response.status_code == 400 and error in response.json()["error"]
    bad_length = client.post(
        "/v2/models/fashion-cnn/infer", content=header, headers={"Inference-Header-Content-Length": "x"}
    )
    assert bad_length.status_code == 400 and "Inference-Header-Content-Length" in bad_length.json()["error"]


def test_oip_requests_go_through_the_models_batcher_counted_in_items(client, cnn_card):
    def items() -> float:
        labels = {"model": "fashion-cnn", "version": cnn_card["tag"].split(":")[1]}
        return REGISTRY.get_sample_value("modelroad_batch_size_sum", labels) or 0

    before = items()
    request = {"inputs": [{**PIXELS, "shape": [2, 1, 28, 28], "data": [0.0] * 1568}]}
    assert client.post("/v2/models/fashion-cnn/infer", json=request).status_code == 200
    files, _ = fashion_test_images(1)
    assert client.post("/classify_image", files={"image": ("a.png", files[0], "image/png")}).status_code == 200
    assert items() - before == 3


def test_classification_answers_the_top_classes_as_score_index_label(client, cnn_card):
    files, pixels = fashion_test_images(3)
    batch = triton.InferInput("pixels", [3, 1, 28, 28], "FP32")
    batch.set_data_from_numpy(((pixels.astype(np.float32) / 255 - 0.2860) / 0.3530)[:, None])
    logits = binary_infer(client, "fashion-cnn", [batch], [triton.InferRequestedOutput("logits")]).as_numpy("logits")
    top = np.argsort(-logits, axis=1)[:, :3]
    for binary in (True, False):
        wanted = [triton.InferRequestedOutput("logits", binary_data=binary, class_count=3)]
        classes = binary_infer(client, "fashion-cnn", [batch], wanted).as_numpy("logits")
        assert classes.shape == (3, 3)
        for row, (answered, indices) in enumerate(zip(classes, top, strict=True)):
            fields = [(e.decode() if isinstance(e, bytes) else e).split(":") for e in answered]  # JSON: str
            assert [int(index) for _, index, _ in fields] == indices.tolist()
            assert [label for _, _, label in fields] == [cnn_card["labels"][i] for i in indices]
            np.testing.assert_allclose([float(score) for score, _, _ in fields], logits[row, indices], atol=1e-5)
    image = triton.InferInput("image", [1], "BYTES")
    image.set_data_from_numpy(np.array(files[:1], dtype=np.object_))
    every = [triton.InferRequestedOutput("probabilities", class_count=99)]  # past the class count: every class
    assert binary_infer(client, "fashion-cnn-pipeline", [image], every).as_numpy("probabilities").shape == (1, 10)


@pytest.mark.parametrize(
    "output,error",
    [
        ({"name": "label", "parameters": {"classification": 2}}, "output label: classification needs numeric scores"),
        ({"name": "probabilities", "parameters": {"classification": 0}}, "must be a positive integer"),
        ({"name": "probabilities", "parameters": {"classification": "2"}}, "must be a positive integer"),
        ({"name": "probabilities", "parameters": {"classification": True}}, "must be a positive integer"),
    ],
)
def test_classification_of_what_cannot_be_classified_is_refused(client, output, error):
    request = {"inputs": [{"name": "pixels", "shape": [1, 28, 28], "datatype": "FP32", "data": [0.0] * 784}]}
    response = client.post("/v2/models/fashion-cnn-pipeline/infer", json={**request, "outputs": [output]})
    assert response.status_code == 400 and error in response.json()["error"], response.text


def test_each_models_configuration_agrees_with_its_metadata(client, registered):
    cnn = client.get("/v2/models/fashion-cnn/config").json()
    assert (cnn["platform"], cnn["backend"], cnn["max_batch_size"]) == ("onnxruntime_onnx", "onnxruntime", 64)
    assert cnn["input"] == [{"name": "pixels", "data_type": "TYPE_FP32", "dims": [1, 28, 28]}]
    assert cnn["dynamic_batching"] == {"max_queue_delay_microseconds": 1000}
    assert cnn["instance_group"] == [{"kind": "KIND_CPU", "count": 1}] and cnn["version_policy"] == {"all": {}}
    text = client.get("/v2/models/wordnet-transformer-pipeline/config").json()
    assert text["input"] == [{"name": "text", "data_type": "TYPE_STRING", "dims": []}] and "backend" not in text
    names = ["fashion-cnn", "co2-lstm", "wordnet-transformer", "fashion-cnn-pipeline", "co2-gru-pipeline"]
    for name in names:
        metadata = client.get(f"/v2/models/{name}").json()
        version = metadata["versions"][-1]
        config = client.get(f"/v2/models/{name}/versions/{version}/config").json()
        batch = [-1] if config["max_batch_size"] else []
        for key, config_key in (("inputs", "input"), ("outputs", "output")):
            described = [(t["name"], t["datatype"], t["shape"]) for t in metadata[key]]
            configured = [(t["name"], t["data_type"], batch + t["dims"]) for t in config[config_key]]
            assert configured == [(n, "TYPE_STRING" if d == "BYTES" else f"TYPE_{d}", s) for n, d, s in described]
    unknown = client.get("/v2/models/no-such-model/config")
    assert unknown.status_code == 404 and "no model named 'no-such-model'" in unknown.json()["error"]
    assert client.get("/v2/models/fashion-cnn/versions/nope/config").status_code == 404
    assert {"classification", "model_configuration"} <= set(client.get("/v2").json()["extensions"])


def test_statistics_count_what_each_version_answered_refused_queued_and_computed(client, cnn_card):
    version = cnn_card["tag"].split(":")[1]

    def stats() -> dict:
        (found,) = client.get(f"/v2/models/fashion-cnn/versions/{version}/stats").json()["model_stats"]
        return found

    before = stats()
    request = {"inputs": [{**PIXELS, "shape": [3, 1, 28, 28], "data": [0.0] * 2352}]}
    assert client.post("/v2/models/fashion-cnn/infer", json=request).status_code == 200
    bad = {"inputs": [{**PIXELS, "shape": [1, 1, 28, 27], "data": [0.0] * 756}]}
    assert client.post("/v2/models/fashion-cnn/infer", json=bad).status_code == 400
    after = stats()
    assert (after["name"], after["version"]) == ("fashion-cnn", version)
    assert after["inference_count"] - before["inference_count"] == 3  # items, as Triton counts them
    assert after["execution_count"] - before["execution_count"] == 1
    done, was = after["inference_stats"], before["inference_stats"]
    for kind, more in (("success", 1), ("fail", 1), ("queue", 1), ("compute_infer", 1)):
        assert done[kind]["count"] - was[kind]["count"] == more, kind
        assert done[kind]["ns"] > was[kind]["ns"], kind
    size_3 = {b["batch_size"]: b for b in after["batch_stats"]}[3]["compute_infer"]
    assert size_3["count"] >= 1 and size_3["ns"] > 0
    assert after["last_inference"] >= before["last_inference"] > 0
    every = client.get("/v2/models/stats").json()["model_stats"]
    assert {("fashion-cnn", version), ("fashion-cnn-pipeline", version)} <= {(s["name"], s["version"]) for s in every}
    pipeline = client.get("/v2/models/fashion-cnn-pipeline/stats").json()["model_stats"]
    assert pipeline[0]["execution_count"] == after["execution_count"]  # one runner, one count for both
    unknown = client.get("/v2/models/no-such-model/stats")
    assert unknown.status_code == 404 and "no model named 'no-such-model'" in unknown.json()["error"]
    assert client.get("/v2/models/fashion-cnn/versions/nope/stats").status_code == 404
    assert "statistics" in client.get("/v2").json()["extensions"]
