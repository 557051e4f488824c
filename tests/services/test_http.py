"""The app's edge and error shape, on a small app built the platform's way: admission, limits, timeout, JSON errors."""

import asyncio
import dataclasses
import gc
from typing import Annotated

import httpx
import pytest
from fastapi import APIRouter, Request
from prometheus_client import REGISTRY
from pydantic import BaseModel, Field
from starlette.applications import Starlette
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from services import settings
from services.compat.fastapi_routes import DirectRoute
from services.edge.app import build_app
from services.edge.middleware import EdgeMiddleware
from services.edge.routes import ERROR_RESPONSES, JSON_ONLY
from services.errors import UNEXPECTED, BadRequest
from services.runtime.remote import RunnerUnavailable
from services.settings import SETTINGS

router = APIRouter()


class Horizon(BaseModel):
    horizon: Annotated[int, Field(strict=True, ge=1, le=52)]


@router.post("/echo")
async def echo(request: Request) -> dict:
    return {"bytes": len(await request.body())}


@router.post("/validated", responses=ERROR_RESPONSES)
async def validated(body: Horizon) -> dict:
    return {"horizon": body.horizon}


@router.get("/items/{name}")
async def item(name: str) -> dict:
    if name == "bad":
        raise BadRequest("the item is bad")
    if name == "down":
        raise RunnerUnavailable("the runner is down")
    if name == "bug":
        raise RuntimeError("a bug")
    return {"name": name}


# The family routes' class: FastAPI documents it, the route answers itself (one-pass bodies, media checks first).
direct = APIRouter(route_class=DirectRoute, dependencies=[JSON_ONLY])


@direct.post("/direct/{name}", responses=ERROR_RESPONSES)
async def direct_validated(request: Request, name: str, body: Horizon) -> JSONResponse:
    return JSONResponse({"name": name, "horizon": body.horizon})


client = TestClient(build_app("probe", "a probe", [router, direct]), raise_server_exceptions=False)


def test_small_bodies_pass_untouched():
    assert client.post("/echo", content=b"x" * 1000).json() == {"bytes": 1000}


BYTES = {"content-type": "application/octet-stream"}


def test_declared_oversize_body_is_refused_with_413_before_reading(monkeypatch):
    response = client.post("/echo", content=b"x" * (SETTINGS.max_body_bytes + 1), headers=BYTES)
    assert response.status_code == 413 and "over the limit" in response.json()["error"]


def test_chunked_body_growing_past_the_limit_gets_413():
    def chunks():
        for _ in range(11):
            yield b"x" * (1024 * 1024)

    response = client.post("/echo", content=chunks(), headers=BYTES)
    assert response.status_code == 413 and response.json() == {
        "error": f"request body is over the limit of {SETTINGS.max_body_bytes} bytes"
    }


@pytest.mark.parametrize("headers", [{"content-type": "application/json"}, {"content-type": "text/plain"}, {}])
def test_a_body_parsed_as_json_has_its_own_smaller_limit(headers):
    """A JSON parse holds the event loop for its whole length: bodies that are not uploads or binary tensors
    stop at max_json_bytes, declared or streamed; byte bodies of the same size pass."""
    size = SETTINGS.max_json_bytes + 1
    declared = client.post("/echo", content=b" " * size, headers=headers)
    assert declared.status_code == 413, declared.text
    assert declared.json()["error"] == f"JSON body of {size} bytes is over the limit of {SETTINGS.max_json_bytes} bytes"
    streamed = client.post("/echo", content=iter([b" " * SETTINGS.max_json_bytes, b" "]), headers=headers)
    assert streamed.json() == {"error": f"JSON body is over the limit of {SETTINGS.max_json_bytes} bytes"}
    for media in ("application/octet-stream", "multipart/form-data; boundary=x"):
        assert client.post("/echo", content=b" " * size, headers={"content-type": media}).json() == {"bytes": size}


def test_the_json_part_of_a_binary_inference_body_has_the_json_limit():
    headers = {**BYTES, "inference-header-content-length": str(SETTINGS.max_json_bytes + 1)}
    response = client.post("/echo", content=b" " * (SETTINGS.max_json_bytes + 8), headers=headers)
    assert response.status_code == 413 and response.json()["error"].startswith("JSON header of")


