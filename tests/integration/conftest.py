"""Real `bentoml serve` processes on free loopback ports."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from harness.servers import free_port, serve_command, stop, wait_ready

ROOT = Path(__file__).resolve().parents[2]


def private_home(session_dir: Path, name: str) -> Path:
    """A BENTOML_HOME of its own that shares the session's model store.

    A server wipes the Prometheus files of its home at start; in its own home it leaves the session
    server's metrics alone, so such a test may run in any order.
    """
    home = session_dir / name
    home.mkdir()
    (home / "models").symlink_to(Path(os.environ["BENTOML_HOME"]) / "models")
    return home


def start_server(
    bentoml_home: Path,
    log_path: Path,
    service: str = "services.platform:Platform",
    extra_env: dict[str, str] | None = None,
    port: int | None = None,
) -> tuple[subprocess.Popen, str]:
    port = port or free_port()
    env = {**os.environ, "BENTOML_HOME": str(bentoml_home), "BENTOML_DO_NOT_TRACK": "true", **(extra_env or {})}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # the server keeps its own under BENTOML_HOME
    process = subprocess.Popen(
        serve_command(port, service),
        cwd=ROOT,
        env=env,
        stdout=open(log_path, "wb"),  # noqa: SIM115 - the server process holds it
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return process, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def served(registered, session_dir):
    """The platform served for real, as `make serve` does, on a free port: (process, url)."""
    log_path = session_dir / "server.log"
    process, url = start_server(Path(os.environ["BENTOML_HOME"]), log_path)
    try:
        wait_ready(process, url, log_path)
        yield process, url
    finally:
        stop(process)


@pytest.fixture(scope="session")
def server(served) -> str:
    return served[1]


@pytest.fixture(scope="session")
def browser():
    """Debian's headless chromium driven by selenium through chromium-driver, logging every network request."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        required = os.environ.get("MODELROAD_REQUIRE_CONTAINER") == "1"  # .ci/run installs the browser as root
        (pytest.fail if required else pytest.skip)("chromium and chromium-driver: scripts/setup.sh installs them")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--no-first-run"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # every network request, for the origin check
    chrome = webdriver.Chrome(service=Service(driver), options=options)
    chrome.set_page_load_timeout(60)
    try:
        yield chrome
    finally:
        chrome.quit()


def requested_urls(browser) -> list[str]:
    """The URLs the browser asked for since the last call (Chrome's DevTools network events)."""
    urls = []
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls
