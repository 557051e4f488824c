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
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

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
    return {
        "files": len(entered),
        "calls_into_another_file": len(edges),
        "reentries": reentries,
        "entries": entered,
    }


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
    }


def main(argv: list[str] | None = None) -> int:
    routes = requests()
    parser = argparse.ArgumentParser(prog="python -m bench.request_path", description=__doc__.split("\n\n")[0])
    parser.add_argument("routes", nargs="*", help=f"of {list(routes)}; default: every one")
    args = parser.parse_args(argv)
    if unknown := set(args.routes) - set(routes):
        parser.error(f"unknown routes {sorted(unknown)}")
    from starlette.testclient import TestClient

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
