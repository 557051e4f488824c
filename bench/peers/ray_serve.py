"""Peer: Ray Serve with `@serve.batch` and ONNX Runtime, behind Ray's HTTP proxy.

    MODELROAD_PEER_SPEC=spec.json PYTHONPATH=. .venv-peers/bin/python -m bench.peers.ray_serve --port 8000

Ray's own recipe for batched model serving: one deployment with a FastAPI ingress, `--replicas`
replicas (the platform's worker count), each batching every family with `@serve.batch` and running
the same ONNX files with the same thread settings as the platform's CPU runner.
"""

# No `from __future__ import annotations`: Serve's class ingress would read the string annotations
# as query parameters.
import argparse
import os
import signal
import sys
import time
from typing import Any

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, UploadFile
from ray import serve

from bench.peers.families import ForecastRequest, Inputs, TextRequest, load_families

# Batch limits as the platform's defaults (MODELROAD_MAX_BATCH_SIZE, MODELROAD_MAX_WAIT_MS).
MAX_BATCH, WAIT_S = 64, 0.001


app = FastAPI(title="peer: Ray Serve + ONNX Runtime")


@serve.deployment(max_ongoing_requests=256)
@serve.ingress(app)
class RayPeer:
    def __init__(self, threads: int):
        self.image, self.forecast_family, self.text = load_families()
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        self.sessions = {
            f: ort.InferenceSession(f.files.onnx, options, providers=["CPUExecutionProvider"])
            for f in (self.image, self.forecast_family, self.text)
        }

    def run(self, family: Any, items: list[Inputs]) -> list[np.ndarray]:
        return list(self.sessions[family].run(None, family.stack(items))[0])

    @serve.batch(max_batch_size=MAX_BATCH, batch_wait_timeout_s=WAIT_S)
    async def image_batch(self, items: list[Inputs]) -> list[np.ndarray]:
        return self.run(self.image, items)

    @serve.batch(max_batch_size=MAX_BATCH, batch_wait_timeout_s=WAIT_S)
    async def forecast_batch(self, items: list[Inputs]) -> list[np.ndarray]:
        return self.run(self.forecast_family, items)

    @serve.batch(max_batch_size=MAX_BATCH, batch_wait_timeout_s=WAIT_S)
    async def text_batch(self, items: list[Inputs]) -> list[np.ndarray]:
        return self.run(self.text, items)

    @app.post("/classify_image")
    async def classify_image(self, image: UploadFile) -> dict[str, Any]:
        item = self.image.inputs(await image.read())
        return self.image.answer(item, await self.image_batch(item))

    @app.post("/forecast")
    async def forecast(self, request: ForecastRequest) -> dict[str, Any]:
        item = self.forecast_family.inputs(request.history)
        return self.forecast_family.answer(item, await self.forecast_batch(item), request.horizon)

    @app.post("/classify_text")
    async def classify_text(self, request: TextRequest) -> dict[str, Any]:
        item = self.text.inputs(request.text)
        return self.text.answer(item, await self.text_batch(item))

    @app.get("/readyz")
    async def ready(self) -> dict[str, str]:
        return {"status": "ready"}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.peers.ray_serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--replicas", type=int, default=2)
    args = parser.parse_args()
    import ray

    # Threads per replica as the platform divides cores among its workers.
    threads = max(1, (os.cpu_count() or 1) // args.replicas)
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        deployment = RayPeer.options(num_replicas=args.replicas, ray_actor_options={"num_cpus": 0})
        serve.run(deployment.bind(threads), route_prefix="/")
        while True:
            time.sleep(3600)
    finally:
        # Not serve.shutdown(): the process group's SIGTERM has already stopped the controller it would wait for.
        ray.shutdown()


if __name__ == "__main__":
    main()
