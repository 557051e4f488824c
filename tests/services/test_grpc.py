"""The gRPC front-end in-process, on a model that takes as long as a test asks: the codec, the edge's refusals as
gRPC codes (timeout, busy, rate, draining), UNIMPLEMENTED for the rest, and the port claim."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from types import SimpleNamespace

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import InferenceServerException

from contracts.tensors import TensorSpec
from harness.servers import free_port
from services.dataplane.models import InferenceModel, ModelRepository
from services.edge.gate import Gate
from services.edge.keys import RateLimiter
from services.edge.worker import Worker
from services.errors import BadRequest
from services.frontends import oip_grpc
from services.frontends.codec import decode_inputs
from services.frontends.oip_grpc import GRPCServer, PortTaken, claim_port
from services.ops.metrics import VersionSeries
from services.ops.startup import DRAIN
from services.settings import ServeSettings
from tests.helpers import localhost_certificate


class Doubler(InferenceModel):
    """y = 2x, after `delay_s`."""

    delay_s = 0.0

    def __init__(self) -> None:
        runner = SimpleNamespace(
            version="v1", name="doubler", tag="doubler:v1", warmed=True, created=datetime.now(), series=None
        )
        runner.series = VersionSeries("doubler", "v1")
        spec = (-1, 2)
        super().__init__("doubler", runner, [TensorSpec("x", "FP32", spec)], [TensorSpec("y", "FP32", spec)])

    async def infer(self, tensors, record=True):
        await asyncio.sleep(self.delay_s)
        return {"y": tensors["x"] * 2}


def serve(gate: Gate, **settings) -> Iterator[tuple[str, Doubler]]:
    """A gRPC server on its own event loop in a thread: (address, its model)."""
    model = Doubler()
    worker = Worker(models=ModelRepository([model]), gate=gate, ready=lambda: True)
    server = GRPCServer(worker, ServeSettings(grpc_port=free_port(), **settings))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    port = asyncio.run_coroutine_threadsafe(server.start("127.0.0.1"), loop).result(10)
    try:
        yield f"127.0.0.1:{port}", model
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(0), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


@pytest.fixture(autouse=True)
def private_claims(tmp_path, monkeypatch):
    """Port owner files of this test's own: a claim made here never outlives it."""
    monkeypatch.setattr(oip_grpc, "CLAIMS", tmp_path)


@pytest.fixture
def doubler():
    yield from serve(Gate(max_in_flight=1), request_timeout_s=0.5)


