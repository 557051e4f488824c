"""The Open Inference Protocol over gRPC: `inference.GRPCInferenceService`, as `tritonclient.grpc` calls it, and
the standard `grpc.health.v1.Health`, served by every worker beside HTTP on MODELROAD_GRPC_PORT.

The messages are Triton's own, generated from its `grpc_service.proto` (the superset of the protocol's
`grpc_predict_v2.proto`) and published with `tritonclient` on PyPI: the server speaks exactly what that client
sends, with no copy of the proto to drift. Methods not listed in `GRPCInference` answer UNIMPLEMENTED (the
generated base class).

The same data plane as REST (services/frontends/oip_rest.py): the worker's served models and their version
policies, the same batchers, the same codec (services/frontends/codec.py); and the same edge core
(services/edge/gate.py): keys, rate limit, admission, draining, the request id and the access log, with the request
timeout and the request metrics (protocol="grpc"). A failure gets the gRPC code of the HTTP status REST would answer
(services/errors.py).

BentoML serves HTTP on a socket its arbiter binds and hands to each worker; for gRPC, each worker binds the port
itself with SO_REUSEPORT, so the kernel spreads connections over the workers. The same option would let a second
server on the machine silently share the port (and half the traffic): `claim_port` refuses it.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import socket
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import psutil
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import model_config_pb2
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from services.dataplane.admin import RepositoryAdmin, check_admin_token, load_parameters
from services.dataplane.models import VERSION_HEADER
from services.dataplane.traffic import ROUTING_KEY
from services.edge.gate import Gate, log_access, request_id_of
from services.edge.worker import Worker
from services.errors import GRPC_CODES, NotServed, failure, reason_label
from services.frontends.codec import EXTENSIONS, SERVER, decode_inputs, encode_outputs, parameters
from services.frontends.shared_memory import SharedMemory, served_regions
from services.ops.metrics import ERRORS, IN_PROGRESS, RequestSeries
from services.ops.payloads import CURRENT_REQUEST_ID
from services.ops.startup import DRAIN
from services.settings import ServeSettings

log = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"
CLAIMS = Path(tempfile.gettempdir())  # where each claimed port's owner file lives (claim_port)
C = grpc.StatusCode


class PortTaken(RuntimeError):
    pass


# ---- the edge: what every call passes through ----


@dataclass(frozen=True)
class Access:
    """How the edge treats a method: `open` ones (health) skip keys, rate and admission, as /v2/health/ does;
    `keyed` ones need an API key when keys are on (the repository's need the admin token instead)."""

    open: bool = False
    keyed: bool = True


OPEN, KEYED, ADMIN = Access(open=True, keyed=False), Access(), Access(keyed=False)


class Edge:
    """The gRPC edge: the gate shared with HTTP, the timeout, the request series and the access log."""

    def __init__(self, gate: Gate, timeout_s: float, access_log: bool):
        self.gate, self.timeout_s, self.access_log = gate, timeout_s, access_log
        self.series = RequestSeries("grpc")

    async def answer(
        self,
        method: str,
        access: Access,
        handler: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]],
        request: Any,
        context: grpc.aio.ServicerContext,
    ) -> Any:
        arrived, status = time.perf_counter(), 200
        metadata = context.invocation_metadata() or ()
        # The call's metadata as the HTTP edge sees headers (text values; `-bin` ones are bytes and skipped).
        headers = {key.encode(): value.encode("latin-1") for key, value in metadata if isinstance(value, str)}
        request_id = request_id_of(headers).decode()
        CURRENT_REQUEST_ID.set(request_id)  # for the payload log's lines
        admitted, key_id = False, None
        IN_PROGRESS.inc()
        try:
            # "ipv4:127.0.0.1:50000": the client's address, for the rate limit without keys
            key_id = self.gate.enter(headers, context.peer().rpartition(":")[0], access.keyed, not access.open)
            admitted = not access.open
            async with asyncio.timeout(None if access.open else self.timeout_s):
                return await handler(request, context)
        except asyncio.CancelledError:  # the client left, or its own deadline passed: gRPC answers it
            status = 499
            raise
        except Exception as exc:
            status, message, headers_out, _ = failure(exc)
            key_id = key_id or getattr(exc, "key_id", None)  # a Refusal after the key was identified names it
            if isinstance(exc, TimeoutError):
                status, message = 504, f"no answer within the request timeout of {self.timeout_s:g} s"
            elif status == 500:
                log.error("%s failed", method, exc_info=exc)
            if retry_after := (headers_out or {}).get("Retry-After"):
                context.set_trailing_metadata((("retry-after", retry_after),))
            ERRORS.labels(method, reason_label(status)).inc()
            await context.abort(C[GRPC_CODES[status]], message)
        finally:
            if admitted:
                self.gate.release()
            IN_PROGRESS.dec()
            self.series.record(method, "POST", status, time.perf_counter() - arrived)
            if self.access_log:
                log_access(request_id, "POST", method, status, arrived, key_id, "grpc")


