"""The platform's Prometheus series, defined once at module level (they add up across workers), and /metrics.

BentoML's own request metrics are off: they are labelled by the raw path, so requests to random paths
grew the series (and the worker's memory) without bound. The requests are counted here instead, by
route template (or `other`), bounded method and status.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from prometheus_client import REGISTRY as OWN_PROCESS
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

from services.compat.prometheus_values import values_without_a_system_call

SERVER_METRICS = "MODELROAD_METRICS_DIR"  # "<pid of a server's first process>:<its metrics folder>"


def use_the_servers_metrics_folder() -> None:
    """Keep each server's series in a folder of its own.

    BentoML points its workers at $BENTOML_HOME/prometheus_multiproc_dir and empties it when a server starts,
    so a second server on the same home wiped the first one's counters for good. `bentoml serve`'s first
    process (which has no PROMETHEUS_MULTIPROC_DIR) makes a folder and passes it on in the environment; its
    workers (their parent made it) write there instead. Runs before any series is made.
    """
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:  # a server's first process, or a plain script
        folder = tempfile.mkdtemp(prefix="modelroad-metrics-")
        os.environ[SERVER_METRICS] = f"{os.getpid()}:{folder}"
        atexit.register(shutil.rmtree, folder, True)
        return
    owner, _, folder = os.environ.get(SERVER_METRICS, "").partition(":")
    if owner == str(os.getppid()) and os.path.isdir(folder):  # a worker of that server
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder


use_the_servers_metrics_folder()

values_without_a_system_call()

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})  # others are counted as `other`

REQUESTS = Counter(
    "modelroad_requests_total",
    "Requests answered, by route template (or `other`; for gRPC the method's path), method, status (for gRPC the "
    "HTTP status of the REST surface's answer, services/frontends/oip_grpc.py) and protocol (http or grpc).",
    ["endpoint", "method", "status", "protocol"],
)
REQUEST_SECONDS = Histogram(
    "modelroad_request_seconds",
    "Time from a request's arrival to the start of its answer, by route template (or `other`) and protocol.",
    ["endpoint", "protocol"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
IN_PROGRESS = Gauge(
    "modelroad_requests_in_progress", "Requests being answered (the HPA's metric).", multiprocess_mode="livesum"
)

# Compute of one ONNX Runtime call; a small CNN batch takes ~0.1-5 ms, a text batch up to ~100 ms.
INFERENCE_SECONDS = Histogram(
    "modelroad_inference_seconds",
    "Time of one ONNX Runtime call (one batch; with a runner service, the call to it), by model and version.",
    ["model", "version"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
QUEUE_SECONDS = Histogram(
    "modelroad_queue_seconds",
    "Time a request waited for its batch to start, by model and version.",
    ["model", "version"],
    buckets=(0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
BATCH_SIZE = Histogram(
    "modelroad_batch_size",
    "Items per ONNX Runtime call, by model and version.",
    ["model", "version"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
# The same calls by exact batch size (bounded by MODELROAD_MAX_BATCH_SIZE): Triton's batch statistics.
BATCHES = Counter(
    "modelroad_batches", "ONNX Runtime calls, by model, version and batch size (items).", ["model", "version", "size"]
)
BATCH_SECONDS = Counter(
    "modelroad_batch_seconds",
    "Time of the ONNX Runtime calls, by model, version and batch size (items).",
    ["model", "version", "size"],
)
LAST_INFERENCE = Gauge(
    "modelroad_last_inference_timestamp_seconds",
    "When a model version's last ONNX Runtime call ended (Unix time).",
    ["model", "version"],
    multiprocess_mode="max",
)
PREDICTIONS = Counter(
    "modelroad_predictions_total", "Predictions served, by model and predicted class.", ["model", "label"]
)
ERRORS = Counter(
    "modelroad_request_errors_total", "Requests refused or failed, by endpoint and reason.", ["endpoint", "reason"]
)
# Scores are in validation standard deviations for every model (models/ood.py), so one set of buckets fits all.
OOD_SCORES = Histogram(
    "modelroad_ood_score",
    "OOD scores of answered inputs, by model (0: typical of the training data; higher: less like it).",
    ["model"],
    buckets=(-2, -1, 0, 1, 2, 3, 4, 6, 8, 12, 16, 32, 64, 128),
)
OOD_ANSWERS = Counter(
    "modelroad_ood_answers_total", "Answers whose input scored above the model's OOD threshold, by model.", ["model"]
)

GENERATION_STEPS = Counter(
    "modelroad_generation_steps_total",
    "Denoising steps taken by generation requests, by model (one denoiser call for a request's images each).",
    ["model"],
)
GENERATED_IMAGES = Counter("modelroad_generated_images_total", "Images generated, by model.", ["model"])
GENERATION_SECONDS = Histogram(
    "modelroad_generation_seconds",
    "Time from a generation request's first denoising step to its decoded images, by model.",
    ["model"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)


# Per model version (labels bounded by the versions served, never by client input): what a rollout compares.
VERSION_REQUESTS = Counter(
    "modelroad_version_requests_total",
    "Requests a model version answered (family routes, pipelines and the inference protocol), by outcome: ok, "
    "invalid (refused as sent) or error (the server failed).",
    ["model", "version", "outcome"],
)
VERSION_SECONDS = Histogram(
    "modelroad_version_request_seconds",
    "Time from choosing a version to its answer, by model and version (successful requests).",
    ["model", "version"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
VERSION_FAILED_SECONDS = Counter(
    "modelroad_version_failed_seconds",
    "Time from choosing a version to its refusal or failure, by model and version (the requests not ok).",
    ["model", "version"],
)
VERSION_ANSWERS = Counter(
    "modelroad_version_answers_total", "Inputs answered by a family's version (with scores on).", ["model", "version"]
)
VERSION_OOD_ANSWERS = Counter(
    "modelroad_version_ood_answers_total",
    "Inputs answered by a family's version that scored above its OOD threshold.",
    ["model", "version"],
)
SHADOW_COMPARISONS = Counter(
    "modelroad_shadow_comparisons_total",
    "A shadow version's answers compared with the primary's, per input: agree, disagree, or error (the shadow "
    "failed). Classifiers agree on the label; forecasts within the forecast pipeline's tolerance.",
    ["model", "version", "outcome"],
)
SHADOW_DIFFERENCE = Histogram(
    "modelroad_shadow_forecast_difference",
    "Largest absolute difference between a shadow forecaster's forecast and the primary's, per input.",
    ["model", "version"],
    buckets=(0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0),
)
SHADOW_DROPPED = Counter(
    "modelroad_shadow_dropped_total", "Shadow copies dropped because too many were in flight.", ["model"]
)


class VersionSeries:
    """One served version's series, children made once (when the version is loaded): its requests, and its
    comparisons with the primary when it is a shadow."""

    def __init__(self, model: str, version: str):
        self.outcomes = {o: VERSION_REQUESTS.labels(model, version, o) for o in ("ok", "invalid", "error")}
        self.seconds = VERSION_SECONDS.labels(model, version)
        self.failed_seconds = VERSION_FAILED_SECONDS.labels(model, version)
        self.compared = {o: SHADOW_COMPARISONS.labels(model, version, o) for o in ("agree", "disagree", "error")}
        self.difference = SHADOW_DIFFERENCE.labels(model, version)

    def count(self, outcome: str, seconds: float) -> None:
        self.outcomes[outcome].inc()
        if outcome == "ok":
            self.seconds.observe(seconds)
        else:
            self.failed_seconds.inc(seconds)


class RunSeries:
    """One model version's ONNX Runtime calls: their time (the histogram, and by batch size), and the last's end.
    A size's children are made at its first call (`labels()` costs per call)."""

    def __init__(self, model: str, version: str):
        self.model, self.version = model, version
        self.seconds, self.last = INFERENCE_SECONDS.labels(model, version), LAST_INFERENCE.labels(model, version)
        self._sizes: dict[int, tuple[Any, Any]] = {}

    def record(self, size: int, seconds: float) -> None:
        self.seconds.observe(seconds)
        children = self._sizes.get(size)
        if children is None:
            labels = (self.model, self.version, str(size))
            children = self._sizes[size] = (BATCHES.labels(*labels), BATCH_SECONDS.labels(*labels))
        children[0].inc()
        children[1].inc(seconds)
        self.last.set(time.time())


