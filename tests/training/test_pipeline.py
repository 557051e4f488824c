"""The whole road for one task: train -> export -> parity -> evaluate -> register."""

import bentoml
import pytest

from contracts.card import file_sha256
from training.__main__ import main


def test_registered_model_carries_its_card(cnn_card):
    stored = bentoml.models.get(cnn_card["tag"])
    meta = stored.info.metadata
    for key in (
        "family",
        "task",
        "inputs",
        "preprocessing",
        "labels",
        "metrics",
        "baseline",
        "parity_max_abs_diff",
        "opset",
        "model_config",
        "train_config",
        "data_fingerprint",
        "git_commit",
        "created_at",
        "sha256",
    ):
        assert key in meta, key
    assert meta["sha256"]["model.onnx"] == file_sha256(stored.path_of("model.onnx"))
    assert meta["labels"][9] == "Ankle boot"
    assert meta["inputs"][0] == {"name": "pixels", "dtype": "float32", "shape": ["batch", 1, 28, 28]}
    assert 0 <= meta["metrics"]["accuracy"] <= 1 and len(meta["metrics"]["confusion_matrix"]) == 10
    assert meta["parity_max_abs_diff"] <= 1e-4
    assert stored.info.labels == {"family": "cnn", "task": "image-classification"}


def test_run_writes_plots_config_and_card(cnn_card, session_dir):
    run_dir = session_dir / "artifacts" / "fashion-cnn"
    for name in ("config.json", "card.json", "model.onnx", "confusion_matrix.png", "training_curves.png", "best.pt"):
        assert (run_dir / name).stat().st_size > 0, name


def test_list_command_shows_the_model_and_its_metric(cnn_card, capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert cnn_card["tag"] in out and "accuracy" in out


def test_unknown_task_is_refused_by_the_command_line():
    with pytest.raises(SystemExit):
        main(["train", "no-such-task"])