def guarded(access: Access = KEYED) -> Callable:
    """A servicer method (named as its RPC) through the edge."""

    def wrap(handler: Callable) -> Callable:
        method = f"/{SERVICE}/{handler.__name__}"  # the call's path: the metrics' and the access log's endpoint

        async def rpc(self: GRPCInference, request: Any, context: grpc.aio.ServicerContext) -> Any:
            return await self.edge.answer(method, access, handler.__get__(self), request, context)

        rpc.__name__ = handler.__name__
        return rpc

    return wrap


# ---- the service ----


class GRPCInference(pb_grpc.GRPCInferenceServiceServicer):
    """The protocol's RPCs on this worker's served models, readiness and repository admin."""

    def __init__(self, worker: Worker, settings: ServeSettings):
        self.worker, self.settings = worker, settings
        self.edge = Edge(worker.gate, settings.request_timeout_s, settings.access_log)

    @guarded(OPEN)
    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @guarded(OPEN)
    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.worker.ready() and not DRAIN.draining)

    @guarded()
    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Any) -> pb.ServerMetadataResponse:
        extensions = [
            *EXTENSIONS,
            *(["model_repository"] if self.worker.admin else []),
            *(["system_shared_memory"] if self.settings.shared_memory else []),
        ]
        return pb.ServerMetadataResponse(name=SERVER["name"], version=SERVER["version"], extensions=extensions)

    @guarded()
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        described = self.worker.models.metadata(request.name, request.version or None)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=described["name"],
            versions=described["versions"],
            platform=described["platform"],
            inputs=[tensor(**spec) for spec in described["inputs"]],
            outputs=[tensor(**spec) for spec in described["outputs"]],
        )

    @guarded()
    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Any) -> pb.ModelConfigResponse:
        config = self.worker.models.config(request.name, request.version or None)
        return pb.ModelConfigResponse(config=json_format.ParseDict(config, model_config_pb2.ModelConfig()))

    @guarded()
    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context: Any) -> pb.ModelStatisticsResponse:
        found = self.worker.models.statistics(request.name, request.version)
        return pb.ModelStatisticsResponse(model_stats=[json_format.ParseDict(s, pb.ModelStatistics()) for s in found])

    @guarded()
    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self.worker.models.get(request.name, request.version or None).ready)

    @guarded()
    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        key = dict(context.invocation_metadata() or ()).get(ROUTING_KEY.lower())
        choice = self.worker.models.choice(request.model_name, request.model_version or None, key)
        response = await choice.answer(
            lambda: decode_inputs(request), lambda model, outputs: encode_outputs(model, request, outputs)
        )
        context.set_trailing_metadata(((VERSION_HEADER.lower(), choice.primary.tag),))
        return response

    def _regions(self) -> SharedMemory:
        if not self.settings.shared_memory:
            raise NotServed("the system shared memory extension is off on this server (MODELROAD_SHARED_MEMORY)")
        return served_regions("the shared memory extension")

    @guarded()
    async def SystemSharedMemoryStatus(
        self, request: pb.SystemSharedMemoryStatusRequest, context: Any
    ) -> pb.SystemSharedMemoryStatusResponse:
        status = pb.SystemSharedMemoryStatusResponse.RegionStatus
        found = self._regions().status(request.name or None)
        return pb.SystemSharedMemoryStatusResponse(regions={r.name: status(**r.describe()) for r in found})

    @guarded()
    async def SystemSharedMemoryRegister(
        self, request: pb.SystemSharedMemoryRegisterRequest, context: Any
    ) -> pb.SystemSharedMemoryRegisterResponse:
        self._regions().register(request.name, request.key, request.offset, request.byte_size)
        return pb.SystemSharedMemoryRegisterResponse()

    @guarded()
    async def SystemSharedMemoryUnregister(
        self, request: pb.SystemSharedMemoryUnregisterRequest, context: Any
    ) -> pb.SystemSharedMemoryUnregisterResponse:
        self._regions().unregister(request.name or None)
        return pb.SystemSharedMemoryUnregisterResponse()

    def _admin(self, context: Any) -> RepositoryAdmin:
        if self.worker.admin is None:
            raise NotServed("the model repository extension is off: the server has no MODELROAD_ADMIN_TOKEN")
        authorization = dict(context.invocation_metadata() or ()).get("authorization", "")
        scheme, _, token = str(authorization).partition(" ")
        check_admin_token(self.settings.admin_token, token.strip() if scheme.lower() == "bearer" else None)
        return self.worker.admin

    @guarded(ADMIN)
    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: Any) -> pb.RepositoryIndexResponse:
        entries = self._admin(context).index(ready_only=request.ready)
        return pb.RepositoryIndexResponse(models=[pb.RepositoryIndexResponse.ModelIndex(**e) for e in entries])

    @guarded(ADMIN)
    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Any
    ) -> pb.RepositoryModelLoadResponse:
        admin = self._admin(context)
        await admin.load(request.model_name, *load_parameters(parameters(request.parameters)))
        return pb.RepositoryModelLoadResponse()

    @guarded(ADMIN)
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Any
    ) -> pb.RepositoryModelUnloadResponse:
        await self._admin(context).unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()


