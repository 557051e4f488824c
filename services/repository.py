"""The model repository: what a server serves, by name and version, and Triton's repository extension
(index, load, unload) to change it while traffic flows, plus each model's version policy (`traffic`: a
canary split and a shadow), on when MODELROAD_ADMIN_TOKEN is set.

The store is the repository (every registered model and version); a server serves some of it. `load NAME`
serves one stored version of NAME (the latest unless `parameters.version` names one: loading an older version
is the rollback), retires its other versions and ends its policy; `unload NAME` retires them all. A retired
version answers no new request and is closed once its requests in flight have finished. Every route follows
the repository: a family's routes and pipeline run whichever version of its model the policy chooses. A
family's model can be replaced but not unloaded (its routes would have nothing to run).

`bentoml serve` runs each worker in its own process, so the served tags and policies live in a small file the
workers share (`ServedState`). The worker that takes an admin request loads the model itself first, so a model
that cannot load is refused before anything changes; then it writes the new state, and answers once every
worker has followed (each polls the file and acknowledges the generation it applied).
"""

import asyncio
import atexit
import fcntl
import hashlib
import hmac
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Self, TypeVar

import bentoml
from fastapi import APIRouter, Depends, Request
from fastapi import Path as PathParameter
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field, ValidationError

from services.errors import BadRequest, Conflict, Forbidden, NotFound, TimedOut, Unauthorized, validation_message
from services.inference import InferenceModel, ModelRepository
from services.traffic import Policy

log = logging.getLogger(__name__)

STATE_FOLDER = "MODELROAD_REPOSITORY_STATE"  # set by the server's first process; its workers inherit it
FOLLOW_EVERY_S = 0.2
M = TypeVar("M", bound=BaseModel)


@dataclass
class Served:
    """What a server serves: store tags, and version policies by model name (their JSON records)."""

    generation: int
    tags: list[str]
    policies: dict[str, dict[str, Any]] = field(default_factory=dict)


class ServedState:
    """What one server serves, in a folder its worker processes share, with each worker's progress."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.file = folder / "served.json"

    @classmethod
    def of_server(cls, tags: Sequence[str], policies: dict[str, dict[str, Any]] | None = None) -> Self:
        """Made by `bentoml serve`'s first process, which imports the service before it starts the workers;
        they inherit the environment and join it."""
        if folder := os.environ.get(STATE_FOLDER):
            return cls(Path(folder))
        made = Path(tempfile.mkdtemp(prefix="modelroad-repository-"))
        os.environ[STATE_FOLDER] = str(made)
        atexit.register(shutil.rmtree, made, True)
        state = cls(made)
        state._write(Served(0, list(tags), dict(policies or {})))
        return state

    def read(self) -> Served:
        return Served(**json.loads(self.file.read_text()))

    def change(self, edit: Callable[[Served], None]) -> int:
        """Apply `edit` (in place) to what is served, under an exclusive lock; returns the new generation."""
        with open(self.folder / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # held for a read and a write of a small file
            served = self.read()
            edit(served)
            served.generation += 1
            self._write(served)
            return served.generation

    def acknowledge(self, generation: int) -> None:
        self._replace(self.folder / f"worker-{os.getpid()}", str(generation))

    def followers(self, generation: int) -> int:
        """How many live workers have applied `generation` or a later one."""
        count = 0
        for path in self.folder.glob("worker-*"):
            pid = int(path.name.removeprefix("worker-"))
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                continue  # a worker that died; its restart acknowledges under its own pid
            count += int(path.read_text() or 0) >= generation
        return count

    def _write(self, served: Served) -> None:
        self._replace(self.file, json.dumps(served.__dict__))

    @staticmethod
    def _replace(path: Path, text: str) -> None:
        partial = path.with_name(f".{path.name}.{os.getpid()}")
        partial.write_text(text)
        os.replace(partial, path)  # readers see the old file or the new one, never a part


def stored_tag(name: str, version: str | None) -> str:
    """The store's tag for `name` at `version` (the latest by default); 404 for a name or version it lacks."""
    try:
        return str(bentoml.models.get(f"{name}:{version or 'latest'}").tag)
    except bentoml.exceptions.NotFound:
        if version and any(m.tag.name == name for m in bentoml.models.list()):
            raise NotFound(f"the store has no version {version!r} of {name}") from None
        raise NotFound(f"the store has no model named {name!r}") from None
    except bentoml.exceptions.BentoMLException as exc:  # not a name the store could hold
        raise BadRequest(f"{name!r} is not a model name: {exc}") from None


