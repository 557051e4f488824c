"""The console's JSON documents in-process (tests/integration/test_pages.py drives the page in a browser)."""

from __future__ import annotations

from tests.helpers import fashion_test_images


def versions_of(client) -> dict[tuple[str, str], dict]:
    figures = client.get("/console/figures").json()
    return {(entry["model"], entry["version"]): entry for entry in figures["versions"]}


def test_the_models_document_lists_each_stored_model_with_its_card_and_the_family_routes(client, registered):
    document = client.get("/console/models").json()
    routes = ["/classify_image", "/classify_text", "/forecast", "/generate_images"]
    assert sorted(document["routes"]) == routes and document["keys"] is False
    models = {model["name"]: model for model in document["models"]}
    for name in ("fashion-cnn", "co2-lstm", "co2-gru", "wordnet-transformer", "fashion-diffusion", "fashion-gan"):
        version = registered[name]["tag"].split(":")[1]
        assert version in [v["version"] for v in models[name]["versions"]], name
    cnn = models["fashion-cnn"]["versions"][-1]
    assert cnn["metric"] == "accuracy" and 0 <= cnn["score"] <= 1 and cnn["digest"].startswith("sha256:")
    assert len(cnn["labels"]) == 10 and cnn["parity"] < 1e-3
    window = registered["co2-gru"]["preprocessing"]["window"]
    assert len(models["co2-gru"]["versions"][-1]["example"]["history"]) == window  # the console's "latest weeks"
    assert models["wordnet-transformer"]["versions"][-1]["example"]["text"]
    generator = models["fashion-diffusion"]["versions"][-1]
    assert generator["task"] == "image-generation" and len(generator["labels"]) == 10  # the form's classes
    assert models["fashion-gan"]["versions"][-1]["task"] == "image-generation"  # the form's other generator
    assert not generator["companion"] and models["fashion-diffusion-decoder"]["versions"][-1]["companion"]
    assert "co2-lstm-int8" not in models or models["co2-lstm-int8"]["policy"] is None


def test_the_figures_count_each_versions_requests_latency_and_ood_answers(client, registered):
    name, version = "fashion-cnn", registered["fashion-cnn"]["tag"].split(":")[1]
    before = versions_of(client).get((name, version), {"requests": {}, "observed": 0, "answers": 0})
    (png,), _ = fashion_test_images(1)
    assert client.post("/classify_image", files={"image": png}).status_code == 200
    assert client.post("/classify_image", files={"image": b"not an image"}).status_code == 400
    after = versions_of(client)[name, version]
    assert after["requests"]["ok"] == before["requests"].get("ok", 0) + 1
    assert after["requests"]["invalid"] == before["requests"].get("invalid", 0) + 1
    assert after["observed"] == before["observed"] + 1 and after["answers"] == before["answers"] + 1
    bounds = [le for le, _ in after["buckets"]]
    assert bounds == sorted(bounds) and after["buckets"][-1][1] <= after["observed"]