class Health(health_pb2_grpc.HealthServicer):
    """`grpc.health.v1.Health/Check` for the server ("") and the inference service: SERVING once every served model
    is ready (what /readyz says), NOT_SERVING while loading or draining (a Kubernetes `grpc:` probe)."""

    def __init__(self, ready: Callable[[], bool]):
        self.ready = ready

    async def Check(self, request: health_pb2.HealthCheckRequest, context: Any) -> health_pb2.HealthCheckResponse:
        if request.service not in ("", SERVICE):
            await context.abort(C.NOT_FOUND, f"no service {request.service!r}; this server has {SERVICE!r}")
        serving = self.ready() and not DRAIN.draining
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        return health_pb2.HealthCheckResponse(status=status)


# ---- the port, shared by one server's workers and no one else ----


def http_host() -> str:
    """The address this worker's HTTP socket listens on (BentoML's arbiter hands it over): gRPC listens beside."""
    for connection in psutil.Process().net_connections("tcp"):
        if connection.status == psutil.CONN_LISTEN:
            return connection.laddr.ip
    return "127.0.0.1"


def _bindable(host: str, port: int) -> bool:
    """Whether nothing listens on host:port (a probe without SO_REUSEPORT, which a listener's would not share)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _a_server(pid: int) -> bool:
    """Whether `pid` is a live `bentoml serve` process (not a process that took a dead server's pid since)."""
    try:
        return "bentoml" in " ".join(psutil.Process(pid).cmdline())
    except psutil.AccessDenied:
        return True  # another user's process: assume the claim holds
    except psutil.Error:
        return False


def claim_port(host: str, port: int, server: int) -> None:
    """Let this worker of `server` (the pid of its `bentoml serve` process) listen on `port`, or raise PortTaken.

    A lock file per port names the server that owns it: the workers of that server share the port; another live
    server, or any other process listening there, is refused with a message saying so.
    """
    with open(CLAIMS / f"modelroad-grpc-{port}.owner", "a+") as owner_file:
        fcntl.flock(owner_file, fcntl.LOCK_EX)
        owner_file.seek(0)
        owner = owner_file.read().strip()
        if owner == str(server):
            return  # a sibling worker claimed it
        if owner.isdigit() and _a_server(int(owner)):
            raise PortTaken(
                f"gRPC port {port} is served by another modelroad server (process {owner}): set MODELROAD_GRPC_PORT "
                "to a free port for this one, or 0 to serve no gRPC"
            )
        if not _bindable(host, port):
            raise PortTaken(
                f"gRPC port {port} on {host} is in use by another process: set MODELROAD_GRPC_PORT to a free port, "
                "or 0 to serve no gRPC"
            )
        owner_file.seek(0)
        owner_file.truncate()
        owner_file.write(str(server))


class GRPCServer:
    """One worker's gRPC server, on the worker's event loop (its batchers' loop)."""

    def __init__(self, worker: Worker, settings: ServeSettings):
        self.worker, self.settings = worker, settings
        self.server: grpc.aio.Server | None = None

    async def start(self, host: str | None = None) -> int:
        """Claim the port, listen, serve; the port listened on."""
        host = host or http_host()
        port = self.settings.grpc_port
        claim_port(host, port, os.getppid())
        server = grpc.aio.server(
            options=[
                ("grpc.so_reuseport", 1),
                ("grpc.max_receive_message_length", self.settings.max_body_bytes),
                ("grpc.max_send_message_length", -1),
            ]
        )
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(GRPCInference(self.worker, self.settings), server)
        health_pb2_grpc.add_HealthServicer_to_server(Health(self.worker.ready), server)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        bound = (
            server.add_secure_port(address, self.credentials())
            if self.settings.ssl_certfile and self.settings.ssl_keyfile
            else server.add_insecure_port(address)
        )
        await server.start()
        self.server = server
        log.info("gRPC inference protocol on %s", address)
        return bound

    def credentials(self) -> grpc.ServerCredentials:
        """With HTTPS on (MODELROAD_SSL_*), gRPC speaks TLS with the same certificate: never plaintext beside it."""
        key = Path(self.settings.ssl_keyfile).read_bytes()
        return grpc.ssl_server_credentials([(key, Path(self.settings.ssl_certfile).read_bytes())])

    async def stop(self, grace_s: float) -> None:
        """Calls in flight are answered (within `grace_s`); new ones are refused."""
        if self.server is not None:
            await self.server.stop(grace_s)
