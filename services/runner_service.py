"""The models in a service of their own: `bentoml serve services.runner_service:ModelRunner`.

For a GPU deployment: one process owns the GPU and batches the calls of every API worker (each call
already a batch of that worker's requests), while the API workers, started with
MODELROAD_RUNNER_URL pointing here, parse, validate and pre-process on CPU. On CPU alone the
runner stays in the API process: this hop costs more than it saves there.

`POST /run/<model tag>`: an .npz of the model's input arrays -> an .npz of its outputs
(services/runtime/remote.py). Calls whose inputs have the same shapes past the batch axis run as one batch.

It follows the API workers' repository: each worker holds the versions it serves
(`PUT /models/<tag>/holders/<worker>`, which loads a stored version not served yet) and releases those it
retires (`DELETE`); a version no worker holds is closed. So `load`, `unload` and a traffic split on the
API reach the runner without a restart.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import defaultdict

import bentoml
from fastapi import APIRouter, Request
from fastapi.responses import Response

from contracts.tensors import feeds_problem
from services.edge.app import build_app
from services.errors import BadRequest, NotFound
from services.families.base import served_tags
from services.ops.startup import quiet_garbage_collector
from services.runtime.remote import DEVICE_HEADER, NPZ, decode_feeds, encode_feeds
from services.runtime.runner import OnnxRunner, verified_model
from services.settings import SETTINGS, service_config

log = logging.getLogger(__name__)

# One worker owns the device; it runs the models itself, whatever MODELROAD_RUNNER_URL says.
RUNNER_SETTINGS = dataclasses.replace(SETTINGS, workers=1, runner_url="")
router = APIRouter()


def runner_of(request: Request) -> ModelRunner:
    """This process's model runner (the one reader of the app's state: `ModelRunner` attaches itself at start)."""
    return request.app.state.model_runner


@router.put("/models/{tag}/holders/{holder}", summary="an API worker serves this version: load it if need be")
async def hold_model(request: Request, tag: str, holder: str) -> dict[str, str]:
    runner = await runner_of(request).hold(tag, holder)
    return {"tag": runner.tag, "device": runner.session.device}


@router.delete("/models/{tag}/holders/{holder}", summary="an API worker retired this version")
async def release_model(request: Request, tag: str, holder: str) -> dict[str, str]:
    await runner_of(request).release(tag, holder)
    return {"tag": tag}


@router.post("/run/{tag}", summary="run one call (an .npz of the model's inputs) in a batch")
async def run_model(request: Request, tag: str) -> Response:
    runners = runner_of(request).by_tag
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
REFERENCES = {tag: verified_model(tag, SETTINGS.pinned_digests) for tag in served_tags(SETTINGS)}


def open_runner(tag: str) -> OnnxRunner:
    runner = OnnxRunner(bentoml.models.get(tag), RUNNER_SETTINGS)
    runner.warm_up()
    return runner


class ModelRunner:
    """Every model the platform serves, no HTTP API of its own."""

    def __init__(self) -> None:
        self.by_tag: dict[str, OnnxRunner] = {}
        self.holders: dict[str, set[str]] = defaultdict(set)
        for tag in REFERENCES:
            runner = open_runner(tag)
            self.by_tag[runner.tag] = runner
        self._changing = asyncio.Lock()
        APP.state.model_runner = self

    async def hold(self, tag: str, holder: str) -> OnnxRunner:
        async with self._changing:
            if tag not in self.by_tag:
                try:
                    verified_model(tag, SETTINGS.pinned_digests)
                    runner = await asyncio.to_thread(open_runner, tag)
                except bentoml.exceptions.NotFound:
                    raise NotFound(f"the store has no model {tag}") from None
                except Exception as exc:
                    raise BadRequest(f"{tag} cannot be loaded: {exc}") from None
                self.by_tag[runner.tag] = runner
                log.info("%s loaded for %s", tag, holder)
            self.holders[tag].add(holder)
            return self.by_tag[tag]

    async def release(self, tag: str, holder: str) -> None:
        async with self._changing:
            self.holders[tag].discard(holder)
            if not self.holders[tag] and tag in self.by_tag:
                self.by_tag.pop(tag).close()  # its holders drained their requests before they let go
                del self.holders[tag]
                log.info("%s closed: no API worker serves it", tag)

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
