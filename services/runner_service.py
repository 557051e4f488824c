"""The models in a service of their own: `bentoml serve services.runner_service:ModelRunner`.

For a GPU deployment: one process owns the GPU and batches the calls of every API worker (each call
already a batch of that worker's requests), while the API workers, started with
MODELROAD_RUNNER_URL pointing here, parse, validate and pre-process on CPU. On CPU alone the
runner stays in the API process: this hop costs more than it saves there.

`POST /run/<model tag>`: an .npz of the model's input arrays -> the .npy of its first output
(services/remote.py). Calls whose inputs have the same shapes past the batch axis run as one batch.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import bentoml
import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from services.base import ModelAPI, platform_service
from services.forecast import ForecastAPI
from services.image import ImageAPI
from services.remote import DEVICE_HEADER, NPY, Feeds, decode_feeds, encode_array
from services.runner import OnnxRunner, rows, run_calls
from services.settings import SETTINGS
from services.text import TextAPI

# One worker owns the device; it runs the models itself, whatever MODELROAD_RUNNER_URL says.
RUNNER_SETTINGS = dataclasses.replace(SETTINGS, workers=1, runner_url="")
# ONNX Runtime's element types -> NumPy's (the types these models use, and their near kin).
ELEMENT_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
                 "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_}  # fmt: skip


def feeds_problem(inputs: Sequence, feeds: Feeds) -> str | None:
    """What is wrong with a call's arrays for a model with these ONNX inputs, or None.

    Checked before a call joins a batch, so that one bad call cannot fail the others in it.
    """
    names = [spec.name for spec in inputs]
    if sorted(feeds) != sorted(names):
        return f"the model's inputs are {names}; got {sorted(feeds)}"
    for spec in inputs:
        array, want = feeds[spec.name], ELEMENT_TYPES.get(spec.type)
        if want is not None and array.dtype != want:
            return f"{spec.name} must be {np.dtype(want).name}; got {array.dtype.name}"
        if array.ndim != len(spec.shape) or any(isinstance(d, int) and d != n for d, n in zip(spec.shape, array.shape)):
            return f"{spec.name} must have shape {spec.shape}; got {list(array.shape)}"
    if len({len(array) for array in feeds.values()}) != 1 or rows(feeds) == 0:
        return "every input must hold the same number of rows, at least one"
    return None


def zero_feeds(inputs: Sequence) -> Feeds:
    """A one-row call of zeros (dynamic axes of length 1), to warm a session up."""
    return {spec.name: np.zeros([d if isinstance(d, int) else 1 for d in spec.shape], ELEMENT_TYPES[spec.type])
            for spec in inputs}  # fmt: skip


async def run_model(request: Request) -> Response:
    runners: dict[str, OnnxRunner] = bentoml.get_current_service().by_tag
    tag = request.path_params["tag"]
    runner = runners.get(tag)
    if runner is None:
        return JSONResponse({"error": f"this runner serves {sorted(runners)}; not {tag}"}, status_code=404)
    try:
        feeds = decode_feeds(await request.body())
    except ValueError as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)
    problem = feeds_problem(runner.session.inputs, feeds)
    if problem:
        return JSONResponse({"error": f"{tag}: {problem}"}, status_code=400)
    output = await runner.submit(feeds)
    return Response(encode_array(output), media_type=NPY, headers={DEVICE_HEADER: runner.session.device})


@platform_service("modelroad-runner", workers=1)
@bentoml.asgi_app(Starlette(routes=[Route("/{tag}", run_model, methods=["POST"])]), path="/run")
class ModelRunner(ModelAPI):
    """Every model the platform serves (the same MODELROAD_*_MODEL settings), no HTTP API of its own."""

    image_model = ImageAPI.image_model
    lstm_model = ForecastAPI.lstm_model
    gru_model = ForecastAPI.gru_model
    text_model = TextAPI.text_model

    def __init__(self) -> None:
        super().__init__()
        self.by_tag: dict[str, OnnxRunner] = {}
        for stored in (self.image_model, self.lstm_model, self.gru_model, self.text_model):
            runner = OnnxRunner(stored, RUNNER_SETTINGS, run_calls, count_items=rows)
            self.by_tag[runner.tag] = self.add_runner(runner, zero_feeds(runner.session.inputs))
