"""The models in a service of their own: `bentoml serve services.runner_service:ModelRunner`.

For a GPU deployment: one process owns the GPU and batches the calls of every API worker (each call
already a batch of that worker's requests), while the API workers, started with
MODELROAD_RUNNER_URL pointing here, parse, validate and pre-process on CPU. On CPU alone the
runner stays in the API process: this hop costs more than it saves there.

`POST /run/<model tag>`: an .npz of the model's input arrays -> an .npz of its outputs
(services/remote.py). Calls whose inputs have the same shapes past the batch axis run as one batch.
"""

from __future__ import annotations

import dataclasses

import bentoml
from fastapi import APIRouter, Request
from fastapi.responses import Response

from services.app import build_app
from services.errors import BadRequest, NotFound
from services.remote import DEVICE_HEADER, NPZ, decode_feeds, encode_feeds
from services.runner import OnnxRunner, feeds_problem, verified_model
from services.settings import SETTINGS, service_config
from services.startup import quiet_garbage_collector

# One worker owns the device; it runs the models itself, whatever MODELROAD_RUNNER_URL says.
RUNNER_SETTINGS = dataclasses.replace(SETTINGS, workers=1, runner_url="")
router = APIRouter()


@router.post("/run/{tag}", summary="run one call (an .npz of the model's inputs) in a batch")
async def run_model(request: Request, tag: str) -> Response:
    runners: dict[str, OnnxRunner] = bentoml.get_current_service().by_tag
    runner = runners.get(tag)
    if runner is None:
        raise NotFound(f"this runner serves {sorted(runners)}; not {tag}")
    try:
        feeds = decode_feeds(await request.body())
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    problem = feeds_problem(runner.inputs, feeds)
    if problem:
        raise BadRequest(f"{tag}: {problem}")
    outputs = await runner.submit(feeds)
    return Response(
        encode_feeds({spec.name: outputs[spec.name] for spec in runner.outputs}),
        media_type=NPZ,
        headers={DEVICE_HEADER: runner.session.device},
    )


@bentoml.service(**service_config("modelroad-runner", workers=1))
@bentoml.asgi_app(
    build_app("modelroad-runner", "The platform's models, run in batches for its API workers.", [router]), path="/"
)
class ModelRunner:
    """Every model the platform serves (the same MODELROAD_*_MODEL settings), no HTTP API of its own."""

    image_model = verified_model(SETTINGS.image_model, SETTINGS.pinned_digests)
    lstm_model = verified_model(SETTINGS.lstm_model, SETTINGS.pinned_digests)
    gru_model = verified_model(SETTINGS.gru_model, SETTINGS.pinned_digests)
    text_model = verified_model(SETTINGS.text_model, SETTINGS.pinned_digests)

    def __init__(self) -> None:
        self.by_tag: dict[str, OnnxRunner] = {}
        for tag in (SETTINGS.image_model, SETTINGS.lstm_model, SETTINGS.gru_model, SETTINGS.text_model):
            runner = OnnxRunner(bentoml.models.get(tag), RUNNER_SETTINGS)
            runner.warm_up()
            self.by_tag[runner.tag] = runner

    @bentoml.on_startup
    def quiet_garbage_collector(self) -> None:
        quiet_garbage_collector()

    def __is_ready__(self) -> bool:
        return all(runner.warmed for runner in self.by_tag.values())
