"""The model repository: what a server serves, by name and version, and Triton's repository extension
(index, load, unload) to change it while traffic flows, on when MODELROAD_ADMIN_TOKEN is set.

The store is the repository (every registered model and version); a server serves some of it. `load NAME`
serves the store's latest version of NAME and retires its other versions (Triton's default version
policy), `unload NAME` retires them all. A retired version answers no new request and is closed once its
requests in flight have finished. A version a family route runs (e.g. `fashion-cnn` for /classify_image)
is pinned: it stays.

`bentoml serve` runs each worker in its own process, so the served tags live in a small file the workers
share (`ServedState`). The worker that takes an admin request loads the model itself first, so a model
that cannot load is refused before anything changes; then it writes the new tags, and answers once every
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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, Self, TypeVar

import bentoml
from fastapi import APIRouter, Depends, Request
from fastapi import Path as PathParameter
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field, ValidationError

from services.errors import BadRequest, Conflict, Forbidden, NotFound, TimedOut, Unauthorized, validation_message
from services.inference import InferenceModel, ModelRepository

log = logging.getLogger(__name__)

STATE_FOLDER = "MODELROAD_REPOSITORY_STATE"  # set by the server's first process; its workers inherit it
FOLLOW_EVERY_S = 0.2
M = TypeVar("M", bound=BaseModel)


class ServedState:
    """The store tags one server serves, in a folder its worker processes share, with each worker's progress."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.file = folder / "served.json"

    @classmethod
    def of_server(cls, tags: Sequence[str]) -> Self:
        """Made by `bentoml serve`'s first process, which imports the service before it starts the workers;
        they inherit the environment and join it."""
        if folder := os.environ.get(STATE_FOLDER):
            return cls(Path(folder))
        made = Path(tempfile.mkdtemp(prefix="modelroad-repository-"))
        os.environ[STATE_FOLDER] = str(made)
        atexit.register(shutil.rmtree, made, True)
        state = cls(made)
        state._write(0, list(tags))
        return state

    def read(self) -> tuple[int, list[str]]:
        data = json.loads(self.file.read_text())
        return data["generation"], data["tags"]

    def change(self, edit: Callable[[list[str]], list[str]]) -> int:
        """Apply `edit` to the served tags under an exclusive lock; returns the new generation."""
        with open(self.folder / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # held for a read and a write of a small file
            generation, tags = self.read()
            self._write(generation + 1, edit(tags))
            return generation + 1

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

    def _write(self, generation: int, tags: list[str]) -> None:
        self._replace(self.file, json.dumps({"generation": generation, "tags": tags}))

    @staticmethod
    def _replace(path: Path, text: str) -> None:
        partial = path.with_name(f".{path.name}.{os.getpid()}")
        partial.write_text(text)
        os.replace(partial, path)  # readers see the old file or the new one, never a part


class RepositoryAdmin:
    """One worker's side of the extension: it changes what the server serves, and follows the other workers."""

    def __init__(
        self,
        repository: ModelRepository,
        state: ServedState,
        open_model: Callable[[str], InferenceModel],
        workers: int,
        timeout_s: float,
    ):
        self.repository, self.state, self.open_model = repository, state, open_model
        self.workers, self.timeout_s = workers, timeout_s
        self.applied = 0
        self._changing = asyncio.Lock()
        self._follower: asyncio.Task | None = None  # held: the loop keeps only a weak reference to a task

    def caught_up(self) -> bool:
        return self.state.read()[0] <= self.applied

    def start_following(self) -> None:
        self._follower = asyncio.get_running_loop().create_task(self._follow(), name="repository-follower")

    async def load(self, name: str) -> list[str]:
        """Serve the store's latest version of `name` and retire its other unpinned versions; the versions served."""
        try:
            tag = str(bentoml.models.get(f"{name}:latest").tag)
        except bentoml.exceptions.NotFound:
            raise NotFound(f"the store has no model named {name!r}") from None
        except bentoml.exceptions.BentoMLException as exc:  # not a name the store could hold
            raise BadRequest(f"{name!r} is not a model name: {exc}") from None
        async with self._changing:
            served = self.repository.stored()
            if tag not in served:
                self.repository.add(await self._open(tag))
            retired = [t for t in served if t.split(":")[0] == name and t != tag and t not in self.repository.pinned]
            generation = self.state.change(lambda tags: [*(t for t in tags if t not in (*retired, tag)), tag])
            await self._retire([served[t] for t in retired])
            await self._applied(generation)
        await self._followed(generation)
        return list(self.repository.versions[name])

    async def unload(self, name: str) -> None:
        """Retire every version of `name`, each after its requests in flight."""
        async with self._changing:
            served = {t: m for t, m in self.repository.stored().items() if m.name == name}
            if not served:
                raise NotFound(f"no stored model named {name!r} is served; served: {sorted(self.repository.versions)}")
            pinned = sorted(self.repository.pinned & set(served))
            if pinned:
                raise Conflict(f"{', '.join(pinned)} serves a family route and its pipeline; it stays loaded")
            generation = self.state.change(lambda tags: [t for t in tags if t not in served])
            await self._retire(list(served.values()))
            await self._applied(generation)
        await self._followed(generation)

    def index(self, ready_only: bool) -> list[dict[str, str]]:
        """Every stored model version and pipeline: READY where served, else UNAVAILABLE and why."""
        served = self.repository.stored()
        entries = [
            {"name": m.name, "version": m.version, "state": "READY"} for m in self.repository.models() if not m.tag
        ]
        for stored in bentoml.models.list():
            tag = str(stored.tag)
            ready = tag in served and served[tag].ready
            if ready or not ready_only:
                entry = {"name": stored.tag.name, "version": stored.tag.version, "state": "READY"}
                entries.append(entry if ready else {**entry, "state": "UNAVAILABLE", "reason": "not loaded"})
        return sorted(entries, key=lambda e: (e["name"], e["version"]))

    async def _open(self, tag: str) -> InferenceModel:
        """`tag` loaded and warmed up in a thread, so that this worker keeps answering meanwhile."""
        try:
            return await asyncio.to_thread(self.open_model, tag)
        except Exception as exc:
            raise BadRequest(f"{tag} cannot be loaded: {exc}") from None

    async def _retire(self, models: Sequence[InferenceModel]) -> None:
        for model in models:
            self.repository.remove(model)  # new requests no longer find it
        for model in models:
            if not await model.drained(self.timeout_s):
                log.warning("%s %s: closed with %d requests in flight", model.name, model.version, model.in_flight)
            model.runner.close()
            log.info("%s %s unloaded", model.name, model.version)

    async def _applied(self, generation: int) -> None:
        self.applied = max(self.applied, generation)
        self.state.acknowledge(self.applied)

    async def _followed(self, generation: int) -> None:
        deadline = time.monotonic() + self.timeout_s
        while (done := self.state.followers(generation)) < self.workers:
            if time.monotonic() > deadline:
                raise TimedOut(f"applied here; {done} of {self.workers} workers followed in {self.timeout_s:.0f} s")
            await asyncio.sleep(FOLLOW_EVERY_S / 4)

    async def _follow(self) -> None:
        """Apply the other workers' changes: load what is listed and not served, retire what is served and not."""
        while True:
            try:
                await self._catch_up()
            except Exception:
                log.exception("following the model repository failed; retrying")
            await asyncio.sleep(FOLLOW_EVERY_S)

    async def _catch_up(self) -> None:
        if self.caught_up():
            return
        async with self._changing:
            generation, tags = self.state.read()
            served = self.repository.stored()
            for tag in tags:
                if tag not in served:
                    try:
                        self.repository.add(await self._open(tag))
                    except BadRequest as refused:
                        log.error("%s", refused)  # loaded by the worker that changed the list; not here
            await self._retire([m for t, m in served.items() if t not in tags and t not in self.repository.pinned])
            await self._applied(generation)


def admin(request: Request) -> RepositoryAdmin:
    """This worker's side of the extension (set on the app when the worker started)."""
    return request.app.state.admin


class RepositoryIndexRequest(BaseModel):
    ready: bool = Field(False, description="list only the models ready for inference")


class ModelRepositoryRequest(BaseModel):
    parameters: dict[str, Any] = Field(default_factory=dict)


class IndexEntry(BaseModel):
    name: str
    version: str
    state: str = Field(description="READY or UNAVAILABLE")
    reason: str | None = None


def optional_body(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    return {"requestBody": {"required": False, "content": {"application/json": {"schema": schema}}}}


async def parsed(request: Request, model: type[M]) -> M:
    """The JSON body as `model`, whatever its content type (tritonclient sends none); an empty body is the defaults."""
    body = await request.body()
    try:
        return model.model_validate_json(body) if body.strip() else model()
    except ValidationError as exc:
        raise BadRequest(validation_message(exc.errors())) from None


def bearer(token: str) -> Callable[..., Any]:
    """A dependency that lets a request through only with `Authorization: Bearer <token>`."""
    expected = hashlib.sha256(token.encode()).digest()
    scheme = HTTPBearer(auto_error=False, description="MODELROAD_ADMIN_TOKEN")

    async def authorized(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(scheme)]) -> None:
        if credentials is None:
            raise Unauthorized("the model repository needs `Authorization: Bearer <MODELROAD_ADMIN_TOKEN>`")
        # Digests of equal length, compared in constant time: the answer's timing tells nothing of the token.
        if not hmac.compare_digest(hashlib.sha256(credentials.credentials.encode()).digest(), expected):
            raise Forbidden("the bearer token is not the admin token")

    return authorized


ERRORS = {
    400: {"description": "the model cannot be loaded, or the request is not valid"},
    401: {"description": "no bearer token"},
    403: {"description": "not the admin token"},
    404: {"description": "no such model"},
    409: {"description": "a family route runs this model"},
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
        openapi_extra=optional_body(RepositoryIndexRequest),
    )
    async def repository_index(request: Request) -> list[IndexEntry]:
        body = await parsed(request, RepositoryIndexRequest)
        return [IndexEntry(**entry) for entry in admin(request).index(ready_only=body.ready)]

    @router.post(
        "/models/{name}/load",
        summary="serve the store's latest version",
        responses=ERRORS,
        openapi_extra=optional_body(ModelRepositoryRequest),
    )
    async def load_model(request: Request, name: Name) -> dict[str, Any]:
        body = await parsed(request, ModelRepositoryRequest)
        if body.parameters:
            raise BadRequest(
                f"load takes no parameters (got {sorted(body.parameters)}): register the model with "
                "`python -m training import` and load it by name"
            )
        return {"name": name, "versions": await admin(request).load(name)}

    @router.post(
        "/models/{name}/unload",
        summary="stop serving every version",
        responses=ERRORS,
        openapi_extra=optional_body(ModelRepositoryRequest),
    )
    async def unload_model(request: Request, name: Name) -> dict[str, Any]:
        await parsed(request, ModelRepositoryRequest)  # `unload_dependents`: pipelines are pinned with their model
        await admin(request).unload(name)
        return {"name": name, "versions": []}

    return router
