"""Training runs' progress records (what `python -m training serve` and a server read) and the supervisor's rules."""

from __future__ import annotations

import pytest

from contracts.card import ModelCard
from contracts.progress import PROGRESS_FOLDER, TrainingProgress
from services.dataplane.pending import PendingModels, StillTraining
from training.__main__ import lane_flags, main
from training.progress import ProgressReport
from training.serve import can_start, lane_line


def test_a_record_says_where_the_run_stands_in_one_line(tmp_path):
    record = TrainingProgress("fashion-cnn", "training", epoch=4, epochs=12, seconds_left=290, metric="accuracy")
    assert record.describe() == "fashion-cnn is training: epoch 4 of 12, about 5 min left"
    record.score = 0.9123
    record.save(tmp_path)
    again = TrainingProgress.load(tmp_path, "fashion-cnn")
    assert (
        again.describe() == "fashion-cnn is training: epoch 4 of 12, last validation accuracy 0.9123, about 5 min left"
    )
    assert again.retry_after_s() == 60  # at most a minute: the estimate is an upper bound
    again.seconds_left = 1
    assert again.retry_after_s() == 5
    assert TrainingProgress.load(tmp_path, "co2-gru") is None
    assert list(TrainingProgress.load_all(tmp_path)) == ["fashion-cnn"]


def test_a_report_estimates_the_time_left_from_its_epochs(tmp_path):
    clock = iter([100.0, 100.0, 160.0])  # made, training starts, one epoch later
    report = ProgressReport("fashion-cnn", 12, 300, folder=str(tmp_path), clock=lambda: next(clock))
    report.queued(ModelCard(task="image-classification", key_metric="accuracy", labels=("a", "b")))
    assert TrainingProgress.load(tmp_path, "fashion-cnn").card["labels"] == ["a", "b"]
    report.training()
    report.epoch({"epoch": 1, "val_loss": 0.5, "val_score": 0.8})
    record = TrainingProgress.load(tmp_path, "fashion-cnn")
    assert (record.state, record.epoch, record.score) == ("training", 1, 0.8)
    assert record.seconds_left == pytest.approx(60 * 11 + 0.1 * 300)
    report.failed(RuntimeError("out of memory"))
    assert TrainingProgress.load(tmp_path, "fashion-cnn").describe() == (
        "fashion-cnn's training failed: RuntimeError: out of memory"
    )


def test_a_run_records_its_interface_epochs_and_failure(tmp_path, monkeypatch):
    monkeypatch.setenv(PROGRESS_FOLDER, str(tmp_path / "progress"))
    out = ["--out-dir", str(tmp_path / "artifacts"), "--dry-run", "--no-register"]
    assert main(["train", "co2-lstm", *out]) == 0
    record = TrainingProgress.load(tmp_path / "progress", "co2-lstm")
    assert (record.epoch, record.epochs) == (1, 1)
    assert ModelCard.from_metadata(record.card).cell == "lstm"  # what /forecast's routes are built from

    assert main(["train", "co2-gru", *out, "--data", str(tmp_path / "missing.csv")]) == 1
    failed = TrainingProgress.load(tmp_path / "progress", "co2-gru")
    assert failed.state == "failed" and "missing.csv" in failed.error and not failed.card


def test_the_server_starts_with_a_model_to_serve_and_every_interface_known():
    registered = TrainingProgress("fashion-cnn", "registered", card={"task": "image-classification"})
    training = TrainingProgress("wordnet-transformer", "training", card={"task": "text-classification"})
    unknown = TrainingProgress("co2-gru", "queued")  # its lane has not loaded its data yet
    assert can_start({"a": registered, "b": training}, stored=False)
    assert not can_start({"b": training}, stored=False)
    assert can_start({"b": training}, stored=True)
    assert not can_start({"a": registered, "c": unknown}, stored=False)
    unknown.state = "failed"
    assert can_start({"a": registered, "c": unknown}, stored=False)


def test_a_lane_line_follows_the_lane_to_its_end():
    records = {
        "fashion-cnn": TrainingProgress("fashion-cnn", "registered", tag="fashion-cnn:v1"),
        "co2-gru": TrainingProgress("co2-gru", "training", epoch=2, epochs=60),
    }
    assert lane_line(2, ["fashion-cnn", "co2-gru"], records) == "lane 2: co2-gru is training: epoch 2 of 60"
    records["co2-gru"].state = "registered"
    assert lane_line(2, ["fashion-cnn", "co2-gru"], records) == "lane 2: done (fashion-cnn, co2-gru)"


def test_the_lanes_get_the_training_flags_alone():
    argv = ["serve", "--port", "3001", "--dry-run", "--lanes=3", "--host", "0.0.0.0", "--epochs", "2"]
    assert lane_flags(argv, "serve", ("--lanes", "--host", "--port")) == ["--dry-run", "--epochs", "2"]


def test_a_pending_model_and_its_pipeline_answer_with_the_run_s_progress(tmp_path):
    pending = PendingModels(str(tmp_path), cards={"wordnet-transformer": ModelCard(task="text-classification")})
    assert pending.refusal("fashion-cnn") is None  # not pending: the repository's own 404
    missing = pending.refusal("wordnet-transformer-pipeline")
    assert isinstance(missing, StillTraining) and str(missing) == "wordnet-transformer is not in the store yet"
    TrainingProgress("wordnet-transformer", "training", epoch=1, epochs=11, seconds_left=30).save(tmp_path)
    refusal = pending.refusal("wordnet-transformer")
    assert refusal.status == 503 and refusal.headers == {"Retry-After": "30"}
    assert str(refusal) == "wordnet-transformer is training: epoch 1 of 11, about 1 min left"
    pending.refused["wordnet-transformer"] = "its labels differ"
    assert str(pending.refusal("wordnet-transformer")) == (
        "wordnet-transformer is registered but cannot be served: its labels differ"
    )
    assert pending.waiting(served=[]) == {"wordnet-transformer": str(pending.refusal("wordnet-transformer"))}
    assert pending.waiting(served=["wordnet-transformer"]) == {}
