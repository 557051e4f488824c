"""Which project files one request passes through, traced: a newcomer's reading order, and a check that the
family module stays the hub.

    .venv/bin/python -m bench.request_path                   # /classify_image, then each other route
    .venv/bin/python -m bench.request_path /classify_text

The platform runs in-process (BentoML's ASGI app under Starlette's TestClient) on the store's models; one
warm-up request, then the traced one. Every call from one project file into a function of another is an
edge (a call site counted once, however often it runs; coroutines resumed after an await are not new
calls). A file is *entered* once per edge into it; a *re-entry* is an edge into a file entered before
whose caller is not the file that first entered it (a call back up, or a second visit from elsewhere).
Files outside the project (Starlette, BentoML, NumPy) are not counted; the edge middleware is counted.
"""

from __future__ import annotations

import argparse
import inspect
import io
import json
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("services", "contracts", "models", "training")
PAYLOADS = ROOT / "loadtests" / "payloads"
SUSPENDABLE = inspect.CO_COROUTINE | inspect.CO_GENERATOR | inspect.CO_ASYNC_GENERATOR | inspect.CO_ITERABLE_COROUTINE


def project_file(frame: FrameType | None) -> str | None:
    path = Path(frame.f_code.co_filename) if frame else None
    if path is None or not path.is_relative_to(ROOT) or path.parts[len(ROOT.parts)] not in PACKAGES:
        return None
    return str(path.relative_to(ROOT))


class Tracer:
    """Call edges between project files, in the order each was first seen."""

    def __init__(self) -> None:
        self.edges: dict[tuple[str, str, str], None] = {}  # (caller file, callee file, callee function)
        self.lock = threading.Lock()
        self.active = False
        self.suspendable: set[FrameType] = set()  # coroutine and generator frames already called once

    def profile(self, frame: FrameType, event: str, arg: Any) -> None:
        if not self.active or event != "call":
            return
        callee = project_file(frame)
        if callee is None:
            return
        if frame.f_code.co_flags & SUSPENDABLE:  # a resumed coroutine is not a new call
            if frame in self.suspendable:
                return
            self.suspendable.add(frame)
        caller_frame = frame.f_back
        while caller_frame is not None and project_file(caller_frame) is None:
            caller_frame = caller_frame.f_back
        caller = project_file(caller_frame)
        if caller is not None and caller != callee:
            with self.lock:
                self.edges.setdefault((caller, callee, frame.f_code.co_qualname), None)

    def install(self) -> None:
        """In this thread and every thread started later (the app's event loop, the batchers' threads): so it
        is installed before the app starts, and switched on (`active`) for the traced request only."""
        sys.setprofile(self.profile)
        threading.setprofile(self.profile)

    def trace(self, send: Callable[[], Any]) -> list[tuple[str, str, str]]:
        self.edges.clear()
        self.active = True
        try:
            send()
        finally:
            self.active = False
            self.suspendable.clear()
        return list(self.edges)


def summary(edges: list[tuple[str, str, str]]) -> dict[str, Any]:
    entered: dict[str, list[str]] = {}
    first_caller: dict[str, str] = {}
    reentries = []
    for caller, callee, function in edges:
        if callee in entered and first_caller[callee] != caller:
            reentries.append(f"{caller} -> {callee}:{function}")
        first_caller.setdefault(callee, caller)
        first_caller.setdefault(caller, "")  # where the request starts
        entered.setdefault(caller, [])
        entered.setdefault(callee, []).append(function)
    packages = [(package_of(caller), package_of(callee)) for caller, callee, _ in edges]
    package_edges = list(dict.fromkeys((a, b) for a, b in packages if a != b))
    return {
        "files": len(entered),
        "calls_into_another_file": len(edges),
        "packages": len({package for edge in package_edges for package in edge} | {package_of(f) for f in entered}),
        "package_reentries": package_reentries(package_edges),
        # A call into a family from anything but the front door (the edge, the app) or a family: a call back up.
        "calls_up_into_a_family": [
            f"{caller} -> {callee}:{function}"
            for caller, callee, function in edges
            if package_of(callee) == "services/families"
            and package_of(caller) not in {"services/families", "services/edge", "services/compat"}
        ],
        "reentries": reentries,
        "entries": entered,
    }


def package_of(file: str) -> str:
    """A file's package, as the layers name them: services/edge, contracts (services/platform.py is services)."""
    return str(Path(file).parent)


def package_reentries(edges: list[tuple[str, str]]) -> list[str]:
    """Package edges into a package entered before, from another caller than the one that first entered it."""
    first_caller: dict[str, str] = {}
    again = []
    for caller, callee in edges:
        if callee in first_caller and first_caller[callee] != caller:
            again.append(f"{caller} -> {callee}")
        first_caller.setdefault(callee, caller)
        first_caller.setdefault(caller, "")
    return again


def requests() -> dict[str, Callable[[Any], Any]]:
    image = (PAYLOADS / "images" / "ankle-boot-0.png").read_bytes()
    history = json.loads((PAYLOADS / "forecast_example.json").read_text())
    pixels = {"inputs": [{"name": "pixels", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.0] * 784}]}
    text = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a small domestic cat"]}]}
    return {
        "/classify_image": lambda c: c.post("/classify_image", files={"image": ("a.png", io.BytesIO(image))}),
        "/forecast": lambda c: c.post("/forecast", json=history),
        "/classify_text": lambda c: c.post("/classify_text", json={"text": "a small domesticated carnivore"}),
        "oip fashion-cnn": lambda c: c.post("/v2/models/fashion-cnn/infer", json=pixels),
        "oip text pipeline": lambda c: c.post("/v2/models/wordnet-transformer-pipeline/infer", json=text),
        "grpc ModelInfer fashion-cnn": lambda c: grpc_infer("fashion-cnn", np.zeros((1, 1, 28, 28), np.float32)),
    }


class Answered:
    """A gRPC answer, read as the HTTP ones are (`raise_for_status`): the call raised already if it failed."""

    def raise_for_status(self) -> None:
        return None


def grpc_infer(model: str, pixels: np.ndarray) -> Answered:
    """One `ModelInfer` through the worker's gRPC server (raw contents, as tritonclient sends them)."""
    import grpc
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc as pb_grpc

    from services.settings import SETTINGS

    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="pixels", datatype="FP32", shape=pixels.shape)
    request.raw_input_contents.append(pixels.tobytes())
    with grpc.insecure_channel(f"127.0.0.1:{SETTINGS.grpc_port}") as channel:
        pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
    return Answered()


def main(argv: list[str] | None = None) -> int:
    routes = requests()
    parser = argparse.ArgumentParser(prog="python -m bench.request_path", description=__doc__.split("\n\n")[0])
    parser.add_argument("routes", nargs="*", help=f"of {list(routes)}; default: every one")
    args = parser.parse_args(argv)
    if unknown := set(args.routes) - set(routes):
        parser.error(f"unknown routes {sorted(unknown)}")
    from starlette.testclient import TestClient

    from harness.servers import free_port

    os.environ.setdefault("MODELROAD_GRPC_PORT", str(free_port()))  # the worker's gRPC server, in this process
    from services.platform import Platform

    tracer = Tracer()
    tracer.install()
    with TestClient(Platform.to_asgi(), raise_server_exceptions=True) as client:
        for route in args.routes or list(routes):
            routes[route](client).raise_for_status()  # warm: first-call imports and caches are not the path
            edges = tracer.trace(lambda route=route: routes[route](client).raise_for_status())
            print(json.dumps({"route": route, **summary(edges)}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