def call(address: str, x: np.ndarray, **kwargs) -> np.ndarray:
    with triton.InferenceServerClient(address) as client:
        tensor = triton.InferInput("x", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        return client.infer("doubler", [tensor], **kwargs).as_numpy("y")


def refusal(action) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as raised:
        action()
    return raised.value


def test_raw_and_typed_contents_decode_to_the_same_tensors_and_bad_ones_say_why():
    raw = pb.ModelInferRequest()
    raw.inputs.add(name="x", datatype="INT64", shape=[2, 2])
    raw.raw_input_contents.append(np.arange(4, dtype=np.int64).tobytes())
    typed = pb.ModelInferRequest()
    typed.inputs.add(name="x", datatype="INT64", shape=[2, 2]).contents.int64_contents.extend([0, 1, 2, 3])
    words = typed.inputs.add(name="w", datatype="BYTES", shape=[2])
    words.contents.bytes_contents.extend([b"a", b"bc"])
    assert decode_inputs(raw)["x"].tolist() == decode_inputs(typed)["x"].tolist() == [[0, 1], [2, 3]]
    assert decode_inputs(typed)["w"].tolist() == [b"a", b"bc"]

    short = pb.ModelInferRequest()
    short.inputs.add(name="x", datatype="FP32", shape=[3]).contents.fp32_contents.extend([1.0, 2.0])
    unknown = pb.ModelInferRequest()
    unknown.inputs.add(name="x", datatype="FP8", shape=[1])
    uneven = pb.ModelInferRequest()
    uneven.inputs.add(name="x", datatype="FP32", shape=[1])
    uneven.inputs.add(name="z", datatype="FP32", shape=[1])
    uneven.raw_input_contents.append(b"\0" * 4)
    for request, message in [
        (short, "shape [3] holds 3 elements; the data has 2"),
        (unknown, "unknown datatype 'FP8'"),
        (uneven, "raw_input_contents has 1 entries for 2 inputs"),
    ]:
        with pytest.raises(BadRequest, match=re.escape(message)):
            decode_inputs(request)


def test_an_answer_and_the_edge_refusals_as_grpc_codes(doubler):
    address, model = doubler
    assert call(address, np.ones((3, 2), np.float32)).tolist() == [[2.0, 2.0]] * 3
    assert "must have shape" in refusal(lambda: call(address, np.ones((2,), np.float32))).message()

    model.delay_s = 1.0  # past the 0.5 s request timeout
    late = refusal(lambda: call(address, np.ones((1, 2), np.float32)))
    assert late.status() == "StatusCode.DEADLINE_EXCEEDED" and "request timeout of 0.5 s" in late.message()

    model.delay_s = 0.3
    with triton.InferenceServerClient(address) as client:
        tensor = triton.InferInput("x", [1, 2], "FP32")
        tensor.set_data_from_numpy(np.ones((1, 2), np.float32))
        first: list = []
        client.async_infer("doubler", [tensor], lambda result, error: first.append(error))
        time.sleep(0.1)  # the first is in flight: the worker admits one
        busy = refusal(lambda: client.infer("doubler", [tensor]))
        assert busy.status() == "StatusCode.UNAVAILABLE" and "server busy" in busy.message()
        time.sleep(0.4)
        assert first == [None]
    with triton.InferenceServerClient(address) as client:
        unimplemented = refusal(lambda: client.get_system_shared_memory_status())
    assert unimplemented.status() == "StatusCode.UNIMPLEMENTED"


def test_a_client_over_its_rate_gets_resource_exhausted_with_retry_after():
    for address, _ in serve(Gate(limiter=RateLimiter(rate=1, burst=1))):
        assert call(address, np.ones((1, 2), np.float32)).shape == (1, 2)
        with grpc.insecure_channel(address) as channel:
            request = pb.ModelInferRequest(model_name="doubler")
            request.inputs.add(name="x", datatype="FP32", shape=[1, 2]).contents.fp32_contents.extend([1, 2])
            stub = triton.service_pb2_grpc.GRPCInferenceServiceStub(channel)
            with pytest.raises(grpc.RpcError) as raised:
                stub.ModelInfer(request)
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "over the rate limit of 1 requests/s" in raised.value.details()
        assert ("retry-after", "1") in raised.value.trailing_metadata()


def test_a_draining_server_refuses_new_calls_and_its_health_says_not_serving(doubler):
    address, _ = doubler
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
        DRAIN.draining = True
        try:
            assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.NOT_SERVING
            refused = refusal(lambda: call(address, np.ones((1, 2), np.float32)))
        finally:
            DRAIN.draining = False
    assert refused.status() == "StatusCode.UNAVAILABLE" and "shutting down" in refused.message()


def test_with_https_on_the_grpc_port_speaks_tls_with_the_same_certificate(tmp_path):
    cert, key = localhost_certificate(tmp_path)
    for address, _ in serve(Gate(), ssl_certfile=str(cert), ssl_keyfile=str(key)):
        with triton.InferenceServerClient(address, ssl=True, root_certificates=str(cert)) as client:
            assert client.is_server_live()
        with triton.InferenceServerClient(address) as plaintext:
            assert refusal(plaintext.is_server_live).status() == "StatusCode.UNAVAILABLE"


def test_the_port_is_shared_by_one_servers_workers_and_refused_to_anyone_else():
    port = free_port()
    # A live process standing in for a `bentoml serve` (its command line names bentoml), and one that does not.
    server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "bentoml", "serve"])
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        claim_port("127.0.0.1", port, server=server.pid)  # its first worker
        claim_port("127.0.0.1", port, server=server.pid)  # its second worker
        with pytest.raises(PortTaken, match=f"gRPC port {port} is served by another modelroad server"):
            claim_port("127.0.0.1", port, server=os.getpid())
        server.kill()
        server.wait()
        claim_port("127.0.0.1", port, server=other.pid)  # a dead server's claim is taken over
        other.kill()
        other.wait()
        claim_port("127.0.0.1", port, server=os.getpid())  # and a claim whose pid is no server's
    finally:
        for process in (server, other):
            process.kill()
    with socket.socket() as foreign:
        foreign.bind(("127.0.0.1", 0))
        foreign.listen()
        taken = foreign.getsockname()[1]
        with pytest.raises(PortTaken, match="in use by another process"):
            claim_port("127.0.0.1", taken, server=2)
