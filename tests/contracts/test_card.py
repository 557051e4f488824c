"""The model card read back from the metadata it writes: every field, each family's preprocessing and the OOD
record, as training writes them and the services read them."""

import json

import pytest

from contracts.card import ModelCard, OodRecord
from contracts.preprocessing import (
    ForecastPreprocessing,
    ImagePreprocessing,
    SeriesScaling,
    TextEncoding,
    TextPreprocessing,
)
from contracts.tensors import TensorSpec

PREPROCESSINGS = {
    "image-classification": ImagePreprocessing(height=32, width=32, channels=3, mean=0.5, std=0.25),
    "image-generation": ImagePreprocessing(),
    "forecasting": ForecastPreprocessing(SeriesScaling(scale=2.5), window=52, min_history=60, horizon=12),
    "text-classification": TextPreprocessing(TextEncoding(max_tokens=96, pad_id=1), "tok.json"),
}


@pytest.mark.parametrize("task", sorted(PREPROCESSINGS))
def test_a_card_is_read_back_as_it_was_written(task):
    card = ModelCard(
        task=task,
        family="cnn",
        inputs=(TensorSpec("pixels", "FP32", (-1, 1, 28, 28)),),
        outputs=(TensorSpec("output", "FP32", (-1, 10)),),
        labels=("a", "b"),
        preprocessing=PREPROCESSINGS[task],
        key_metric="accuracy",
        example={"history": [1.0, 2.0]},
        metrics={"accuracy": 0.9},
        baseline={"logistic_regression": {"accuracy": 0.8}},
        ood=OodRecord(threshold=3.5, target_fpr=0.01, evaluation={"auroc": {"mnist": 0.97}}),
        parity_max_abs_diff=1e-6,
        opset=18,
        model_config={"cell": "lstm"},
        val_loss=0.25,
        sha256={"model.onnx": "ab" * 32},
        variant="int8",
        extra={"history": [{"epoch": 1}]},
    )
    metadata = json.loads(json.dumps(card.to_metadata()))  # plain JSON, as the store keeps it
    assert ModelCard.from_metadata(metadata) == card


def test_an_imported_models_card_has_no_preprocessing_and_no_none_in_its_metadata():
    card = ModelCard(task="imported", outputs=(TensorSpec("y", "FP16", (-1,)),))
    metadata = card.to_metadata()
    assert "preprocessing" not in metadata and None not in metadata.values()
    assert ModelCard.from_metadata(metadata) == card
