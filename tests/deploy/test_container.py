"""The serving image built from an empty engine with podman, run, asked, stopped with SIGTERM; the pod
of deploy/podman runs it beside Prometheus. Each engine's storage is private to the test and removed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from deploy.image import ROOT, ImageBuild, build_image, build_prometheus_image, check_image, engine_env
from harness.servers import free_port
from tests.helpers import prometheus_query

pytestmark = [pytest.mark.slow, pytest.mark.container]
# .ci/run sets this: CI runs as root with podman installed, so a skip there would hide a broken image.
REQUIRED = os.environ.get("MODELROAD_REQUIRE_CONTAINER") == "1"
POD_FILE = ROOT / "deploy" / "podman" / "modelroad-pod.yaml"


def podman(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], env=engine_env("podman"), capture_output=True, text=True, check=False)


@pytest.fixture(scope="module")
def build(tmp_path_factory) -> Iterator[ImageBuild]:
    missing = [tool for tool in ("podman", "runc", "debootstrap") if shutil.which(tool) is None]
    problem = "needs root (debootstrap)" if os.geteuid() != 0 else f"needs {', '.join(missing)}" if missing else None
    if problem:
        (pytest.fail if REQUIRED else pytest.skip)(f"container test {problem}: scripts/setup.sh installs them as root")
    root = tmp_path_factory.mktemp("engine")
    (root / "storage.conf").write_text(
        f'[storage]\ndriver = "overlay"\ngraphroot = "{root}/graph"\nrunroot = "{root}/run"\n'
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CONTAINERS_STORAGE_CONF", str(root / "storage.conf"))  # an empty engine of its own
        try:
            yield ImageBuild(work_dir=root / "build", extra_ca=self_signed_certificate(root))
        finally:
            for command in (("pod", "rm", "--all", "--force"), ("rm", "--all", "--force"), ("rmi", "--all", "--force")):
                podman(*command)
            shutil.rmtree(root, ignore_errors=True)


def self_signed_certificate(folder: Path) -> Path:
    """A CA certificate of our own, standing in for a proxy that re-signs HTTPS."""
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=modelroad test CA",
            "-keyout",
            str(folder / "ca.key"),
            "-out",
            str(folder / "ca.crt"),
        ],
        check=True,
        capture_output=True,
    )
    return folder / "ca.crt"


@pytest.fixture(scope="module")
def image(build: ImageBuild, registered) -> str:
    started = time.monotonic()
    reference = build_image(build)
    print(f"\nimage {reference} built from an empty engine in {time.monotonic() - started:.0f} s")
    return reference


def test_the_image_serves_every_family_reports_metrics_and_stops_cleanly_on_sigterm(image, registered):
    report = check_image("podman", image)
    print(json.dumps(report.__dict__))
    assert report.answers["/classify_image"] in registered["fashion-cnn"]["labels"]
    assert report.answers["/classify_text"] in registered["wordnet-transformer"]["labels"]
    assert report.grpc_answer == report.answers["/classify_image"]  # the same upload through the gRPC port
    horizon = json.loads((ROOT / "loadtests/payloads/forecast_example.json").read_text())["horizon"]
    assert report.answers["/forecast"] == str(horizon)
    assert report.metrics_ok
    assert report.exit_code == 0, f"SIGTERM did not stop the server cleanly (exit {report.exit_code})"


def test_the_image_carries_onnx_runtime_and_no_torch(image):
    code = (
        "import importlib.util as u, sys; "
        "sys.exit(u.find_spec('torch') is not None or u.find_spec('onnxruntime') is None)"
    )
    result = podman("run", "--rm", "--entrypoint", "python", image, "-c", code)
    assert result.returncode == 0, result.stderr or "torch is in the serving image, or onnxruntime is not"


def test_the_extra_ca_certificate_is_trusted_inside_the_image(build, image):
    certificate_line = build.extra_ca.read_text().splitlines()[1]  # the first base64 line after BEGIN
    result = podman("run", "--rm", "--entrypoint", "cat", image, "/etc/ssl/certs/ca-certificates.crt")
    assert result.returncode == 0, result.stderr
    assert certificate_line in result.stdout.splitlines()


def test_the_pod_serves_beside_prometheus_which_scrapes_it_with_the_project_config(build, image):
    build_prometheus_image(build)
    pod = yaml.safe_load(POD_FILE.read_text())
    ports = {}
    for container in pod["spec"]["containers"]:
        for port in container["ports"]:
            port["hostPort"] = free_port()  # the file's 3000/8001/9090 may be taken here
            ports.setdefault(container["name"], port["hostPort"])  # each container's first: its HTTP port
    played = build.work_dir / "pod.yaml"
    played.write_text(yaml.safe_dump(pod))
    result = podman("play", "kube", "--replace", str(played))
    assert result.returncode == 0, result.stdout + result.stderr
    try:
        models = query_until(f"http://127.0.0.1:{ports['prometheus']}/api/v1/query", "modelroad_model_info")
        assert {m["metric"]["job"] for m in models} == {"modelroad"}
        assert {m["metric"]["model"] for m in models} >= {"fashion-cnn", "co2-lstm", "co2-gru", "wordnet-transformer"}
        assert httpx.get(f"http://127.0.0.1:{ports['modelroad']}/readyz", timeout=5).status_code == 200
    finally:
        podman("play", "kube", "--down", str(played))


def query_until(url: str, query: str, timeout: float = 90) -> list[dict]:
    """Prometheus' answer once it has scraped the series (its scrape interval is 15 s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := prometheus_query(url, query):
            return result
        time.sleep(1)
    logs = podman("pod", "logs", "modelroad")
    raise AssertionError(f"Prometheus never returned {query}; pod log ends:\n{(logs.stdout + logs.stderr)[-3000:]}")