@pytest.mark.parametrize(
    "method,path,status,error",
    [
        ("GET", "/items/bad", 400, "the item is bad"),
        ("GET", "/items/bug", 500, UNEXPECTED),
        ("GET", "/nowhere", 404, "no route /nowhere; see /docs.json"),
        ("TRACE", "/echo", 405, "TRACE is not served at /echo; use POST"),
        ("DELETE", "/items/x", 405, "DELETE is not served at /items/x; use GET"),
    ],
)
def test_every_error_leaves_as_a_json_object_with_an_error_string(method, path, status, error):
    response = client.request(method, path)
    assert response.status_code == status
    assert response.json() == {"error": error}


def test_a_method_a_route_does_not_serve_gets_405_with_allow():
    assert client.request("TRACE", "/echo").headers["allow"] == "POST"


def test_a_503_says_it_is_temporary_and_when_to_retry():
    response = client.get("/items/down")
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert "the runner is down" in response.json()["error"]


@pytest.mark.parametrize(
    "body,error",
    [
        (b'{"horizon": 0}', "invalid request: horizon: Input should be greater than or equal to 1"),
        (b'{"horizon": "4"}', "invalid request: horizon: Input should be a valid integer"),
        (b"{", "Invalid JSON body"),
        (b"[1]", "invalid request: body: Input should be a valid dictionary"),
    ],
)
def test_validation_errors_get_400_with_a_readable_error_and_pydantics_list(body, error):
    response = client.post("/validated", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"].startswith(error)
    assert isinstance(response.json()["detail"], list)


@pytest.mark.parametrize("body", [b'{"horizon": 0}', b'{"horizon": "4"}', b"{", b"", b'{"horizon": 1e999}'])
def test_a_direct_route_refuses_a_bad_body_as_fastapi_does(body):
    headers = {"content-type": "application/json"}
    by_fastapi, direct = (
        client.post("/validated", content=body, headers=headers),
        client.post("/direct/a", content=body, headers=headers),
    )
    assert direct.status_code == by_fastapi.status_code == 400
    assert direct.json()["error"] == by_fastapi.json()["error"]


def test_a_direct_route_passes_its_path_and_body_and_checks_the_media_type_first():
    assert client.post("/direct/a%20b", json={"horizon": 3}).json() == {"name": "a b", "horizon": 3}
    refused = client.post("/direct/a", content=b'{"horizon": 3}', headers={"content-type": "text/plain"})
    assert refused.status_code == 415 and "application/json" in refused.json()["error"]
    assert client.get("/docs.json").json()["paths"]["/direct/{name}"]["post"][
        "requestBody"
    ]  # documented as FastAPI would


def test_a_direct_route_refuses_what_fastapi_would_have_to_solve():
    async def with_query(request: Request, limit: int) -> JSONResponse:
        return JSONResponse({})

    with pytest.raises(TypeError, match="DirectRoute"):
        DirectRoute("/q", with_query, methods=["POST"])


def test_error_metrics_are_labelled_by_route_template_never_by_path():
    def count(endpoint: str) -> float:
        return (
            REGISTRY.get_sample_value("modelroad_request_errors_total", {"endpoint": endpoint, "reason": "not_found"})
            or 0
        )

    before_other = count("other")
    for i in range(20):
        client.get(f"/random-{i}")
    assert count("other") - before_other == 20
    assert all(count(f"/random-{i}") == 0 for i in range(20))
    bad = REGISTRY.get_sample_value(
        "modelroad_request_errors_total", {"endpoint": "/items/{name}", "reason": "bad_request"}
    )
    client.get("/items/bad")
    assert (
        REGISTRY.get_sample_value(
            "modelroad_request_errors_total", {"endpoint": "/items/{name}", "reason": "bad_request"}
        )
        == (bad or 0) + 1
    )


def test_the_openapi_document_states_the_limits_and_the_400_error_shape():
    document = client.get("/docs.json").json()
    operation = document["paths"]["/validated"]["post"]
    assert "422" not in operation["responses"] and "400" in operation["responses"]
    schema = document["components"]["schemas"]["Horizon"]["properties"]["horizon"]
    assert (schema["minimum"], schema["maximum"]) == (1, 52)
    error = document["components"]["schemas"]["ErrorBody"]["properties"]
    assert error["error"]["type"] == "string" and "array" in str(error["detail"])


async def slow(request: Request):
    await asyncio.sleep(0.2)
    return JSONResponse({"done": True})


def test_requests_past_the_in_flight_bound_get_503_with_retry_after_at_once_and_open_paths_stay_open():
    bounded = EdgeMiddleware(
        Starlette(routes=[Route("/slow", slow, methods=["POST"]), Route("/v2/health/ready", slow)]),
        max_body_bytes=1000,
        max_in_flight=2,
        open_paths=("/v2/health/",),
    )

    async def burst() -> tuple[list[httpx.Response], httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=bounded), base_url="http://edge") as c:
            answers = await asyncio.gather(*[c.post("/slow") for _ in range(5)], c.get("/v2/health/ready"))
            return list(answers[:5]), answers[5], await c.post("/slow")

    answers, health, after = asyncio.run(burst())
    assert sorted(r.status_code for r in answers) == [200, 200, 503, 503, 503]
    for refused in (r for r in answers if r.status_code == 503):
        assert refused.headers["retry-after"] == "1"
        assert "server busy" in refused.json()["error"]
    assert health.status_code == 200  # probes and docs are never refused for load
    assert after.status_code == 200 and bounded.gate.in_flight == 0