class RepositoryAdmin:
    """One worker's side of the extension: it changes what the server serves, and follows the other workers."""

    def __init__(
        self,
        repository: ModelRepository,
        state: ServedState,
        open_model: Callable[[str], list[InferenceModel]],
        workers: int,
        timeout_s: float,
        families: Collection[str] = (),
    ):
        self.repository, self.state, self.open_model = repository, state, open_model
        self.workers, self.timeout_s = workers, timeout_s
        self.families = frozenset(families)  # model names a family route runs: replaced, never unloaded
        self.applied = 0
        self._changing = asyncio.Lock()
        self._follower: asyncio.Task | None = None  # held: the loop keeps only a weak reference to a task

    def caught_up(self) -> bool:
        return self.state.read().generation <= self.applied

    def start_following(self) -> None:
        self._follower = asyncio.get_running_loop().create_task(self._follow(), name="repository-follower")

    async def load(self, name: str, version: str | None = None) -> list[str]:
        """Serve `version` of `name` (default: the store's latest) alone, ending its policy; the versions served."""
        tag = stored_tag(name, version)
        async with self._changing:
            retired = [t for t in self.repository.stored() if t.split(":")[0] == name and t != tag]
            await self._serve([tag])

            def edit(served: Served) -> None:
                served.tags = [*(t for t in served.tags if t not in (*retired, tag)), tag]
                served.policies.pop(name, None)

            generation = self.state.change(edit)
            await self._apply()
        await self._followed(generation)
        return list(self.repository.versions[name])

    async def set_traffic(self, name: str, policy: Policy) -> dict[str, Any]:
        """Put `policy` in force for `name`, serving its versions first (other served versions stay)."""
        try:
            tags = [stored_tag(name, version) for version in sorted(policy.versions)]
        except NotFound as unknown:
            raise BadRequest(f"the policy names a version the store lacks: {unknown}") from None
        async with self._changing:
            await self._serve(tags)

            def edit(served: Served) -> None:
                served.tags = [*served.tags, *(t for t in tags if t not in served.tags)]
                served.policies[name] = policy.to_record()

            generation = self.state.change(edit)
            await self._apply()
        await self._followed(generation)
        return self.traffic(name)

    def traffic(self, name: str) -> dict[str, Any]:
        """The policy in force for `name`: its record, or the default (the latest served version takes all)."""
        versions = {m.version: m for m in self.repository.models() if m.model == name}
        served = sorted(versions.values(), key=lambda m: m.created)
        if not served:
            raise NotFound(f"no version of {name!r} is served; served: {sorted(self.repository.versions)}")
        policy = self.repository.policies.get(name)
        record = policy.to_record() if policy else {"split": {served[-1].version: 100.0}}
        return {"name": name, **record, "served": [m.version for m in served]}

    async def unload(self, name: str) -> None:
        """Retire every version of `name`, each after its requests in flight."""
        async with self._changing:
            served = [t for t in self.repository.stored() if t.split(":")[0] == name]
            if not served:
                raise NotFound(f"no stored model named {name!r} is served; served: {sorted(self.repository.versions)}")
            if name in self.families:
                raise Conflict(f"{name} serves a family route and its pipeline: load another version instead")

            def edit(state: Served) -> None:
                state.tags = [t for t in state.tags if t not in served]
                state.policies.pop(name, None)

            generation = self.state.change(edit)
            await self._apply()
        await self._followed(generation)

    def index(self, ready_only: bool) -> list[dict[str, str]]:
        """Every stored model version and pipeline: READY where served, else UNAVAILABLE and why."""
        served = self.repository.stored()
        entries = [
            {"name": m.name, "version": m.version, "state": "READY"}
            for m in self.repository.models()
            if m.name != m.model and m.ready
        ]
        for stored in bentoml.models.list():
            tag = str(stored.tag)
            ready = tag in served and all(m.ready for m in served[tag])
            if ready or not ready_only:
                entry = {"name": stored.tag.name, "version": stored.tag.version, "state": "READY"}
                entries.append(entry if ready else {**entry, "state": "UNAVAILABLE", "reason": "not loaded"})
        return sorted(entries, key=lambda e: (e["name"], e["version"]))

    async def _serve(self, tags: Sequence[str]) -> None:
        """Load the tags not served yet (all of them, or none: a version that cannot load changes nothing)."""
        opened = []
        for tag in tags:
            if tag not in self.repository.stored():
                try:
                    opened.append(await self._open(tag))
                except BadRequest:
                    for models in opened:
                        models[0].runner.close()
                    raise
        for models in opened:
            for model in models:
                self.repository.add(model)

    async def _open(self, tag: str) -> list[InferenceModel]:
        """`tag` loaded and warmed up in a thread, so that this worker keeps answering meanwhile."""
        try:
            return await asyncio.to_thread(self.open_model, tag)
        except Exception as exc:
            raise BadRequest(f"{tag} cannot be loaded: {exc}") from None

    async def _apply(self) -> None:
        """Make this worker serve what the state says: load what is listed, put the policies in force, retire what
        is not listed (after its requests in flight), and acknowledge the generation."""
        served = self.state.read()
        opened = []
        for tag in served.tags:
            if tag not in self.repository.stored():
                try:
                    opened += await self._open(tag)
                except BadRequest as refused:
                    log.error("%s", refused)  # loaded by the worker that changed the state; not here
        # New versions and the policies in one step (no await between): no request here meets a candidate
        # as the latest version before its policy is in force.
        for model in opened:
            self.repository.add(model)
        self.repository.policies = {name: Policy.parse(record) for name, record in served.policies.items()}
        retired = [m for t, models in self.repository.stored().items() if t not in served.tags for m in models]
        for model in retired:
            self.repository.remove(model)  # new requests no longer find it
        for model in retired:
            if not await model.drained(self.timeout_s):
                log.warning("%s %s: closed with %d requests in flight", model.name, model.version, model.in_flight)
        for runner in {id(m.runner): m.runner for m in retired}.values():
            runner.close()
            log.info("%s unloaded", runner.tag)
        self.applied = max(self.applied, served.generation)
        self.state.acknowledge(self.applied)

    async def _followed(self, generation: int) -> None:
        deadline = time.monotonic() + self.timeout_s
        while (done := self.state.followers(generation)) < self.workers:
            if time.monotonic() > deadline:
                raise TimedOut(f"applied here; {done} of {self.workers} workers followed in {self.timeout_s:.0f} s")
            await asyncio.sleep(FOLLOW_EVERY_S / 4)

    async def _follow(self) -> None:
        """Apply the other workers' changes."""
        while True:
            try:
                if not self.caught_up():
                    async with self._changing:
                        await self._apply()
            except Exception:
                log.exception("following the model repository failed; retrying")
            await asyncio.sleep(FOLLOW_EVERY_S)


