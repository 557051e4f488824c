"""What every family's API shares: runners, readiness, the service decorator, output helpers."""
from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any, ClassVar

import bentoml
import numpy as np
from bentoml._internal.server.http import traffic

from services.http import EdgeMiddleware, UploadHandler, without_timeout
from services.metrics import PREDICTIONS
from services.runner import OnnxRunner
from services.settings import SETTINGS


class ModelAPI:
    """Base of the family API mixins; a service class combines one or more of them."""

    # Upload routes (an API whose one input is a file) -> the method that answers the file's bytes, which
    # the edge middleware calls directly (MODELROAD_DIRECT_UPLOADS); the route's @bentoml.api method
    # calls the same one, so both ways give one answer.
    uploads: ClassVar[dict[str, str]] = {}
    serving: ClassVar[ModelAPI | None] = None  # this worker's instance, once BentoML has made it

    def __init__(self) -> None:
        super().__init__()
        self.runners: list[OnnxRunner] = []

    def add_runner(self, runner: OnnxRunner, warmup_payload: Any) -> OnnxRunner:
        runner.warm_up(warmup_payload)
        self.runners.append(runner)
        return runner

    @bentoml.on_startup
    def start_serving(self) -> None:
        """Once per worker, when BentoML has made the instance: the edge's upload routes answer through it,
        and the garbage collector is kept off what start-up loaded (modules, sessions, schemas: ~120k objects).

        Otherwise every full collection walks all of it: 80-115 ms pauses, about one per second per
        worker at 32 connections (measured with gc.callbacks), the p99 tail of the service.
        """
        type(self).serving = self
        gc.collect()
        gc.freeze()

    def __is_ready__(self) -> bool:
        return bool(self.runners) and all(runner.warmed for runner in self.runners)


def invalid(message: str) -> bentoml.exceptions.InvalidArgument:
    """A 400 whose JSON `error` is `message` (EdgeMiddleware gives it the one error shape)."""
    return bentoml.exceptions.InvalidArgument(message)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def classify_rows(runner: OnnxRunner, logits: np.ndarray, sizes: list[int]) -> list[list[tuple[int, dict[str, float]]]]:
    """Logits of a whole batch -> per request, per item: (class id, {label: probability}).

    Counts every prediction by class for Prometheus.
    """
    labels: list[str] = runner.metadata["labels"]
    probabilities = softmax(logits.astype(np.float64))
    results, start = [], 0
    for size in sizes:
        answers = []
        for row in probabilities[start : start + size]:
            class_id = int(row.argmax())
            PREDICTIONS.labels(runner.name, labels[class_id]).inc()
            answers.append((class_id, {label: round(float(p), 6) for label, p in zip(labels, row)}))
        results.append(answers)
        start += size
    return results


def upload_handler(service_class: type[ModelAPI], method: str) -> UploadHandler:
    """The edge's handler for an upload route: the serving instance's `method`, its answer as JSON."""

    async def answer(data: bytes) -> bytes:
        result = await getattr(service_class.serving, method)(data)
        return result.model_dump_json().encode()

    return answer


def platform_service(name: str, workers: int = SETTINGS.workers) -> Callable[[type], Any]:
    """Class decorator: a BentoML service with the platform's settings and edge middleware."""

    def wrap(cls: type) -> Any:
        traffic.TimeoutMiddleware = without_timeout  # BentoML imports it when it builds the app, after this
        service = bentoml.service(
            name=name,
            workers=workers,
            logging={"access": {"enabled": SETTINGS.access_log}},
            traffic={"timeout": SETTINGS.request_timeout_s},
            # Excluding every URL is the one switch BentoML has to take its tracing middleware off the hot path.
            **({} if SETTINGS.tracing else {"tracing": {"excluded_urls": [".*"]}}),
        )(cls)
        api_fields = {api.route: tuple(api.input_spec.model_fields) for api in service.apis.values()}
        routes = {route: method for klass in reversed(cls.__mro__) for route, method in vars(klass).get("uploads", {}).items()}
        uploads = {route: upload_handler(cls, method) for route, method in routes.items()} if SETTINGS.direct_uploads else {}
        service.add_asgi_middleware(EdgeMiddleware, max_body_bytes=SETTINGS.max_body_bytes, api_fields=api_fields,
                                    max_in_flight=SETTINGS.max_in_flight, request_timeout_s=SETTINGS.request_timeout_s,
                                    uploads=uploads)  # fmt: skip
        return service

    return wrap
