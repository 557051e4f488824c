"""Payload logs: lines per prediction, sampling, rotation, and drops (never a failed or slowed answer)."""

import json
import os
import threading
from pathlib import Path

import pytest

import services.ops.payloads as payloads
from services.ops.payloads import CURRENT_REQUEST_ID, DROPPED_QUEUE_FULL, DROPPED_WRITE_FAILED, PayloadLog


def lines(directory: Path) -> list[dict]:
    return [json.loads(line) for path in sorted(directory.glob("payloads-*")) for line in path.read_text().splitlines()]


def test_one_line_per_item_with_the_request_id_model_input_and_answer(tmp_path):
    log = PayloadLog(tmp_path, sample_rate=1.0, max_bytes=1 << 20, files=2, raw_inputs=False)
    CURRENT_REQUEST_ID.set("req-1")
    log.record("fashion-cnn", "v1", [{"mean": 0.1}, {"mean": 0.2}], [{"label": "Bag"}, {"label": "Coat"}])
    log.close()
    written = lines(tmp_path)
    assert [(x["request_id"], x["model"], x["version"]) for x in written] == [("req-1", "fashion-cnn", "v1")] * 2
    assert [x["input"] for x in written] == [{"mean": 0.1}, {"mean": 0.2}]
    assert [x["answer"]["label"] for x in written] == ["Bag", "Coat"]
    assert (tmp_path / f"payloads-{os.getpid()}.jsonl").exists()


@pytest.mark.parametrize(("rate", "low", "high"), [(0.0, 0, 0), (0.25, 180, 320), (1.0, 1000, 1000)])
def test_the_sample_rate_is_the_share_of_predictions_logged(tmp_path, rate, low, high):
    log = PayloadLog(tmp_path, sample_rate=rate, max_bytes=1 << 20, files=2, raw_inputs=False)
    kept = log.sampled(1000)
    assert low <= len(kept) <= high and kept == sorted(set(kept)) and all(0 <= i < 1000 for i in kept)


def test_files_are_rotated_by_size_and_only_the_newest_kept(tmp_path):
    log = PayloadLog(tmp_path, sample_rate=1.0, max_bytes=10_000, files=3, raw_inputs=False)
    for i in range(2000):
        log.record("m", "v", [{"i": i}], [{}])
    log.close()
    files = sorted(tmp_path.glob("payloads-*"))
    assert len(files) == 3 and all(f.stat().st_size <= 10_000 for f in files)
    kept = [x["input"]["i"] for x in lines(tmp_path)]
    assert 1999 in kept and 0 not in kept  # the newest kept, the oldest rotated out


def test_a_full_disk_drops_lines_and_counts_them_but_never_raises(tmp_path):
    (tmp_path / f"payloads-{os.getpid()}.jsonl").symlink_to("/dev/full")  # every write: ENOSPC
    before = DROPPED_WRITE_FAILED._value.get()
    log = PayloadLog(tmp_path, sample_rate=1.0, max_bytes=0, files=1, raw_inputs=False)
    log.record("m", "v", [{}] * 5, [{}] * 5)  # returns: the writer thread meets the full disk
    log.close()
    assert DROPPED_WRITE_FAILED._value.get() - before == 5


def test_a_slow_disk_drops_lines_at_the_queue_instead_of_making_requests_wait(tmp_path, monkeypatch):
    monkeypatch.setattr(payloads, "QUEUED_LINES", 10)
    stuck = threading.Event()
    log = PayloadLog(tmp_path, sample_rate=1.0, max_bytes=1 << 20, files=1, raw_inputs=False)
    (handler,) = log.listener.handlers
    write = handler.emit
    monkeypatch.setattr(handler, "emit", lambda record: (stuck.wait(), write(record)))  # a disk that hangs
    before = DROPPED_QUEUE_FULL._value.get()
    log.record("m", "v", [{}] * 50, [{}] * 50)  # returns although nothing can be written
    dropped = DROPPED_QUEUE_FULL._value.get() - before
    stuck.set()
    log.close()
    assert 50 - 11 <= dropped <= 50 - 10 and len(lines(tmp_path)) == 50 - dropped


def test_a_batch_logs_its_sampled_items_with_their_own_answers_and_values_when_asked(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import numpy as np

    from contracts.summaries import history_summaries
    from services.families.forecast import history_values

    log = PayloadLog(tmp_path, sample_rate=1.0, max_bytes=1 << 20, files=1, raw_inputs=True)
    monkeypatch.setattr(payloads, "PAYLOADS", log)
    monkeypatch.setattr(log, "sampled", lambda items: [1, 2])  # the second and third of the batch
    histories = np.arange(12.0).reshape(3, 4)
    answers = [{"forecast": [v], "ood_score": v / 10, "in_distribution": v < 25} for v in (10.0, 20.0, 30.0)]
    runner = SimpleNamespace(name="co2-gru", version="v2")
    payloads.log_predictions(runner, histories, answers, history_summaries, history_values, dict)
    log.close()
    written = lines(tmp_path)
    assert [x["answer"] for x in written] == answers[1:]
    assert [x["input"]["history"] for x in written] == [[4.0, 5.0, 6.0, 7.0], [8.0, 9.0, 10.0, 11.0]]
    assert written[0]["input"] | {"std": 0} == {
        "size": 4,
        "mean": 5.5,
        "std": 0,
        "last": 7.0,
        "step_std": 0.0,
        "history": [4.0, 5.0, 6.0, 7.0],
    }
