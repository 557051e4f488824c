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

from contracts.tensors import feeds_problem
from services.app import build_app
from services.errors import BadRequest, NotFound
from services.remote import DEVICE_HEADER, NPZ, decode_feeds, encode_feeds
from services.runner import OnnxRunner, verified_model
from services.settings import SETTINGS, service_config
from services.startup import quiet_garbage_collector

# One worker owns the device; it runs the models itself, whatever MODELROAD_RUNNER_URL says.
RUNNER_SETTINGS = dataclasses.replace(SETTINGS, workers=1, runner_url="")
router = APIRouter()


@router.post("/run/{tag}", summary="run one call (an .npz of the model's inputs) in a batch")
async def run_model(request: Request, tag: str) -> Response:
    runners: dict[str, OnnxRunner] = request.app.state.runners
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


APP = build_app("modelroad-runner", "The platform's models, run in batches for its API workers.", [router])
# The platform's registry: every model it serves (MODELROAD_*_MODEL and MODELROAD_MODELS), checked at import.
REFERENCES = {tag: verified_model(tag, SETTINGS.pinned_digests) for tag in SETTINGS.served_models}


class ModelRunner:
    """Every model the platform serves, no HTTP API of its own."""

    def __init__(self) -> None:
        self.by_tag: dict[str, OnnxRunner] = {}
        for tag in REFERENCES:
            runner = OnnxRunner(bentoml.models.get(tag), RUNNER_SETTINGS)
            runner.warm_up()
            self.by_tag[runner.tag] = runner
        APP.state.runners = self.by_tag

    @bentoml.on_startup
    def quiet_garbage_collector(self) -> None:
        quiet_garbage_collector()

    def __is_ready__(self) -> bool:
        return all(runner.warmed for runner in self.by_tag.values())


# Store references at class scope, so that `bentoml build` packs every served model into the bento.
for number, reference in enumerate(REFERENCES.values()):
    setattr(ModelRunner, f"model_{number}", reference)
ModelRunner = bentoml.service(**service_config("modelroad-runner", workers=1))(
    bentoml.asgi_app(APP, path="/")(ModelRunner)
)
