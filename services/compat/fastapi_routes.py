"""FastAPI (written against 0.165.0, with Starlette 1.10.0): a route FastAPI documents as usual but that answers
without FastAPI's request handling, and the media-type checks it runs itself.

It reads FastAPI's `APIRoute.dependant` (its dependencies, body and path parameters) to refuse at start what it
could not answer as FastAPI would; the direct-route tests of tests/services/test_http.py fail when an upgrade
changes what it reads or how FastAPI would answer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.routing import request_response

from services.errors import UnsupportedMediaType


def media_types(*accepted: str | None) -> Any:
    """A route dependency: bodies of other media types get 415 (None accepts a body sent without Content-Type).

    JSON routes taking only application/json keep cross-site pages from posting to them without a CORS
    preflight (text/plain, form and multipart bodies need none).
    """

    async def check(request: Request) -> None:
        declared = request.headers.get("content-type")
        media = declared.split(";")[0].strip().lower() if declared else None
        if media not in accepted:
            wanted = " or ".join(a or "no Content-Type" for a in accepted)
            raise UnsupportedMediaType(f"this route takes {wanted}; got {declared or 'no Content-Type'}")

    check.direct = True  # type: ignore[attr-defined]  # a DirectRoute runs it
    return Depends(check)


class DirectRoute(APIRoute):
    """A route FastAPI documents as usual but that answers without FastAPI's request handling (dependency
    solving, a JSON body parsed and then validated, the exit stacks; what that saves: docs/benchmarks.md).

    Its endpoint takes `request`, path parameters (str) and at most one pydantic model as its body, validated
    from the raw bytes in one pass (`model_validate_json`); a bad body gets the errors FastAPI would report (the
    same 400). Its dependencies may only be `media_types` checks, run first; anything else FastAPI would have to
    solve is refused when the route is made, not skipped in silence."""

    def __init__(self, path: str, endpoint: Callable[..., Awaitable[Response]], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        dependant = self.dependant
        checks = [d.call for d in dependant.dependencies]
        solved = (dependant.query_params, dependant.header_params, dependant.cookie_params)
        if (
            any(solved)
            or len(dependant.body_params) > 1
            or any(p.field_info.annotation is not str for p in dependant.path_params)
            or not all(getattr(c, "direct", False) for c in checks)
        ):
            raise TypeError(
                f"{path}: a DirectRoute's endpoint takes the request, str path parameters, one body model and media "
                "checks (media_types)"
            )
        self.checks, self.path_names = checks, [p.name for p in dependant.path_params]
        body = dependant.body_params[0] if dependant.body_params else None
        self.body: tuple[str, type[BaseModel]] | None = (body.name, body.field_info.annotation) if body else None
        self.app = request_response(self.answer)

    async def answer(self, request: Request) -> Response:
        for check in self.checks:
            await check(request)
        path = {name: request.path_params[name] for name in self.path_names}
        if self.body is None:
            return await self.endpoint(request, **path)
        name, model = self.body
        raw = await request.body()
        if not raw:  # as FastAPI says it
            raise RequestValidationError([{"type": "missing", "loc": ("body",), "msg": "Field required"}])
        try:
            parsed = model.model_validate_json(raw)
        except ValidationError as exc:
            raise RequestValidationError(
                [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
            ) from None
        return await self.endpoint(request, **path, **{name: parsed})
