"""Triton's model repository extension over REST (index, load, unload), and each model's version policy
(`traffic`: a canary split and a shadow), behind MODELROAD_ADMIN_TOKEN: the routes translate to this worker's
`RepositoryAdmin` (services/dataplane/admin.py), which changes what the fleet serves.
"""

import json
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi import Path as PathParameter
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from services.dataplane.admin import RepositoryAdmin, based_on, check_admin_token, load_parameters
from services.dataplane.traffic import Policy
from services.edge.routes import json_body, parsed
from services.edge.worker import worker
from services.errors import BadRequest


def admin(request: Request) -> RepositoryAdmin:
    """This worker's side of the extension (made when the worker started, with the admin token set)."""
    served = worker(request).admin
    assert served is not None, "the repository's routes are served only with its admin"
    return served


class RepositoryIndexRequest(BaseModel):
    ready: bool = Field(False, description="list only the models ready for inference")


class ModelRepositoryRequest(BaseModel):
    parameters: dict[str, Any] = Field(default_factory=dict)


class ShadowPolicy(BaseModel):
    version: str
    percent: Annotated[float, Field(ge=0, le=100)] = 100.0


GENERATION = (
    "the generation of the fleet's state this change is based on (from a GET of the policy); a stale one gets 409; "
    "none: the latest"
)


class TrafficRequest(BaseModel):
    split: dict[str, Annotated[float, Field(ge=0, le=100)]] = Field(
        description="versions and their weights in percent, summing to 100; a request's X-Routing-Key makes its "
        "version sticky"
    )
    shadow: ShadowPolicy | None = Field(None, description="a version that gets a copy of `percent` of the requests")
    generation: int | None = Field(None, description=GENERATION)


class Lagging(BaseModel):
    replica: str
    applied: int = Field(description="the generation it serves")
    reason: str


class FleetProgress(BaseModel):
    generation: int = Field(description="the generation of the fleet's state the change made")
    applied: list[str] = Field(description="the replicas serving it (every live worker of theirs)")
    lagging: list[Lagging] = Field(description="the replicas that do not (yet), and why")


class TrafficPolicy(TrafficRequest):
    name: str
    served: list[str] = Field(description="the versions served, oldest first")
    generation: int = Field(description="the generation of the fleet's state this replica serves")
    fleet: FleetProgress | None = Field(None, description="after a change: which replicas applied it")


class RepositoryChange(BaseModel):
    name: str
    versions: list[str]
    fleet: FleetProgress


class IndexEntry(BaseModel):
    name: str
    version: str
    state: str = Field(description="READY or UNAVAILABLE")
    reason: str | None = None


def bearer(token: str) -> Callable[..., Any]:
    """A dependency that lets a request through only with `Authorization: Bearer <token>`."""
    scheme = HTTPBearer(auto_error=False, description="MODELROAD_ADMIN_TOKEN")

    async def authorized(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(scheme)]) -> None:
        check_admin_token(token, credentials.credentials if credentials else None)

    return authorized


ERRORS = {
    400: {"description": "the model cannot be loaded, or the request (e.g. a traffic policy) is not valid"},
    401: {"description": "no bearer token"},
    403: {"description": "not the admin token"},
    404: {"description": "no such model or version"},
    409: {
        "description": "the change is based on a stale generation (the answer's `generation` is the current one), or "
        "a family route runs this model: it can be replaced, not unloaded"
    },
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
    async def load_model(request: Request, name: Name) -> RepositoryChange:
        body = await parsed(request, ModelRepositoryRequest)
        version, generation = load_parameters(body.parameters)
        return RepositoryChange(**await admin(request).load(name, version, generation))

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
        generation = based_on(body) if isinstance(body, dict) else None
        policy = Policy.parse({k: v for k, v in body.items() if k != "generation"} if isinstance(body, dict) else body)
        return TrafficPolicy(**await admin(request).set_traffic(name, policy, generation))

    @router.post(
        "/models/{name}/unload",
        summary="stop serving every version",
        responses=ERRORS,
        openapi_extra=json_body(ModelRepositoryRequest),
    )
    async def unload_model(request: Request, name: Name) -> RepositoryChange:
        body = await parsed(request, ModelRepositoryRequest)  # `unload_dependents`: pipelines go with their model
        fleet = await admin(request).unload(name, based_on(body.parameters))
        return RepositoryChange(name=name, versions=[], fleet=fleet)

    return router