class AnswerCounters:
    """One model version's answer series: predictions by label, OOD scores, and answers over the OOD threshold
    (None: scores off), by model and by version. Children made once: `labels()` costs per call."""

    def __init__(self, model: str, version: str, labels: Iterable[str] = (), threshold: float | None = None):
        self.predictions = {label: PREDICTIONS.labels(model, label) for label in labels}
        self.scores, self.outside = OOD_SCORES.labels(model), OOD_ANSWERS.labels(model)
        self.answered, self.version_outside = (
            VERSION_ANSWERS.labels(model, version),
            VERSION_OOD_ANSWERS.labels(model, version),
        )
        self.threshold = threshold

    def count(self, scores: np.ndarray | None, labels: Iterable[str] = ()) -> None:
        for label in labels:
            self.predictions[label].inc()
        if self.threshold is None or scores is None:
            return
        floats = np.asarray(scores, dtype=np.float64).tolist()  # a request's few: Python, not numpy, from here
        for score in floats:
            self.scores.observe(score)
        self.answered.inc(len(floats))
        flagged = sum(not score <= self.threshold for score in floats)  # NaN is never inside
        if flagged:
            self.outside.inc(flagged)
            self.version_outside.inc(flagged)


# The fleet's desired state (services/dataplane/desired.py): a replica's oldest worker's generation, and the newest
# read.
SERVED_GENERATION = Gauge(
    "modelroad_served_generation",
    "The fleet state's generation this replica serves (its least caught-up worker's).",
    multiprocess_mode="livemin",
)
DESIRED_GENERATION = Gauge(
    "modelroad_desired_generation",
    "The newest generation of the fleet's state this replica has read.",
    multiprocess_mode="livemax",
)

