"""Over real HTTP against `bentoml serve`: uploads, bad input, metrics, the load-test gate, overload."""

import asyncio
import hashlib
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
from PIL import Image

from harness.servers import stop, wait_ready
from tests.helpers import (
    co2_history,
    fashion_test_images,
    offline_forecast,
    offline_image_probabilities,
    offline_text_probabilities,
)
from tests.integration.conftest import private_home, start_server

pytestmark = pytest.mark.slow


def test_served_predictions_equal_the_offline_onnx_predictions(server, cnn_card):
    files, _ = fashion_test_images(16)
    expected = offline_image_probabilities(cnn_card["tag"], files)
    labels = cnn_card["labels"]
    with httpx.Client(base_url=server, timeout=10) as client:
        for png, row in zip(files, expected):
            body = client.post("/classify_image", files={"image": ("x.png", png, "image/png")}).json()
            np.testing.assert_allclose([body["probabilities"][label] for label in labels], row, atol=1e-5)
            assert body["label"] == labels[int(row.argmax())]


def test_served_forecast_equals_the_offline_onnx_forecast(server, registered):
    history = co2_history()
    for cell in ("lstm", "gru"):
        body = httpx.post(
            f"{server}/forecast", json={"history": history, "horizon": 52, "model": cell}, timeout=10
        ).json()
        expected = offline_forecast(registered[f"co2-{cell}"]["tag"], history, 52)
        np.testing.assert_allclose(body["forecast"], expected, atol=1e-3)


def test_served_text_classes_equal_the_offline_onnx_classes(server, registered):
    texts = ["a small domesticated carnivore kept as a pet", "a sweet baked food made of flour and sugar"]
    card = registered["wordnet-transformer"]
    expected = offline_text_probabilities(card["tag"], texts)
    answers = httpx.post(f"{server}/classify_texts", json={"texts": texts}, timeout=10).json()
    got = np.array([[a["probabilities"][k] for k in card["labels"]] for a in answers])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    single = httpx.post(f"{server}/classify_text", json={"text": texts[0]}, timeout=10).json()
    assert single["label"] == card["labels"][int(expected[0].argmax())]


def image_file(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (28, 28), (200, 10, 10)).save(buffer, fmt)
    return buffer.getvalue()


PNG = image_file("PNG")


@pytest.mark.parametrize(
    "request_kwargs,status,error",
    [
        ({"files": {"image": ("x.png", b"GIF89a-not-really", "image/png")}}, 400, "not a readable PNG/JPEG"),
        ({"files": {"file": ("x.png", b"1", "image/png")}}, 400, "expected ['image']"),
        ({"content": b"x" * (11 * 1024 * 1024), "headers": {"content-type": "image/png"}}, 413, "over the limit"),
        ({"content": b"{", "headers": {"content-type": "application/json"}}, 415, "takes multipart/form-data"),
        (
            {"files": [("image", ("a.png", PNG, "image/png")), ("image", ("b.png", PNG, "image/png"))]},
            400,
            "(one file)",
        ),
        ({"files": {"image": ("x.gif", image_file("GIF"), "image/gif")}}, 400, "not a readable PNG/JPEG"),
        ({"files": {"image": ("x.webp", image_file("WEBP"), "image/webp")}}, 400, "not a readable PNG/JPEG"),
        ({"files": {"image": ("x.bmp", image_file("BMP"), "image/bmp")}}, 400, "not a readable PNG/JPEG"),
        ({"files": {"image": ("x.tiff", image_file("TIFF"), "image/tiff")}}, 400, "not a readable PNG/JPEG"),
        # JSON routes take application/json only: other types need no CORS preflight from a cross-site page.
        (
            {"content": b'{"text": "a cat"}', "headers": {"content-type": "text/plain"}, "path": "/classify_text"},
            415,
            "takes application/json; got text/plain",
        ),
        ({"content": b'{"text": "a cat"}', "path": "/classify_text"}, 415, "got no Content-Type"),
        ({"data": {"history": "1"}, "path": "/forecast"}, 415, "application/x-www-form-urlencoded"),
        (
            {"content": b"{}", "headers": {"content-type": "text/plain"}, "path": "/v2/models/fashion-cnn/infer"},
            415,
            "takes application/json or application/octet-stream or no Content-Type",
        ),
        ({"content": b"{", "headers": {"content-type": "application/json"}, "path": "/forecast"}, 400, "Invalid JSON"),
        ({"json": {"history": [1.0] * 10, "horizon": 5}, "path": "/forecast"}, 400, "at least 52 items"),
        ({"json": {"history": [1.0] * 60, "horizon": 99}, "path": "/forecast"}, 400, "less than or equal to 52"),
        (
            {"content": b"[1,2]", "headers": {"content-type": "application/json"}, "path": "/forecast"},
            400,
            "body: Input should be an object",
        ),
        ({"json": {"text": ""}, "path": "/classify_text"}, 400, "text: String should have at least 1 character"),
        ({"json": {"text": None}, "path": "/classify_text"}, 400, "text: Input should be a valid string"),
    ],
)
def test_bad_requests_get_a_4xx_json_error_over_http(server, request_kwargs, status, error):
    kwargs = dict(request_kwargs)
    path = kwargs.pop("path", "/classify_image")
    response = httpx.post(f"{server}{path}", timeout=10, **kwargs)
    assert response.status_code == status
    assert error in response.json()["error"]