@pytest.mark.parametrize("tracing,config", [(False, {"excluded_urls": [".*"]}), (True, None)])
def test_the_tracing_setting_decides_the_services_tracing_config(monkeypatch, tracing, config):
    monkeypatch.setattr(settings, "SETTINGS", dataclasses.replace(SETTINGS, tracing=tracing))
    assert settings.service_config("probe").get("tracing") == config


async def streamed(request: Request):
    async def parts():
        yield b"begun;"
        await asyncio.sleep(0.3)
        yield b"ended"

    return StreamingResponse(parts())


async def plain_echo(request: Request):
    return JSONResponse({"bytes": len(await request.body())})


def test_an_answer_not_begun_within_the_timeout_gets_504_and_its_work_is_cancelled():
    cancelled = asyncio.Event()

    async def stuck(request: Request):
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    timed = EdgeMiddleware(
        Starlette(
            routes=[
                Route("/stuck", stuck, methods=["POST"]),
                Route("/echo", plain_echo, methods=["POST"]),
                Route("/stream", streamed, methods=["POST"]),
            ]
        ),
        max_body_bytes=1000,
        request_timeout_s=0.1,
    )

    async def scenario() -> tuple[httpx.Response, httpx.Response, httpx.Response, float]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=timed), base_url="http://edge") as c:
            started = asyncio.get_running_loop().time()
            late = await c.post("/stuck")
            waited = asyncio.get_running_loop().time() - started
            return late, await c.post("/echo", content=b"abc"), await c.post("/stream"), waited

    late, fast, stream, waited = asyncio.run(scenario())
    assert late.status_code == 504 and "timeout of 0.1 s" in late.json()["error"]
    assert waited < 1 and cancelled.is_set()
    assert fast.status_code == 200 and fast.json() == {"bytes": 3}
    assert stream.status_code == 200 and stream.content == b"begun;ended"  # begun in time: not cut off later
    assert timed.gate.in_flight == 0


def test_full_garbage_collections_are_made_rare_at_start(client):
    # BentoML's timeout middleware keeps a live timer per request for its whole timeout; with CPython's
    # default thresholds the full collections that walk them tripled the p99 (services/ops/startup.py; the
    # side-by-side figures are in docs/serving.md). The startup hook ran when the in-process app started.
    assert gc.get_threshold()[2] >= 1000


def test_the_startup_heap_is_frozen_out_of_garbage_collection(client):
    # BentoML ran the service's startup hook when the in-process app started (the `client` fixture).
    assert gc.get_freeze_count() > 10_000