MODEL_INFO = Gauge(
    "modelroad_model_info",
    "Loaded models (value 1): store tag, ONNX opset and the device ONNX Runtime runs on.",
    ["model", "version", "device", "opset"],
)


class RequestSeries:
    """REQUESTS and REQUEST_SECONDS for each answered request of one protocol, their children made once per label
    set (`labels()` costs per call, and every label here is bounded)."""

    def __init__(self, protocol: str = "http") -> None:
        self.protocol = protocol
        self._counts: dict[tuple[str, str, int], Any] = {}
        self._seconds: dict[str, Any] = {}

    def record(self, endpoint: str, method: str, status: int, seconds: float | None) -> None:
        """One request; `seconds` to the start of its answer, None if none began."""
        count = self._counts.get((endpoint, method, status))
        if count is None:
            count = self._counts[endpoint, method, status] = REQUESTS.labels(
                endpoint, method, str(status), self.protocol
            )
        count.inc()
        if seconds is None:
            return
        observed = self._seconds.get(endpoint)
        if observed is None:
            observed = self._seconds[endpoint] = REQUEST_SECONDS.labels(endpoint, self.protocol)
        observed.observe(seconds)


def all_workers() -> CollectorRegistry:
    """Every worker's series (BentoML sets PROMETHEUS_MULTIPROC_DIR), or this process's."""
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        return OWN_PROCESS
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


def exposition() -> bytes:
    """Every series in Prometheus' text format."""
    return generate_latest(all_workers())


