"""/classify_text and /classify_texts on the in-process platform service."""

import bentoml
import numpy as np
import pytest

from contracts.card import ModelCard
from contracts.text import TextContract
from tests.helpers import offline_text_probabilities

TEXTS = [
    "a small domesticated carnivore kept as a pet",
    "a person who repairs shoes",
    "the period of time between sunrise and sunset; the daylight hours of a day, " * 8,
]


def test_one_text_is_classified_as_the_offline_onnx_model_does(client, registered):
    card = registered["wordnet-transformer"]
    expected = offline_text_probabilities(card["tag"], TEXTS[:1])[0]
    response = client.post("/classify_text", json={"text": TEXTS[0]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["label"] == card["labels"][int(expected.argmax())]
    np.testing.assert_allclose([body["probabilities"][k] for k in card["labels"]], expected, atol=1e-5)


def test_the_model_field_names_the_text_classifier_that_answers_and_no_other(client, registered):
    plain = client.post("/classify_texts", json={"texts": TEXTS[:2]})
    named = client.post("/classify_texts", json={"texts": TEXTS[:2], "model": "wordnet-transformer"})
    assert named.status_code == 200 and named.json() == plain.json()
    for other in ("fashion-cnn", "nope"):
        refused = client.post("/classify_text", json={"text": TEXTS[0], "model": other})
        assert refused.status_code == 400
        assert (
            refused.json()["error"] == f"model {other!r} cannot answer here; the models that can: wordnet-transformer"
        )
    assert client.post("/classify_text", json={"text": TEXTS[0], "model": "x" * 64}).status_code == 400


def test_a_batch_padded_together_answers_as_each_text_alone(client, registered):
    """Padding to the longest member must not change any answer (the mask hides the padding)."""
    expected = offline_text_probabilities(registered["wordnet-transformer"]["tag"], TEXTS)
    labels = registered["wordnet-transformer"]["labels"]
    response = client.post("/classify_texts", json={"texts": TEXTS})
    assert response.status_code == 200
    got = np.array([[answer["probabilities"][k] for k in labels] for answer in response.json()])
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize(
    "path,body,error",
    [
        ("/classify_text", {"text": ""}, "text: String should have at least 1 character"),
        ("/classify_text", {"text": "   \n"}, "text: String should match pattern"),
        ("/classify_text", {"text": 42}, "text: Input should be a valid string"),
        ("/classify_text", {"text": ["a", "b"]}, "text: Input should be a valid string"),
        ("/classify_text", {"txt": "a dog"}, "text: Field required"),
        ("/classify_text", {"text": "x" * 2001}, "text: String should have at most 2000 characters"),
        ("/classify_texts", {"texts": []}, "texts: List should have at least 1 item after validation, not 0"),
        (
            "/classify_texts",
            {"texts": ["a dog"] * 65},
            "texts: List should have at most 64 items after validation, not 65",
        ),
        ("/classify_texts", {"texts": ["a dog", ""]}, "texts.1: String should have at least 1 character"),
        ("/classify_texts", {"texts": "a dog"}, "texts: Input should be a valid array"),
    ],
)
def test_bad_text_requests_get_400_saying_what_is_wrong(client, path, body, error):
    response = client.post(path, json=body)
    assert response.status_code == 400, response.text
    assert error in response.json()["error"]


def test_long_texts_are_cut_to_the_trained_token_limit(client, registered):
    stored = bentoml.models.get(registered["wordnet-transformer"]["tag"])
    contract = TextContract.from_card(ModelCard.from_metadata(stored.info.metadata), stored.path)
    limit = contract.encoding.max_tokens
    words = ["a", "small", "dog"] * 150  # ~450 tokens, 1800 characters
    # The shortest prefix of the words that reaches the limit: the first `limit` tokens are the long text's own.
    cut = next(
        " ".join(words[:n]) for n in range(1, len(words)) if len(contract.token_ids([" ".join(words[:n])])[0]) >= limit
    )
    assert contract.token_ids([cut])[0][:limit] == contract.token_ids([" ".join(words)])[0]
    long, short = (client.post("/classify_text", json={"text": text}) for text in (" ".join(words), cut))
    assert long.status_code == short.status_code == 200
    assert long.json()["probabilities"] == short.json()["probabilities"]
