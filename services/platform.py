"""Every family on one port: `bentoml serve services.platform:Platform`."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

import bentoml

from contracts.card import ModelCard
from services.compat.bentoml_asgi import AppFirst
from services.dataplane.admin import RepositoryAdmin
from services.dataplane.desired import DesiredState, replica_name
from services.dataplane.models import InferenceModel, ModelRepository, OnnxModel, pipeline_name
from services.dataplane.pending import PendingModels, stored_name
from services.dataplane.traffic import Policy
from services.edge.app import build_app, gate_of
from services.edge.readiness import ReadinessReport
from services.edge.worker import Worker
from services.families.base import FAMILIES, family_of_task, family_tags, served_tags
from services.frontends import console, oip_rest, repository
from services.frontends.oip_grpc import GRPCServer, PortTaken
from services.ops.startup import DRAIN, quiet_garbage_collector
from services.runtime.runner import OnnxRunner, verified_model
from services.settings import SETTINGS, service_config

log = logging.getLogger(__name__)

# The served families (FAMILIES) are registered where each is defined (services/families/), with its store tags.
TAGS = family_tags(SETTINGS)
# Under `python -m training serve`, family models still training: routes now, models when registered.
PENDING = PendingModels.at_start(SETTINGS.training_progress, [tag for tags in TAGS.values() for tag in tags])
# Checked against their sha256 at import, so `bentoml serve` refuses a changed file instead of restarting workers.
REFERENCES = {
    tag: verified_model(tag, SETTINGS.pinned_digests) for tag in served_tags(SETTINGS) if not PENDING.skips(tag)
}
STORED = {tag: bentoml.models.get(tag) for tag in REFERENCES}  # `latest` resolved once, at start


def start_cards(family: str) -> dict[str, ModelCard]:
    """A family's model names and the cards its routes are built for: the stored models', and pending ones'."""
    cards = {STORED[t].tag.name: ModelCard.from_metadata(STORED[t].info.metadata) for t in TAGS[family] if t in STORED}
    return {**cards, **{name: PENDING.cards[name] for t in TAGS[family] if (name := stored_name(t)) in PENDING.cards}}


def route_cards(family: str) -> dict[str, ModelCard]:
    """What a family's routes are built for: its own models first, then the other stored models of its task served
    at start (a fine-tune in MODELROAD_MODELS), which a request names by its `model` field."""
    spec, own = FAMILIES[family], start_cards(family)
    others = {
        stored.tag.name: card
        for stored in STORED.values()
        if stored.tag.name not in own and (card := ModelCard.from_metadata(stored.info.metadata)).task == spec.task
    }
    return {**own, **others} if own else {}


# Each family model's name, its family and its card at start (what its routes were built for).
FAMILY_MODELS = {
    name: (spec.kind, card) for family, spec in FAMILIES.items() for name, card in start_cards(family).items()
}
# A family model served in more than one version at start (another in MODELROAD_MODELS, side by side) keeps its
# routes on the version its setting names: a policy gives that one all the traffic until the repository changes it.
START_POLICIES = {
    name: {"split": {STORED[t].tag.version: 100}}
    for family in FAMILIES
    for t in TAGS[family]
    if t in STORED and len({str(m.tag) for m in STORED.values() if m.tag.name == (name := STORED[t].tag.name)}) > 1
}
# With the repository extension on, what is served is the fleet's state, beside the store, kept across restarts
# (the first server on a store writes its start there); with models pending alone, this server's own.
START_TAGS = [str(m.tag) for m in STORED.values()]
REPLICA = replica_name()  # named in the first process, so that its workers inherit one replica's name
if SETTINGS.admin_token:
    STATE: DesiredState | None = DesiredState.at(SETTINGS.fleet_folder, START_TAGS, START_POLICIES)
else:
    STATE = DesiredState.of_server(START_TAGS, START_POLICIES) if PENDING.joining else None
GATE = gate_of(SETTINGS, guarded=True)  # per worker: each worker process imports this module and makes its own
APP = build_app(
    "modelroad",
    "CNN, RNN, Transformer, diffusion and GAN models served with ONNX Runtime: family routes, and the Open Inference "
    "Protocol v2 (with Triton's binary tensor extension) for every model and each family's pipeline.",
    [
        *(spec.kind.routes(cards) for family, spec in FAMILIES.items() if (cards := route_cards(family))),
        oip_rest.routes(
            names=[
                n
                for name in [*(m.tag.name for m in STORED.values()), *PENDING.cards]
                for n in (name, pipeline_name(name))
            ],
            versions=[m.tag.version for m in STORED.values()],
            extensions=[
                *(["model_repository"] if SETTINGS.admin_token else []),
                *(["system_shared_memory"] if SETTINGS.shared_memory else []),
            ],
        ),
        *([repository.routes(SETTINGS.admin_token)] if SETTINGS.admin_token else []),
        *([oip_rest.shared_memory_routes()] if SETTINGS.shared_memory else []),
        console.routes([spec.console_route for spec in FAMILIES.values() if spec.console_route]),
    ],
    gate=GATE,
    guarded=True,
)


