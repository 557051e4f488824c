"""Locust users for the platform's endpoints, with a pass/fail gate.

Run headless through `python -m loadtests.run` (bounded time, CSV + HTML reports). The gate
(events.quitting) fails the run when any request failed or p95 exceeds LOADTEST_P95_MS.
Payloads are real files under loadtests/payloads, loaded once.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from pathlib import Path

from locust import FastHttpUser, User, between, constant_throughput, events, task

from contracts.tensors import serialize_bytes

PAYLOADS = Path(__file__).parent / "payloads"
IMAGES = [(p.name, p.read_bytes()) for p in sorted((PAYLOADS / "images").iterdir())]
FORECASTS = json.loads((PAYLOADS / "forecast.json").read_text())  # CO2 histories of 52-300 weeks
TEXTS = json.loads((PAYLOADS / "texts.json").read_text())  # WordNet glosses and user-like texts of 7-270 characters
P95_MS = float(os.environ.get("LOADTEST_P95_MS", "500"))
MAX_FAILURE_RATIO = float(os.environ.get("LOADTEST_MAX_FAILURE_RATIO", "0"))
log = logging.getLogger("loadtests.gate")
# A server with MODELROAD_API_KEYS_FILE needs a key: the load test sends MODELROAD_API_KEY when it is set.
AUTHORIZATION = {"Authorization": f"Bearer {key}"} if (key := os.environ.get("MODELROAD_API_KEY")) else {}


# LOADTEST_USER_RPS paces each user to that many requests/s (the soak's steady load); unset: as fast as answered.
USER_RPS = os.environ.get("LOADTEST_USER_RPS")
PACING = constant_throughput(float(USER_RPS)) if USER_RPS else between(0.0, 0.05)


# LOADTEST_GRPC_ADDRESS (`python -m loadtests.run --grpc HOST:PORT`) adds the gRPC user; unset, it is left out.
GRPC_ADDRESS = os.environ.get("LOADTEST_GRPC_ADDRESS", "")
if GRPC_ADDRESS:
    import grpc
    from grpc.experimental import gevent as grpc_gevent
    from tritonclient.grpc import service_pb2

    grpc_gevent.init_gevent()  # before any channel: gRPC's I/O cooperates with Locust's greenlets


class PlatformUser(FastHttpUser):
    abstract = True
    default_headers = AUTHORIZATION
    wait_time = PACING


class ImageUser(PlatformUser):
    @task
    def classify_image(self) -> None:
        name, data = random.choice(IMAGES)
        kind = "image/jpeg" if name.endswith(".jpg") else "image/png"
        with self.client.post(
            "/classify_image", files={"image": (name, data, kind)}, catch_response=True, name="/classify_image"
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
            elif "label" not in response.json():
                response.failure("answer has no label")


class ForecastUser(PlatformUser):
    @task
    def forecast(self) -> None:
        body = random.choice(FORECASTS)
        with self.client.post("/forecast", json=body, catch_response=True, name="/forecast") as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
            elif len(response.json()["forecast"]) != body["horizon"]:
                response.failure("forecast length differs from the horizon asked for")


class TextUser(PlatformUser):
    @task(4)
    def classify_text(self) -> None:
        with self.client.post(
            "/classify_text", json={"text": random.choice(TEXTS)}, catch_response=True, name="/classify_text"
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
            elif "label" not in response.json():
                response.failure("answer has no label")

    @task(1)
    def classify_texts(self) -> None:
        texts = random.sample(TEXTS, random.randint(2, 8))
        with self.client.post(
            "/classify_texts", json={"texts": texts}, catch_response=True, name="/classify_texts"
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
            elif len(response.json()) != len(texts):
                response.failure("one answer per text was expected")


GENERATED_CLASSES = [None, "T-shirt/top", "Trouser", "Dress", "Sneaker", "Bag", "Ankle boot"]


class GenerationUser(PlatformUser):
    @task(3)
    def generate_images(self) -> None:
        body = {"n": random.randint(1, 4), "seed": random.randrange(2**31), "label": random.choice(GENERATED_CLASSES)}
        with self.client.post("/generate_images", json=body, catch_response=True, name="/generate_images") as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
            elif len(response.json()["images"]) != body["n"]:
                response.failure("one image per image asked for was expected")

    @task(1)
    def watch_images_form(self) -> None:
        body = {"n": 1, "seed": random.randrange(2**31), "steps": 10}
        with self.client.post(
            "/generate_images/stream", json=body, catch_response=True, name="/generate_images/stream"
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
            elif response.text.count("event: step") != 10 or "event: done" not in response.text:
                response.failure(f"the stream did not send 10 steps and then its images: {response.text[-200:]}")


class GrpcUser(User):
    """The inference protocol over gRPC: a real upload to the image pipeline as raw BYTES, as tritonclient sends it;
    each call reported to Locust as a `grpc` request."""

    abstract = not GRPC_ADDRESS
    wait_time = PACING

    def on_start(self) -> None:
        self.channel = grpc.insecure_channel(GRPC_ADDRESS)
        self.infer = self.channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=service_pb2.ModelInferRequest.SerializeToString,
            response_deserializer=service_pb2.ModelInferResponse.FromString,
        )
        self.metadata = tuple((name.lower(), value) for name, value in AUTHORIZATION.items())

    def on_stop(self) -> None:
        self.channel.close()

    @task
    def classify_image(self) -> None:
        _, data = random.choice(IMAGES)
        request = service_pb2.ModelInferRequest(model_name="fashion-cnn-pipeline")
        request.inputs.add(name="image", datatype="BYTES", shape=[1])
        request.raw_input_contents.append(serialize_bytes([data]))
        started, size, failure = time.perf_counter(), 0, None
        try:
            answer = self.infer(request, metadata=self.metadata, timeout=30)
            size = answer.ByteSize()
            if "class_id" not in [output.name for output in answer.outputs]:
                failure = ValueError("answer has no class_id")
        except grpc.RpcError as refused:
            failure = refused
        self.environment.events.request.fire(
            request_type="grpc",
            name="ModelInfer fashion-cnn-pipeline",
            response_time=(time.perf_counter() - started) * 1000,
            response_length=size,
            exception=failure,
            context={},
        )


@events.quitting.add_listener
def gate(environment, **_kwargs) -> None:
    """Exit code 1 when the run broke the service-level objectives."""
    total = environment.stats.total
    p95 = total.get_response_time_percentile(0.95) or 0.0
    problems = []
    if total.num_requests == 0:
        problems.append("no request was made")
    if total.fail_ratio > MAX_FAILURE_RATIO:
        problems.append(f"failure ratio {total.fail_ratio:.2%} > {MAX_FAILURE_RATIO:.2%}")
    if p95 > P95_MS:
        problems.append(f"p95 {p95:.0f} ms > {P95_MS:.0f} ms")
    summary = (
        f"{total.num_requests} requests, {total.total_rps:.1f} RPS, p95 {p95:.0f} ms, failures {total.num_failures}"
    )
    if problems:
        log.error("SLO gate FAILED: %s (%s)", "; ".join(problems), summary)
        environment.process_exit_code = 1
    else:
        log.info("SLO gate passed: %s", summary)
        environment.process_exit_code = 0