# Bodies under the size limit made of many bad items: each bad item used to add an error to the answer.
AMPLIFIERS = {
    "pixels, every grey a string": ("/classify_pixels", {"pixels": [[["x"] * 28] * 28] * 64}),
    "pixels, 560,000 columns": ("/classify_pixels", {"pixels": [[[1] * 28] * 28] * 63 + [[[1] * 20_000] * 28]}),
    "history, strings": ("/forecast", {"history": [1.0] * 4000 + ["x"] * 300_000}),
    "texts, numbers": ("/classify_texts", {"texts": ["a gloss"] * 63 + [[1] * 300_000]}),
    "tensor data, strings": (
        "/v2/models/fashion-cnn/infer",
        {"inputs": [{"name": "pixels", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": ["x"] * 300_000}]},
    ),
}


@pytest.mark.parametrize("case", AMPLIFIERS)
def test_a_body_of_many_bad_items_gets_a_small_answer_and_no_traceback(served, session_dir, case):
    _, url = served
    path, body = AMPLIFIERS[case]
    response = httpx.post(url + path, json=body, timeout=30)
    assert response.status_code == 400
    assert len(response.content) < 2048 and len(response.json().get("detail", [])) <= 5
    assert "Traceback" not in (session_dir / "server.log").read_text()


def test_heavy_uploads_are_decoded_off_the_event_loop_and_oversized_ones_refused_first(server):
    """Six 3400x3400 RGBA uploads (0.2 s of decoding each) while /livez is probed: the loop stays free.

    With decoding on the event loop, /livez waited up to 0.94 s here; off it, 13-23 ms.
    """
    flat = io.BytesIO()
    Image.new("RGBA", (3400, 3400), (120, 30, 200, 128)).save(flat, "PNG")
    bomb = io.BytesIO()
    Image.new("RGBA", (6300, 6300)).save(bomb, "PNG")  # 40M pixels allowed, but 151 MiB decoded

    async def measure() -> tuple[list[int], list[float], httpx.Response]:
        async with httpx.AsyncClient(base_url=server, timeout=60) as client:
            refused = await client.post("/classify_image", files={"image": ("b.png", bomb.getvalue(), "image/png")})
            uploads = [
                client.post("/classify_image", files={"image": ("x.png", flat.getvalue(), "image/png")})
                for _ in range(6)
            ]
            probes: list[float] = []

            async def probe() -> None:
                async with httpx.AsyncClient(base_url=server, timeout=60) as prober:
                    while len(probes) < 500 and not all(task.done() for task in tasks):
                        started = time.perf_counter()
                        await prober.get("/livez")
                        probes.append(time.perf_counter() - started)
                        await asyncio.sleep(0.01)

            tasks = [asyncio.ensure_future(upload) for upload in uploads]
            await asyncio.gather(probe(), *tasks)
            return [task.result().status_code for task in tasks], probes, refused

    statuses, probes, refused = asyncio.run(measure())
    assert statuses == [200] * 6 and len(probes) >= 5
    assert max(probes) < 0.2, f"/livez waited {max(probes) * 1000:.0f} ms behind the uploads"
    assert refused.status_code == 413 and "MiB decoded" in refused.json()["error"]


def test_unknown_paths_and_methods_answer_json(server):
    assert httpx.get(f"{server}/nowhere").json() == {"error": "no route /nowhere; see /docs.json"}
    wrong = httpx.get(f"{server}/classify_image")
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
    files, _ = fashion_test_images(1)
    trace = httpx.request("TRACE", f"{server}/classify_image", files={"image": ("x.png", files[0], "image/png")})
    assert trace.status_code == 405 and "TRACE is not served" in trace.json()["error"]


def test_workers_run_on_uvloop_and_httptools(served):
    process, _ = served
    workers = psutil.Process(process.pid).children(recursive=True)
    assert workers
    for worker in workers:
        libraries = " ".join(m.path for m in worker.memory_maps())
        assert "uvloop" in libraries and "httptools" in libraries, worker.cmdline()


def test_requests_to_random_paths_and_methods_add_no_series_and_no_memory(served):
    """Scanners cannot grow /metrics or the worker: every label is a route template or `other`."""
    process, url = served
    methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "BREW", "PROPFIND"]
    rng = np.random.default_rng(7)

    def scan(client: httpx.Client, count: int) -> None:
        for _ in range(count):
            path = "/" + "/".join(str(part) for part in rng.integers(0, 10**9, size=rng.integers(1, 4)))
            client.request(methods[rng.integers(len(methods))], path)

    def series(client: httpx.Client) -> int:
        return sum(1 for line in client.get("/metrics").text.splitlines() if not line.startswith("#"))

    def rss() -> int:
        return sum(p.memory_info().rss for p in psutil.Process(process.pid).children(recursive=True))

    with httpx.Client(base_url=url, timeout=10) as client:
        scan(client, 500)  # every method's `other` series made once
        series(client)  # and /metrics' own (counted after it answers)
        before, memory = series(client), rss()
        scan(client, 10_000)
        assert series(client) == before
        assert rss() - memory < 10 * 2**20


def test_tracing_is_off_by_default(server):
    # BentoML's tracing middleware gives every traced request an id header; excluded URLs get none.
    answer = httpx.post(f"{server}/classify_text", json={"text": "a sweet baked food"}, timeout=10)
    assert answer.status_code == 200 and "x-bentoml-request-id" not in answer.headers


def test_health_endpoints_and_openapi(server):
    assert httpx.get(f"{server}/livez").status_code == 200
    assert httpx.get(f"{server}/readyz").status_code == 200
    paths = httpx.get(f"{server}/docs.json").json()["paths"]
    assert {"/classify_image", "/classify_pixels", "/forecast", "/classify_text", "/classify_texts"} <= set(paths)


def test_metrics_describe_models_and_pass_promtool(server):
    files, _ = fashion_test_images(2)
    for png in files:
        httpx.post(f"{server}/classify_image", files={"image": ("x.png", png, "image/png")})
    httpx.post(f"{server}/classify_image", files={"image": ("x.png", b"junk", "image/png")})
    text = httpx.get(f"{server}/metrics").text
    for series in (
        "modelroad_inference_seconds_bucket{",
        "modelroad_batch_size_bucket{",
        "modelroad_queue_seconds_bucket{",
        "modelroad_predictions_total{",
        'modelroad_request_errors_total{endpoint="/classify_image",reason="bad_request"}',
        'modelroad_model_info{device="cpu",model="fashion-cnn"',
        'modelroad_model_info{device="cpu",model="co2-gru"',
        'modelroad_model_info{device="cpu",model="co2-lstm"',
        'modelroad_model_info{device="cpu",model="wordnet-transformer"',
        'modelroad_requests_total{endpoint="/classify_image",method="POST",protocol="http",status="200"}',
        'modelroad_request_seconds_bucket{endpoint="/classify_image",',
        "modelroad_requests_in_progress ",
    ):
        assert series in text, series
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package prometheus; scripts/setup.sh installs it as root)")
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr


def test_locust_gate_passes_on_a_healthy_server_and_fails_past_its_p95(server, tmp_path):
    def locust(p95_ms: float) -> int:
        command = [
            sys.executable,
            "-m",
            "loadtests.run",
            "--host",
            server,
            "--users",
            "4",
            "--duration",
            "4s",
            "--p95-ms",
            str(p95_ms),
            "--out",
            str(tmp_path / f"p95-{p95_ms}"),
        ]
        return subprocess.run(command, capture_output=True, timeout=60, check=False).returncode

    assert locust(2000) == 0
    stats = (tmp_path / "p95-2000_stats.csv").read_text()
    for endpoint in ("/classify_image", "/forecast", "/classify_text", "/classify_texts", "/generate_images"):
        assert stats.count(f",{endpoint},") == 1, endpoint
    assert (tmp_path / "p95-2000.html").stat().st_size > 0
    assert locust(0.001) == 1


def test_two_servers_on_one_bentoml_home_keep_their_own_metrics(registered, session_dir):
    """BentoML empties $BENTOML_HOME/prometheus_multiproc_dir at each start: the second server wiped the first's."""
    home = private_home(session_dir, "shared-home")

    def answered(url: str) -> float:
        text = httpx.get(f"{url}/metrics").text
        pattern = (
            r'modelroad_requests_total\{endpoint="/classify_text",method="POST",protocol="http",status="200"\} (\S+)'
        )
        return sum(float(v) for v in re.findall(pattern, text))

    first, first_url = start_server(home, session_dir / "shared-1.log")
    second = None
    try:
        wait_ready(first, first_url, session_dir / "shared-1.log")
        for _ in range(3):
            httpx.post(f"{first_url}/classify_text", json={"text": "a cat"})
        assert answered(first_url) == 3
        second, second_url = start_server(home, session_dir / "shared-2.log")
        wait_ready(second, second_url, session_dir / "shared-2.log")
        httpx.post(f"{second_url}/classify_text", json={"text": "a dog"})
        assert (answered(first_url), answered(second_url)) == (3, 1)
    finally:
        for process in (first, second):
            if process is not None:
                stop(process)


def test_a_tampered_model_file_stops_the_server_from_starting(registered, session_dir):
    home = session_dir / "tampered-home"
    shutil.copytree(session_dir / "bentoml" / "models", home / "models")
    (onnx_file,) = (home / "models" / "co2-gru").glob("*/model.onnx")
    onnx_file.write_bytes(onnx_file.read_bytes() + b"\0")
    log_path = session_dir / "tampered.log"
    process, _ = start_server(home, log_path)
    try:
        deadline = time.monotonic() + 60
        while process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.3)
        assert process.returncode not in (None, 0), "the server started on a tampered model"
    finally:
        stop(process)
    assert "ModelIntegrityError" in log_path.read_text() and "changed after registration" in log_path.read_text()


