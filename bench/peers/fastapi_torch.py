"""Peer: the same models in PyTorch eager behind plain FastAPI, one forward pass per request (no batching).

    MODELROAD_PEER_SPEC=spec.json PYTHONPATH=. .venv-peers/bin/uvicorn bench.peers.fastapi_torch:app --workers 2

The common way a model gets served: sync handlers in FastAPI's thread pool, pydantic request models,
`torch.inference_mode()`, one intra-op thread per worker process so workers do not fight over cores.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, UploadFile

from bench.peers.eager import eager_model
from bench.peers.families import ForecastRequest, Inputs, TextRequest, load_families

torch.set_num_threads(1)

IMAGE, FORECAST, TEXT = load_families()
NETS = {family: eager_model(family.files.metadata, family.files.checkpoint) for family in (IMAGE, FORECAST, TEXT)}


def predict(family: Any, item: Inputs) -> np.ndarray:
    with torch.inference_mode():
        outputs = NETS[family](*(torch.from_numpy(array) for array in family.stack([item]).values()))
    return outputs[0].numpy()


app = FastAPI(title="peer: FastAPI + PyTorch eager")


@app.post("/classify_image")
def classify_image(image: UploadFile) -> dict[str, Any]:
    item = IMAGE.inputs(image.file.read())
    return IMAGE.answer(item, predict(IMAGE, item))


@app.post("/forecast")
def forecast(request: ForecastRequest) -> dict[str, Any]:
    item = FORECAST.inputs(request.history)
    return FORECAST.answer(item, predict(FORECAST, item), request.horizon)


@app.post("/classify_text")
def classify_text(request: TextRequest) -> dict[str, Any]:
    item = TEXT.inputs(request.text)
    return TEXT.answer(item, predict(TEXT, item))


@app.get("/readyz")
def ready() -> dict[str, str]:
    return {"status": "ready"}