def admin(request: Request) -> RepositoryAdmin:
    """This worker's side of the extension (set on the app when the worker started)."""
    return request.app.state.admin


class RepositoryIndexRequest(BaseModel):
    ready: bool = Field(False, description="list only the models ready for inference")


class ModelRepositoryRequest(BaseModel):
    parameters: dict[str, Any] = Field(default_factory=dict)


class ShadowPolicy(BaseModel):
    version: str
    percent: Annotated[float, Field(ge=0, le=100)] = 100.0


class TrafficRequest(BaseModel):
    split: dict[str, Annotated[float, Field(ge=0, le=100)]] = Field(
        description="versions and their weights in percent, summing to 100; a request's X-Routing-Key makes its "
        "version sticky"
    )
    shadow: ShadowPolicy | None = Field(None, description="a version that gets a copy of `percent` of the requests")


class TrafficPolicy(TrafficRequest):
    name: str
    served: list[str] = Field(description="the versions served, oldest first")


class IndexEntry(BaseModel):
    name: str
    version: str
    state: str = Field(description="READY or UNAVAILABLE")
    reason: str | None = None


def json_body(model: type[BaseModel], required: bool = False) -> dict[str, Any]:
    """The OpenAPI request body of a route that parses its JSON itself (`parsed`): `model`'s schema."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    return {"requestBody": {"required": required, "content": {"application/json": {"schema": schema}}}}


async def parsed(request: Request, model: type[M]) -> M:
    """The JSON body as `model`, whatever its content type (tritonclient sends none); an empty body is the defaults."""
    body = await request.body()
    try:
        return model.model_validate_json(body) if body.strip() else model()
    except ValidationError as exc:
        raise BadRequest(validation_message(exc.errors())) from None


def check_admin_token(token: str, presented: str | None) -> None:
    """401 without a bearer token, 403 with another one than `token` (either protocol)."""
    if presented is None:
        raise Unauthorized("the model repository needs `Authorization: Bearer <MODELROAD_ADMIN_TOKEN>`")
    # Digests of equal length, compared in constant time: the answer's timing tells nothing of the token.
    if not hmac.compare_digest(hashlib.sha256(presented.encode()).digest(), hashlib.sha256(token.encode()).digest()):
        raise Forbidden("the bearer token is not the admin token")


def bearer(token: str) -> Callable[..., Any]:
    """A dependency that lets a request through only with `Authorization: Bearer <token>`."""
    scheme = HTTPBearer(auto_error=False, description="MODELROAD_ADMIN_TOKEN")

    async def authorized(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(scheme)]) -> None:
        check_admin_token(token, credentials.credentials if credentials else None)

    return authorized


def load_parameters(parameters: dict[str, Any]) -> str | None:
    """The version a load request names (None: the latest); anything else is refused."""
    version = parameters.get("version")
    if set(parameters) - {"version"} or not isinstance(version, str | None):
        raise BadRequest(f"load takes one parameter, `version` (a string; default: the latest); got {parameters}")
    return version


ERRORS = {
    400: {"description": "the model cannot be loaded, or the request (e.g. a traffic policy) is not valid"},
    401: {"description": "no bearer token"},
    403: {"description": "not the admin token"},
    404: {"description": "no such model or version"},
    409: {"description": "a family route runs this model: it can be replaced, not unloaded"},
    504: {"description": "applied, but not every worker followed in time"},
}


def routes(token: str) -> APIRouter:
    """Triton's model repository extension, each route behind the admin token."""
    router = APIRouter(prefix="/v2/repository", tags=["model repository"], dependencies=[Depends(bearer(token))])
    Name = Annotated[str, PathParameter(description="a model's name in the store")]

    @router.post(
        "/index",
        summary="the store's models and which are served",
        responses=ERRORS,
        openapi_extra=json_body(RepositoryIndexRequest),
    )
    async def repository_index(request: Request) -> list[IndexEntry]:
        body = await parsed(request, RepositoryIndexRequest)
        return [IndexEntry(**entry) for entry in admin(request).index(ready_only=body.ready)]

    @router.post(
        "/models/{name}/load",
        summary="serve one stored version (default: the latest) alone: a rollout, or with an older one, a rollback",
        responses=ERRORS,
        openapi_extra=json_body(ModelRepositoryRequest),
    )
    async def load_model(request: Request, name: Name) -> dict[str, Any]:
        body = await parsed(request, ModelRepositoryRequest)
        return {"name": name, "versions": await admin(request).load(name, load_parameters(body.parameters))}

    @router.get("/models/{name}/traffic", summary="the version policy in force", responses=ERRORS)
    async def get_traffic(request: Request, name: Name) -> TrafficPolicy:
        return TrafficPolicy(**admin(request).traffic(name))

    @router.post(
        "/models/{name}/traffic",
        summary="put a version policy in force: a canary split, a shadow",
        responses=ERRORS,
        openapi_extra=json_body(TrafficRequest, required=True),
    )
    async def set_traffic(request: Request, name: Name) -> TrafficPolicy:
        try:
            body = json.loads(await request.body())
        except ValueError:
            raise BadRequest("the body must be a JSON traffic policy") from None
        return TrafficPolicy(**await admin(request).set_traffic(name, Policy.parse(body)))

    @router.post(
        "/models/{name}/unload",
        summary="stop serving every version",
        responses=ERRORS,
        openapi_extra=json_body(ModelRepositoryRequest),
    )
    async def unload_model(request: Request, name: Name) -> dict[str, Any]:
        await parsed(request, ModelRepositoryRequest)  # `unload_dependents`: pipelines are pinned with their model
        await admin(request).unload(name)
        return {"name": name, "versions": []}

    return router