def open_version(stored: bentoml.Model) -> list[InferenceModel]:
    """A stored model version as served, warmed up: its graphs (tensors in and out; a generator's decoder too) and,
    for a family's model or another of its task, the family's pipeline over the same runners (what the family's
    routes run)."""
    card = ModelCard.from_metadata(stored.info.metadata)
    family = FAMILY_MODELS.get(stored.tag.name)
    if family is not None and (problem := interface_change(family[1], card)):
        raise ValueError(f"{stored.tag} cannot serve {stored.tag.name}'s routes: {problem}")
    spec = family_of_task(card.task)
    kind = family[0] if family is not None else spec.kind if spec else None
    if kind is None:
        runners: tuple[OnnxRunner, ...] = (OnnxRunner(stored, SETTINGS),)
        models: list[InferenceModel] = [OnnxModel(runners[0])]
    else:
        version = kind(stored)
        runners = version.runners
        models = [*map(OnnxModel, runners), version.pipeline()]
    for runner in runners:
        runner.warm_up()
    return models


def interface_change(before: ModelCard, after: ModelCard) -> str | None:
    """What keeps a new version from the routes built for a family model's first one: other labels or inputs."""
    if before.labels != after.labels:
        return f"its labels {list(after.labels)} are not the served version's {list(before.labels)}"
    if before.inputs != after.inputs:
        return f"its inputs {after.inputs} are not the served version's {before.inputs}"
    return None


def load_version(tag: str) -> list[InferenceModel]:
    """A version the repository admin loads: checked against its digests first."""
    verified_model(tag, SETTINGS.pinned_digests)
    return open_version(bentoml.models.get(tag))


class Platform:
    """All model families in one process: one port, one /metrics, no inter-service hop; more models by OIP alone.

    The worker's objects (`Worker`) are attached to the app, where its routes find them, and handed to its gRPC
    server.
    """

    def __init__(self) -> None:
        unique = {str(stored.tag): stored for stored in STORED.values()}.values()  # `latest` may name a pinned tag
        self.repository = ModelRepository([model for stored in unique for model in open_version(stored)])
        self.repository.policies = {name: Policy.parse(record) for name, record in START_POLICIES.items()}
        self.repository.unserved = PENDING.refusal
        self.admin = (
            RepositoryAdmin(
                self.repository,
                STATE,
                load_version,
                SETTINGS.workers,
                SETTINGS.request_timeout_s,
                families=FAMILY_MODELS,
            )
            if STATE
            else None
        )
        self.worker = Worker(self.repository, GATE, self.__is_ready__, self.admin, PENDING)
        self.worker.attach(APP)
        self._joining: asyncio.Task | None = None  # held: the loop keeps only a weak reference to a task
        self.grpc = GRPCServer(self.worker, SETTINGS) if SETTINGS.grpc_port else None

    @bentoml.on_startup
    async def start(self) -> None:
        quiet_garbage_collector()
        DRAIN.install(SETTINGS.drain_s)
        if self.admin:
            self.admin.start_following()  # also catches up a restarted worker on what was loaded before
        if self.admin and PENDING.joining:
            self._joining = asyncio.get_running_loop().create_task(PENDING.join_when_registered(self.admin))
        if self.grpc:
            try:
                await self.grpc.start()
            except PortTaken as taken:
                # BentoML would restart the worker for ever: the whole server stops instead, saying why.
                log.critical("%s; stopping the server", taken)
                os.kill(os.getppid(), signal.SIGTERM)
                raise

    @bentoml.on_shutdown
    async def stop(self) -> None:
        if self.grpc:  # after the HTTP drain: gRPC calls in flight are answered, new ones were refused meanwhile
            await self.grpc.stop(SETTINGS.drain_s + 5)

    def __is_ready__(self) -> bool:
        # What is served now (models unloaded since start are not), and with the extension, all of it caught up.
        return self.repository.ready() and (self.admin is None or self.admin.caught_up())


# Store references at class scope, so that `bentoml build` packs every served model into the bento.
for number, reference in enumerate(REFERENCES.values()):
    setattr(Platform, f"model_{number}", reference)
Platform = bentoml.service(**service_config("modelroad"))(bentoml.asgi_app(APP, path="/")(Platform))
Platform.add_asgi_middleware(ReadinessReport, mounted=APP)
Platform.add_asgi_middleware(AppFirst, mounted=APP)
