"""The edge middleware on a bare ASGI app: admission, size limits and the one JSON error shape."""
import asyncio
import dataclasses
import gc
import json

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from services import base
from services.http import UNAVAILABLE, UNEXPECTED, EdgeMiddleware, error_message
from services.remote import RunnerUnavailable
from services.settings import SETTINGS


async def echo(request: Request):
    body = await request.body()
    return JSONResponse({"bytes": len(body)})


async def upload(request: Request):
    async with request.form() as form:
        return JSONResponse({"fields": sorted(form.keys())})


async def wrapped_error(request: Request):
    return JSONResponse([{"error": "horizon must be 1..52"}], status_code=400)


async def text_error(request: Request):
    return PlainTextResponse("teapot says no", status_code=418)


async def unavailable(request: Request):
    return JSONResponse({"error": UNEXPECTED}, status_code=503)  # what BentoML answers for ServiceUnavailable


app = Starlette(routes=[
    Route("/echo", echo, methods=["POST"]),
    Route("/upload", upload, methods=["POST"]),
    Route("/wrapped", wrapped_error),
    Route("/text", text_error),
    Route("/unavailable", unavailable),
])  # fmt: skip
client = TestClient(EdgeMiddleware(app, max_body_bytes=1000, api_fields={"/echo": ("x",), "/upload": ("image",)}))


def test_small_bodies_pass_untouched():
    response = client.post("/echo", content=b"x" * 1000)
    assert response.status_code == 200 and response.json() == {"bytes": 1000}


def test_declared_oversize_body_is_refused_with_413_before_reading():
    response = client.post("/echo", content=b"x" * 1001)
    assert response.status_code == 413
    assert "over the limit of 1000 bytes" in response.json()["error"]


def test_chunked_body_growing_past_the_limit_gets_413():
    def chunks():
        for _ in range(5):
            yield b"x" * 400

    response = client.post("/echo", content=chunks())
    assert response.status_code == 413 and "limit" in response.json()["error"]


@pytest.mark.parametrize(
    "path,method,status,error",
    [
        ("/nowhere", "get", 404, "Not Found"),
        ("/echo", "get", 405, "Method Not Allowed"),
        ("/wrapped", "get", 400, "horizon must be 1..52"),
        ("/text", "get", 418, "I'm a Teapot: teapot says no"),
    ],
)
def test_every_error_leaves_as_a_json_object_with_an_error_string(path, method, status, error):
    response = getattr(client, method)(path)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"error": error}


def test_a_503_says_it_is_temporary_and_when_to_retry():
    response = client.get("/unavailable")
    assert response.status_code == 503 and response.json() == {"error": UNAVAILABLE}
    assert response.headers["retry-after"] == "1"


def test_multipart_fields_must_be_the_declared_ones():
    ok = client.post("/upload", files={"image": ("a.png", b"123", "image/png")})
    assert ok.status_code == 200 and ok.json() == {"fields": ["image"]}
    wrong = client.post("/upload", files={"picture": ("a.png", b"123", "image/png")})
    assert wrong.status_code == 400
    assert wrong.json()["error"] == "multipart fields ['picture'] do not match the expected ['image']"
    garbage = client.post("/upload", content=b"garbage", headers={"content-type": "multipart/form-data; boundary=b"})
    assert garbage.status_code == 400 and garbage.json()["error"].startswith("malformed multipart body")


def test_pydantic_details_become_a_readable_error():
    body = b'{"error": "1 validation error for Input", "detail": [{"loc": ["horizon"], "msg": "Input should be > 0"}]}'
    message = error_message(400, body)
    assert message["error"] == "invalid request: horizon: Input should be > 0"
    assert message["detail"][0]["loc"] == ["horizon"]


async def slow(request: Request):
    await asyncio.sleep(0.2)
    return JSONResponse({"done": True})