# The per-version series the console reads (services/frontends/console.py), by family name as collected (no `_total`).
FIGURES = {
    "modelroad_version_requests": "requests",
    "modelroad_version_request_seconds": "seconds",
    "modelroad_version_answers": "answers",
    "modelroad_version_ood_answers": "ood",
    "modelroad_shadow_comparisons": "shadow",
}


def version_figures() -> list[dict[str, Any]]:
    """Each served version's counts since the server started, summed over workers: requests by outcome, the
    latency histogram's cumulative buckets (and the +Inf bucket's count apart: JSON has no infinity), answers
    scored and over the OOD threshold, shadow comparisons by outcome. A reader turns two readings into rates and
    quantiles (the console does, in the browser)."""
    figures: dict[tuple[str, str], dict[str, Any]] = {}
    bounds: dict[tuple[str, str], dict[float, float]] = {}
    for family in all_workers().collect():
        kind = FIGURES.get(family.name)
        for sample in family.samples if kind else ():
            key = sample.labels["model"], sample.labels["version"]
            entry = figures.setdefault(
                key,
                {"model": key[0], "version": key[1], "requests": {}, "answers": 0, "ood": 0, "shadow": {}},
            )
            if kind == "seconds":
                if sample.name.endswith("_bucket"):
                    counts, le = bounds.setdefault(key, {}), float(sample.labels["le"])
                    counts[le] = counts.get(le, 0) + sample.value
            elif not sample.name.endswith("_total"):
                continue  # a counter's _created
            elif kind in ("requests", "shadow"):
                outcome = sample.labels["outcome"]
                entry[kind][outcome] = entry[kind].get(outcome, 0) + sample.value
            else:
                entry[kind] += sample.value
    for key, entry in figures.items():
        counts = bounds.get(key, {})
        entry["observed"] = counts.pop(float("inf"), 0)
        entry["buckets"] = sorted([le, n] for le, n in counts.items())
    return sorted(figures.values(), key=lambda e: (e["model"], e["version"]))


@dataclass
class VersionStatistics:
    """One model version's figures for Triton's statistics, summed over workers: requests answered (ok) and not
    (refused or failed) with their time, calls queued for a batch and their wait, ONNX Runtime calls by batch size
    ([count, seconds]) and when the last ended."""

    ok: float = 0
    ok_s: float = 0
    failed: float = 0
    failed_s: float = 0
    queued: float = 0
    queue_s: float = 0
    batches: dict[int, list[float]] = field(default_factory=dict)
    last: float = 0


def version_statistics() -> dict[tuple[str, str], VersionStatistics]:
    """Every version's statistics since the server started serving it, by (model, version), from its series."""
    found: dict[tuple[str, str], VersionStatistics] = {}
    for family in all_workers().collect():
        for sample in family.samples if family.name.startswith("modelroad_") else ():
            labels = sample.labels
            if "version" not in labels or "model" not in labels:
                continue
            figures = found.setdefault((labels["model"], labels["version"]), VersionStatistics())
            name, value = sample.name, sample.value
            if name == "modelroad_version_requests_total":
                if labels["outcome"] == "ok":
                    figures.ok += value
                else:
                    figures.failed += value
            elif name == "modelroad_version_request_seconds_sum":
                figures.ok_s += value
            elif name == "modelroad_version_failed_seconds_total":
                figures.failed_s += value
            elif name == "modelroad_queue_seconds_count":
                figures.queued += value
            elif name == "modelroad_queue_seconds_sum":
                figures.queue_s += value
            elif name in ("modelroad_batches_total", "modelroad_batch_seconds_total"):
                size = figures.batches.setdefault(int(labels["size"]), [0, 0])
                size[name == "modelroad_batch_seconds_total"] += value
            elif name == "modelroad_last_inference_timestamp_seconds":
                figures.last = max(figures.last, value)
    return found