def test_a_model_onnx_runtime_cannot_load_stops_the_server_with_one_error(registered, session_dir):
    """Files as registered (sha256 updated too), but not a graph ONNX Runtime opens: exit, not restart forever."""
    home = session_dir / "unloadable-home"
    shutil.copytree(session_dir / "bentoml" / "models", home / "models")
    (onnx_file,) = (home / "models" / "co2-gru").glob("*/model.onnx")
    card = onnx_file.with_name("model.yaml")
    old, new = (hashlib.sha256(data).hexdigest() for data in (onnx_file.read_bytes(), b"not a graph"))
    onnx_file.write_bytes(b"not a graph")
    card.write_text(card.read_text().replace(old, new))
    log_path = session_dir / "unloadable.log"
    started = time.monotonic()
    process, _ = start_server(home, log_path)
    try:
        process.wait(60)
    finally:
        stop(process)
    log = log_path.read_text()
    assert process.returncode not in (None, 0) and time.monotonic() - started < 60
    last = log.strip().splitlines()[-1]  # the line to read: what failed and why
    assert last.startswith("services.runtime.runner.ModelLoadError: co2-gru:") and "cannot load model.onnx" in last


def test_an_overloaded_server_refuses_with_503_and_retry_after_and_keeps_serving(registered, session_dir):
    log_path = session_dir / "bounded.log"
    process, url = start_server(Path(os.environ["BENTOML_HOME"]), log_path, extra_env={"MODELROAD_MAX_IN_FLIGHT": "1"})
    texts = ["the act of putting something in working order again after it was broken or damaged"] * 64

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            return await asyncio.gather(*[client.post("/classify_texts", json={"texts": texts}) for _ in range(16)])

    try:
        wait_ready(process, url, log_path)
        answers = asyncio.run(burst())
        statuses = [r.status_code for r in answers]
        assert set(statuses) == {200, 503}, statuses
        for refused in (r for r in answers if r.status_code == 503):
            assert refused.headers["retry-after"] == "1" and "server busy" in refused.json()["error"]
        assert httpx.post(f"{url}/classify_text", json={"text": "a sweet baked food"}, timeout=10).status_code == 200
        assert process.poll() is None
    finally:
        stop(process)