def test_requests_past_the_in_flight_bound_get_503_with_retry_after_at_once_and_health_stays_open():
    bounded = EdgeMiddleware(Starlette(routes=[Route("/slow", slow, methods=["POST"]), Route("/livez", slow)]),
                             max_body_bytes=1000, api_fields={"/slow": ()}, max_in_flight=2)  # fmt: skip

    async def burst() -> tuple[list[httpx.Response], httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=bounded), base_url="http://edge") as c:
            answers = await asyncio.gather(*[c.post("/slow") for _ in range(5)], c.get("/livez"))
            return list(answers[:5]), answers[5], await c.post("/slow")

    answers, health, after = asyncio.run(burst())
    assert sorted(r.status_code for r in answers) == [200, 200, 503, 503, 503]
    for refused in (r for r in answers if r.status_code == 503):
        assert refused.headers["retry-after"] == "1"
        assert "server busy" in refused.json()["error"]
    assert health.status_code == 200  # probes and /metrics are not API routes: never refused for load
    assert after.status_code == 200 and bounded.in_flight == 0


@pytest.mark.parametrize("tracing,config", [(False, {"excluded_urls": [".*"]}), (True, None)])
def test_the_tracing_setting_decides_the_services_tracing_config(monkeypatch, tracing, config):
    monkeypatch.setattr(base, "SETTINGS", dataclasses.replace(SETTINGS, tracing=tracing))
    service = base.platform_service("probe")(type("Probe", (), {}))
    assert service.config.get("tracing") == config


async def streamed(request: Request):
    async def parts():
        yield b"begun;"
        await asyncio.sleep(0.3)
        yield b"ended"

    return StreamingResponse(parts())


def test_an_answer_not_begun_within_the_timeout_gets_504_and_its_work_is_cancelled():
    cancelled = asyncio.Event()

    async def stuck(request: Request):
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    timed = EdgeMiddleware(Starlette(routes=[Route("/stuck", stuck, methods=["POST"]), Route("/echo", echo, methods=["POST"]),
                                             Route("/stream", streamed, methods=["POST"])]),
                           max_body_bytes=1000, api_fields={"/stuck": (), "/echo": (), "/stream": ()},
                           request_timeout_s=0.1)  # fmt: skip

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
    assert timed.in_flight == 0


def test_requests_leave_no_timer_behind(client):
    # BentoML's own timeout middleware kept a live timer per request for the whole timeout (30 s), which the
    # platform replaces; such timers are what made full garbage collections slow.
    def live_timers() -> int:
        return sum(1 for o in gc.get_objects() if isinstance(o, asyncio.TimerHandle) and not o.cancelled())

    before = live_timers()
    for _ in range(50):
        assert client.post("/classify_text", json={"text": "a sweet baked food"}).status_code == 200
    assert live_timers() - before < 10


def test_the_startup_heap_is_frozen_out_of_garbage_collection(client):
    # BentoML ran the service's startup hook when the in-process app started (the `client` fixture).
    assert gc.get_freeze_count() > 10_000


def test_upload_routes_are_answered_by_their_handler_with_the_file_bytes():
    async def handler(data: bytes) -> bytes:
        if data == b"bad":
            raise base.invalid("the file is bad")
        if data == b"bug":
            raise RuntimeError("a bug")
        if data == b"down":
            raise RunnerUnavailable("the runner is down")
        return json.dumps({"size": len(data)}).encode()

    edge = TestClient(EdgeMiddleware(app, max_body_bytes=1000, api_fields={"/upload": ("image",)}, uploads={"/upload": handler}),
                      raise_server_exceptions=False)  # fmt: skip
    answer = edge.post("/upload", files={"image": ("a.png", b"12345", "image/png")})
    assert answer.status_code == 200 and answer.json() == {"size": 5}  # the handler's, not the app's {"fields": ...}
    bad = edge.post("/upload", files={"image": ("a.png", b"bad", "image/png")})
    assert bad.status_code == 400 and bad.json() == {"error": "the file is bad"}
    bug = edge.post("/upload", files={"image": ("a.png", b"bug", "image/png")})
    assert bug.status_code == 500 and "unexpected error" in bug.json()["error"]
    down = edge.post("/upload", files={"image": ("a.png", b"down", "image/png")})
    assert down.status_code == 503 and down.json() == {"error": UNAVAILABLE} and down.headers["retry-after"] == "1"
    wrong = edge.post("/upload", files={"photo": ("a.png", b"12345", "image/png")})
    assert wrong.status_code == 400 and "do not match" in wrong.json()["error"]
