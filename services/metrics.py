"""The platform's Prometheus series, defined once at module level (they add up across workers).

BentoML's own request metrics stay as they are; these describe the models.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# Compute of one ONNX Runtime call; a small CNN batch takes ~0.1-5 ms, a text batch up to ~100 ms.
INFERENCE_SECONDS = Histogram(
    "modelroad_inference_seconds",
    "Time of one ONNX Runtime call (one batch; with a runner service, the call to it), by model.",
    ["model"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
QUEUE_SECONDS = Histogram(
    "modelroad_queue_seconds",
    "Time a request waited for its batch to start, by model.",
    ["model"],
    buckets=(0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
BATCH_SIZE = Histogram(
    "modelroad_batch_size",
    "Items per ONNX Runtime call, by model.",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
PREDICTIONS = Counter(
    "modelroad_predictions_total", "Predictions served, by model and predicted class.", ["model", "label"]
)
ERRORS = Counter(
    "modelroad_request_errors_total", "Requests refused or failed, by endpoint and reason.", ["endpoint", "reason"]
)
MODEL_INFO = Gauge(
    "modelroad_model_info",
    "Loaded models (value 1): store tag, ONNX opset and the device ONNX Runtime runs on.",
    ["model", "version", "device", "opset"],
)