def test_requests_past_the_timeout_get_504_and_the_server_goes_on(registered, session_dir):
    log_path = session_dir / "timeout.log"
    process, url = start_server(
        Path(os.environ["BENTOML_HOME"]), log_path, extra_env={"MODELROAD_REQUEST_TIMEOUT_S": "0.3"}
    )
    texts = ["the act of putting something in working order again after it was broken or damaged " * 8] * 64

    async def burst() -> list[httpx.Response]:  # ~40 full batches queue for longer than 0.3 s
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            return await asyncio.gather(*[client.post("/classify_texts", json={"texts": texts}) for _ in range(40)])

    try:
        wait_ready(process, url, log_path)
        answers = asyncio.run(burst())
        statuses = {r.status_code for r in answers}
        assert 504 in statuses and statuses <= {200, 504}, statuses
        assert all("error" in r.json() for r in answers if r.status_code == 504)
        assert httpx.post(f"{url}/classify_text", json={"text": "a sweet baked food"}, timeout=10).status_code == 200
        assert process.poll() is None
    finally:
        stop(process)


@pytest.mark.parametrize("drain_s", ["1", "0"], ids=["draining", "not-draining"])
def test_requests_on_kept_alive_connections_after_sigterm_get_an_answer_not_a_reset(registered, session_dir, drain_s):
    """After SIGTERM a worker answers, for MODELROAD_DRAIN_S, every request with `Connection: close` (new work:
    503 + Retry-After), so clients leave their kept-alive connections on an answer instead of a reset."""
    log_path = session_dir / f"keepalive-{drain_s}.log"
    process, url = start_server(Path(os.environ["BENTOML_HOME"]), log_path, extra_env={"MODELROAD_DRAIN_S": drain_s})

    async def after_sigterm() -> list[int | str]:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        clients = [httpx.AsyncClient(base_url=url, timeout=10, limits=limits) for _ in range(16)]
        try:
            for client in clients:  # each holds one kept-alive connection
                assert (await client.get("/v2/models/fashion-cnn")).status_code == 200
            os.killpg(process.pid, signal.SIGTERM)
            await asyncio.sleep(0.2)

            async def again(client: httpx.AsyncClient) -> int | str:
                try:
                    response = await client.get("/v2/models/fashion-cnn")
                except httpx.TransportError as exc:
                    return type(exc).__name__
                return response.status_code

            return list(await asyncio.gather(*(again(client) for client in clients)))
        finally:
            for client in clients:
                await client.aclose()

    try:
        wait_ready(process, url, log_path)
        answers = asyncio.run(after_sigterm())
        if drain_s == "1":
            assert answers == [503] * 16, answers
        else:  # what uvicorn alone does: idle kept-alive connections closed under the clients' requests
            assert any(isinstance(answer, str) for answer in answers), answers
        assert process.wait(30) == 0
    finally:
        stop(process)


def test_sigterm_finishes_the_requests_in_flight_and_exits_cleanly(registered, session_dir):
    log_path = session_dir / "drain.log"
    process, url = start_server(Path(os.environ["BENTOML_HOME"]), log_path)
    texts = ["the act of putting something in working order again after it was broken or damaged " * 8] * 64

    async def post(client: httpx.AsyncClient) -> tuple[int, float]:
        response = await client.post("/classify_texts", json={"texts": texts})
        return response.status_code, time.monotonic()

    async def burst_then_sigterm() -> tuple[list[tuple[int, float]], float]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            requests = [asyncio.create_task(post(client)) for _ in range(30)]  # ~1-2 s of batches
            await asyncio.sleep(0.3)
            os.killpg(process.pid, signal.SIGTERM)
            signalled = time.monotonic()
            return await asyncio.gather(*requests), signalled

    try:
        wait_ready(process, url, log_path)
        answers, signalled = asyncio.run(burst_then_sigterm())
        assert [status for status, _ in answers] == [200] * 30
        assert max(done for _, done in answers) > signalled, "nothing was in flight when SIGTERM came"
        assert process.wait(30) == 0
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/readyz", timeout=2)
    finally:
        stop(process)
