"""The framework workarounds of services/compat/, each held to what it stands in for, so that an upgrade that breaks
one fails here (the DirectRoute's tests are in test_http.py, beside the app it serves)."""

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartParser
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from services.compat.multipart_upload import uploaded_file
from services.errors import BadRequest

ROOT = Path(__file__).resolve().parents[2]

CHECKS = textwrap.dedent(
    """
    import os
    from prometheus_client import CollectorRegistry, multiprocess
    from services.compat import prometheus_values
    from services.ops import metrics

    count = metrics.REQUESTS.labels("/classify_text", "POST", "200", "http")
    made = type(count._value)._MmapedValue__check_for_pid_change
    cells = dict(zip(made.__code__.co_freevars, made.__closure__))
    assert cells["process_identifier"].cell_contents is prometheus_values.this_process  # not os.getpid, a system call

    def in_files():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return sum(s.value for m in registry.collect() for s in m.samples if s.name == "modelroad_requests_total")

    for _ in range(32):
        count.inc()
    assert in_files() == 32.0  # each update written at once
    pid = os.fork()
    if pid == 0:  # a worker forked from here: its own file, counting from 0
        count.inc()
        files = os.listdir(os.environ["PROMETHEUS_MULTIPROC_DIR"])
        os._exit(0 if f"counter_{os.getpid()}.db" in files and count._value.get() == 1.0 else 1)
    assert os.waitpid(pid, 0)[1] == 0
    assert in_files() == 33.0  # the parent's 32 and the child's 1, each in its own file
    print("ok")
    """
)


def test_a_workers_values_ask_no_pid_per_update_and_after_a_fork_count_in_a_file_of_its_own(tmp_path):
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", CHECKS], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "ok"


def multipart(fields: list[tuple[str, str | None, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body of (name, filename or None, content) parts, and its Content-Type."""
    boundary = "x-boundary-7"
    parts = []
    for name, filename, content in fields:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        parts.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


async def starlettes_file(body: bytes, content_type: str, field: str) -> bytes:
    """What Starlette's own form parser reads as the file under `field`."""

    async def stream():
        yield body

    form = await MultiPartParser(Headers({"content-type": content_type}), stream()).parse()
    upload = form[field]
    assert isinstance(upload, UploadFile)
    return await upload.read()


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40, b"--x-boundary-7 inside"])
def test_the_upload_read_is_the_file_starlettes_form_parser_reads(content):
    body, content_type = multipart([("image", "a.png", content)])
    starlettes = asyncio.run(starlettes_file(body, content_type, "image"))
    assert uploaded_file(body, content_type, "image") == (starlettes, {}) == (content, {})


def test_a_text_field_beside_the_file_is_read_when_asked_for():
    body, content_type = multipart([("model", None, b"digits"), ("image", "a.png", b"\x89PNG")])
    assert uploaded_file(body, content_type, "image", ("model",)) == (b"\x89PNG", {"model": "digits"})
    with pytest.raises(BadRequest, match="do not match the expected"):
        uploaded_file(body, content_type, "image")  # a field not asked for
    bad, bad_type = multipart([("image", "a.png", b"x"), ("model", None, b"\xff")])
    with pytest.raises(BadRequest, match="must be UTF-8 text"):
        uploaded_file(bad, bad_type, "image", ("model",))


@pytest.mark.parametrize(
    "fields",
    [
        [("image", None, b"not a file")],
        [("photo", "a.png", b"x")],
        [("image", "a.png", b"x"), ("image", "b.png", b"y")],
    ],
)
def test_an_upload_that_is_not_one_file_under_its_field_is_refused(fields):
    body, content_type = multipart(fields)
    with pytest.raises(BadRequest, match="multipart fields"):
        uploaded_file(body, content_type, "image")


def test_app_first_sends_every_request_but_bentomls_own_routes_straight_to_the_mounted_app():
    import bentoml

    from services.compat.bentoml_asgi import AppFirst
    from services.settings import service_config

    scopes = []

    async def echo(request):
        scopes.append(request.scope)
        return JSONResponse({"path": request.url.path})

    mounted = Starlette(routes=[Route("/{path:path}", echo, methods=["GET", "POST"])])
    service = bentoml.service(**service_config("direct"))(bentoml.asgi_app(mounted, path="/")(type("S", (), {})))
    service.add_asgi_middleware(AppFirst, mounted=mounted)
    with TestClient(service.to_asgi(is_main=True)) as client:
        assert client.post("/classify_text").json() == {"path": "/classify_text"}
        assert client.get("/v2/models/m").json() == {"path": "/v2/models/m"}
        # BentoML's request context puts `request_id` in every scope it handles, and its mount `app_root_path`
        assert not {"request_id", "app_root_path"} & scopes[-1].keys()
        for path in ("/livez", "/healthz", "/readyz", "/schema.json"):  # BentoML's own routes
            assert client.get(path).status_code == 200
        assert len(scopes) == 2
    # Every route BentoML serves itself, but the two the platform's app replaces, is one AppFirst leaves to it.
    own = {route.path for route in service.to_asgi(is_main=True).routes if type(route) is Route}
    assert own - {"/", "/docs.json"} <= AppFirst.BENTOML_PATHS
