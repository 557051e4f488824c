"""Opt-in payload logs: one JSON line per prediction (request id, model, version, a summary of the input, the
answer), for drift analysis after the fact.

Written off the request path: a request only puts its lines on a bounded queue (`put_nowait`), and one thread
per worker writes them to `<dir>/payloads-<pid>.jsonl`, rotated by size (stdlib QueueListener and
RotatingFileHandler). A full queue (a slow disk) or a failed write (a full disk) drops lines and counts them in
`modelroad_payload_lines_dropped_total{reason}`; it never delays or fails an answer.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import queue
import random
import time
from collections.abc import Callable, Iterable, Sequence
from contextvars import ContextVar
from logging.handlers import QueueListener, RotatingFileHandler
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import Counter

from services.settings import SETTINGS, ServeSettings

CURRENT_REQUEST_ID: ContextVar[str] = ContextVar("modelroad_request_id", default="")  # set by the edge per request
QUEUED_LINES = 10_000  # lines waiting for the writer; past this they are dropped

DROPPED = Counter(
    "modelroad_payload_lines_dropped_total",
    "Payload log lines dropped instead of slowing or failing an answer: queue_full (the writer is behind), "
    "write_failed (e.g. a full disk).",
    ["reason"],
)
DROPPED_QUEUE_FULL = DROPPED.labels("queue_full")
DROPPED_WRITE_FAILED = DROPPED.labels("write_failed")


class CountingFileHandler(RotatingFileHandler):
    """A failed write is counted, not printed with a traceback per line (logging's default)."""

    def handleError(self, record: logging.LogRecord) -> None:
        DROPPED_WRITE_FAILED.inc()


class Writer(QueueListener):
    def enqueue_sentinel(self) -> None:
        self.queue.put(self._sentinel)  # waits for room: the stock put_nowait fails on a full queue


class PayloadLog:
    def __init__(self, directory: Path, sample_rate: float, max_bytes: int, files: int, raw_inputs: bool):
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"payloads-{os.getpid()}.jsonl"  # one writer per file: workers are processes
        self.sample_rate = sample_rate
        self.raw_inputs = raw_inputs
        self.queue: queue.Queue[logging.LogRecord] = queue.Queue(QUEUED_LINES)
        handler = CountingFileHandler(self.path, maxBytes=max_bytes, backupCount=files - 1, delay=True)
        handler.setFormatter(logging.Formatter("%(message)s"))
        self.listener = Writer(self.queue, handler)
        self.listener.start()

    def sampled(self, items: int) -> list[int]:
        """Which items of a batch to log, each with probability `sample_rate` (chosen before anything is summarized)."""
        if self.sample_rate >= 1:
            return list(range(items))
        return [i for i in range(items) if random.random() < self.sample_rate]

    def record(
        self, model: str, version: str, inputs: Iterable[dict[str, Any]], answers: Iterable[dict[str, Any]]
    ) -> None:
        """One line per item (the sampled ones of a batch)."""
        request_id, now = CURRENT_REQUEST_ID.get(), round(time.time(), 3)
        for summary, answer in zip(inputs, answers, strict=True):
            line = {"time": now, "request_id": request_id, "model": model, "version": version}
            line |= {"input": summary, "answer": answer}
            try:
                self.queue.put_nowait(logging.makeLogRecord({"msg": json.dumps(line)}))
            except queue.Full:
                DROPPED_QUEUE_FULL.inc()

    def close(self) -> None:
        """Writes what is queued, then stops the writer."""
        self.listener.stop()
        for handler in self.listener.handlers:
            # Its last flush may meet the full disk its lines already met (they were counted).
            with contextlib.suppress(OSError):
                handler.close()


def open_payload_log(settings: ServeSettings = SETTINGS) -> PayloadLog | None:
    if not settings.payload_log:
        return None
    log = PayloadLog(
        Path(settings.payload_log),
        settings.payload_sample_rate,
        settings.payload_log_max_mb * 1024 * 1024,
        settings.payload_log_files,
        settings.payload_raw_inputs,
    )
    atexit.register(log.close)  # a worker that stops writes what is queued
    return log


PAYLOADS = open_payload_log()


class Versioned(Protocol):
    """What names a batch's lines: a stored model version (a runner)."""

    name: str
    version: str


def log_predictions(
    runner: Versioned,
    items: Sequence[Any],
    answers: Sequence[Any],
    summaries: Callable[[list[Any]], list[dict[str, Any]]],
    values: Callable[[Any], dict[str, Any]],
    answer: Callable[[Any], dict[str, Any]],
) -> None:
    """A batch's lines, when the log is on: its sampled items summarized (`values` added when raw inputs are
    asked for) and their answers. Each family says how its inputs and answers read."""
    if PAYLOADS is None or not (kept := PAYLOADS.sampled(len(answers))):
        return
    chosen = [items[i] for i in kept]
    inputs = summaries(chosen)
    if PAYLOADS.raw_inputs:
        inputs = [summary | values(item) for summary, item in zip(inputs, chosen, strict=True)]
    PAYLOADS.record(runner.name, runner.version, inputs, [answer(answers[i]) for i in kept])


def answer_summary(answer: Any) -> dict[str, Any]:
    """A classifier's answer, as logged: its label, that label's probability and the OOD verdict."""
    return {
        "label": answer.label,
        "probability": answer.probabilities[answer.label],
        "ood_score": answer.ood_score,
        "in_distribution": answer.in_distribution,
    }
