"""What the HTTP routes share: the documented errors, JSON answers, and bodies a route parses itself."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError

from services.compat.fastapi_routes import media_types
from services.edge.http_errors import ErrorBody
from services.errors import BadRequest, validation_message

M = TypeVar("M", bound=BaseModel)


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _error("the request is not valid; `error` says what to change"),
    413: _error("the body or the image is over the limit"),
    401: _error("no valid API key (only when MODELROAD_API_KEYS_FILE is set)"),
    415: _error("the body's Content-Type is not one the route takes"),
    429: _error("over the key's rate limit (MODELROAD_RATE_LIMIT); retry after Retry-After seconds"),
    503: _error("busy or not ready; retry after Retry-After seconds"),
    504: _error("not answered within the request timeout"),
}


JSON_ONLY = media_types("application/json")


def json_response(answer: BaseModel | Sequence[BaseModel], headers: dict[str, str] | None = None) -> Response:
    """An answer as JSON, serialized by pydantic's own encoder (the route declares its model for the docs)."""
    if isinstance(answer, BaseModel):
        body = answer.model_dump_json().encode()
    else:
        body = b"[" + b",".join(a.model_dump_json().encode() for a in answer) + b"]"
    return Response(body, media_type="application/json", headers=headers)


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
