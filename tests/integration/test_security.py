"""API keys and the per-key rate limit on a real `bentoml serve`."""

from __future__ import annotations

import hashlib
import json
import os
import re
import ssl
import subprocess
import sys
import threading
import time

import httpx
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from harness.servers import stop, wait_ready
from tests.helpers import localhost_certificate
from tests.integration.conftest import private_home, start_server

pytestmark = pytest.mark.slow

NOISY, QUIET, LATER = "noisy-key-0123456789", "quiet-key-9876543210", "later-key-5555555555"
RATE = 20  # requests/s per key


@pytest.fixture(scope="module")
def guarded(registered, session_dir, tmp_path_factory):
    keys_file = tmp_path_factory.mktemp("keys") / "keys"
    keys_file.write_text(f"{NOISY}\nsha256:{hashlib.sha256(QUIET.encode()).hexdigest()}  # quiet, stored hashed\n")
    home = private_home(session_dir, "guarded-home")
    log_path = session_dir / "guarded.log"
    env = {
        "MODELROAD_API_KEYS_FILE": str(keys_file),
        "MODELROAD_RATE_LIMIT": str(RATE),
        "MODELROAD_RATE_BURST": "60",
        "MODELROAD_ACCESS_LOG": "true",
        "MODELROAD_PROTECT_DOCS_AND_METRICS": "true",
    }
    process, url = start_server(home, log_path, extra_env=env)
    try:
        wait_ready(process, url, log_path)
        yield url, keys_file, log_path
    finally:
        stop(process)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_prediction_protocol_docs_and_metrics_routes_need_a_key_and_probes_and_the_pages_shell_do_not(guarded):
    url, _, _ = guarded
    for method, path in [("POST", "/classify_text"), ("GET", "/v2"), ("GET", "/v2/models/fashion-cnn"), ("GET", "/x")]:
        for headers in ({}, bearer("wrong-key"), {"X-API-Key": NOISY[:-1]}, {"Authorization": f"Basic {NOISY}"}):
            refused = httpx.request(method, url + path, headers=headers, json={"text": "a cat"})
            assert refused.status_code == 401, (path, headers)
            assert "API key" in refused.json()["error"] and refused.headers["www-authenticate"] == "Bearer"
    for headers in (bearer(NOISY), {"X-API-Key": QUIET}):
        assert httpx.post(f"{url}/classify_text", json={"text": "a cat"}, headers=headers).status_code == 200
    for path in ("/livez", "/readyz", "/v2/health/ready", "/", "/console/assets/console.js"):
        assert httpx.get(url + path).status_code == 200, path
    for path in ("/docs.json", "/metrics", "/console/models", "/console/figures"):  # protected by the setting
        assert httpx.get(url + path).status_code == 401, path
        assert httpx.get(url + path, headers=bearer(QUIET)).status_code == 200, path
    client = triton.InferenceServerClient(url.removeprefix("http://"))
    assert client.get_model_metadata("fashion-cnn", headers=bearer(QUIET))["name"] == "fashion-cnn"
    with pytest.raises(InferenceServerException) as refused:
        client.get_model_metadata("fashion-cnn")
    assert refused.value.status() == "401"


def test_each_request_gets_an_id_and_one_json_log_line_without_keys_or_bodies(guarded):
    url, _, log_path = guarded
    given = httpx.post(
        f"{url}/classify_text", json={"text": "secret gloss"}, headers={**bearer(QUIET), "X-Request-ID": "abc-123"}
    )
    made = httpx.get(f"{url}/v2/models/fashion-cnn", headers={"X-Request-ID": "not a token!"})
    assert given.headers["x-request-id"] == "abc-123" and re.fullmatch(r"[0-9a-f]{32}", made.headers["x-request-id"])
    time.sleep(0.5)
    lines = {}
    for line in log_path.read_text().splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            lines[entry["request_id"]] = entry
    logged = lines["abc-123"]
    assert logged["endpoint"] == "/classify_text" and logged["status"] == 200 and logged["method"] == "POST"
    assert logged["duration_ms"] > 0 and logged["key_id"] == hashlib.sha256(QUIET.encode()).hexdigest()[:12]
    assert lines[made.headers["x-request-id"]]["status"] == 401
    assert "secret gloss" not in log_path.read_text()


def test_the_keys_file_is_reread_without_a_restart(guarded):
    url, keys_file, _ = guarded

    def status() -> int:
        return httpx.get(f"{url}/v2/models/fashion-cnn", headers=bearer(LATER)).status_code

    assert status() == 401
    original = keys_file.read_text()
    keys_file.write_text(original + f"{LATER}\n")
    deadline = time.monotonic() + 10
    while status() != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert status() == 200
    keys_file.write_text(original)
    while status() != 401 and time.monotonic() < deadline + 10:
        time.sleep(0.2)
    assert status() == 401


def test_keys_never_reach_the_log_or_the_metrics(guarded):
    url, _, log_path = guarded
    httpx.get(f"{url}/v2/models/fashion-cnn", headers=bearer(NOISY))
    httpx.get(f"{url}/v2/models/fashion-cnn", headers=bearer("a-wrong-key-to-log"))
    exposed = log_path.read_text() + httpx.get(f"{url}/metrics", headers=bearer(QUIET)).text
    assert all(key not in exposed for key in (NOISY, QUIET, LATER, "a-wrong-key-to-log"))


def test_a_noisy_key_is_limited_with_429_and_retry_after_while_a_quiet_one_is_served(guarded, tmp_path):
    url, _, log_path = guarded
    quiet: list[int] = []

    def quiet_client() -> None:  # a quarter of the rate, for as long as wrk runs
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            quiet.append(httpx.get(f"{url}/v2/models/fashion-cnn", headers=bearer(QUIET)).status_code)
            time.sleep(4 / RATE)

    thread = threading.Thread(target=quiet_client)
    thread.start()
    wrk = subprocess.run(
        ["wrk", "-t1", "-c8", "-d4s", "-H", f"Authorization: Bearer {NOISY}", f"{url}/v2/models/fashion-cnn"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    thread.join()
    sent = int(re.search(r"(\d+) requests in", wrk).group(1))
    refused = int(re.search(r"Non-2xx or 3xx responses: (\d+)", wrk).group(1))
    assert refused > sent / 2, wrk  # thousands sent, at most burst + rate x 4 s answered
    assert quiet and set(quiet) == {200}, quiet
    with httpx.Client(base_url=url, headers=bearer(NOISY)) as noisy:  # faster than the rate refills
        answers = (noisy.get("/v2/models/fashion-cnn") for _ in range(200))
        limited = next(answer for answer in answers if answer.status_code != 200)
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    assert "rate limit of 20 requests/s" in limited.json()["error"]
    time.sleep(0.5)  # the access line of the refused request names the key that is over its rate
    request_id = limited.headers["x-request-id"]
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if request_id in line]
    assert [(line["status"], line["key_id"]) for line in lines] == [
        (429, hashlib.sha256(NOISY.encode()).hexdigest()[:12])
    ]


def test_the_load_test_sends_the_key_it_is_given(guarded, tmp_path):
    url, _, _ = guarded

    def failures(env: dict[str, str], name: str) -> str:
        command = [sys.executable, "-m", "loadtests.run", "--host", url, "--users", "2", "--duration", "3s"]
        command += ["--users-class", "ForecastUser", "--out", str(tmp_path / name)]
        subprocess.run(command, capture_output=True, timeout=60, check=False, env=env)
        return (tmp_path / f"{name}_failures.csv").read_text()

    others = {k: v for k, v in os.environ.items() if k != "MODELROAD_API_KEY"}
    # With the key, Locust outruns the 20 requests/s allowed: its only failures are 429s.
    assert "HTTP 401" not in failures({**others, "MODELROAD_API_KEY": QUIET}, "keyed")
    assert "HTTP 401" in failures(others, "unkeyed")


ORIGIN = "https://app.example.com"


@pytest.fixture(scope="module")
def tls_cors(registered, session_dir, tmp_path_factory):
    """HTTPS with a self-signed certificate made here, and CORS for one origin."""
    cert, key = localhost_certificate(tmp_path_factory.mktemp("tls"))
    home = private_home(session_dir, "tls-home")
    log_path = session_dir / "tls.log"
    env = {"MODELROAD_SSL_CERTFILE": str(cert), "MODELROAD_SSL_KEYFILE": str(key), "MODELROAD_CORS_ORIGINS": ORIGIN}
    process, url = start_server(home, log_path, extra_env=env)
    url = url.replace("http://", "https://")
    try:
        deadline = time.monotonic() + 90
        while process.poll() is None and time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/readyz", verify=str(cert), timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        else:
            pytest.fail(f"the TLS server did not start:\n{log_path.read_text()[-3000:]}")
        yield url, cert
    finally:
        stop(process)


def test_the_server_speaks_tls_1_2_or_later_only(tls_cors):
    url, cert = tls_cors
    assert httpx.get(f"{url}/livez", verify=str(cert)).status_code == 200
    old = ssl.create_default_context(cafile=str(cert))
    old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("ALL:@SECLEVEL=0")
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/livez", verify=old)
    with pytest.raises(httpx.HTTPError):
        httpx.get(url.replace("https://", "http://") + "/livez", timeout=5)


def test_a_listed_origins_preflight_gets_cors_headers_and_another_gets_none(tls_cors):
    url, cert = tls_cors
    with httpx.Client(base_url=url, verify=str(cert)) as client:

        def preflight(origin: str) -> httpx.Response:
            headers = {
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            }
            return client.options("/classify_text", headers=headers)

        allowed = preflight(ORIGIN)
        assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == ORIGIN
        assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
        assert "access-control-allow-origin" not in preflight("https://evil.example").headers
        answer = client.post("/classify_text", json={"text": "a cat"}, headers={"Origin": ORIGIN})
        assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == ORIGIN
        other = client.post("/classify_text", json={"text": "a cat"}, headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_without_cors_origins_no_cors_header_is_sent(server):
    preflight = httpx.options(
        f"{server}/classify_text", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
    )
    assert not [name for name in preflight.headers if name.lower().startswith("access-control-")]


def test_the_console_asks_for_a_key_keeps_it_in_the_tab_and_sends_it(guarded, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, _, _ = guarded
    browser.get(f"{url}/")
    key_form = browser.find_element(By.ID, "key")
    WebDriverWait(browser, 30).until(lambda _: key_form.is_displayed())  # /console/models answered 401
    assert "API key" in browser.find_element(By.ID, "key-status").text
    assert not browser.find_elements(By.CSS_SELECTOR, "#models tbody tr")
    browser.find_element(By.ID, "key-input").send_keys(QUIET)
    key_form.find_element(By.TAG_NAME, "button").click()
    WebDriverWait(browser, 30).until(lambda b: b.find_elements(By.CSS_SELECTOR, '#models tr[data-model="fashion-cnn"]'))
    form = browser.find_element(By.ID, "text-form")
    form.find_element(By.TAG_NAME, "textarea").send_keys("a small boat propelled by oars")
    form.find_element(By.TAG_NAME, "button").click()
    WebDriverWait(browser, 30).until(lambda _: form.find_elements(By.CSS_SELECTOR, ".answer .label"))
    assert form.find_element(By.CSS_SELECTOR, ".error").text == ""
    assert browser.execute_script("return sessionStorage.getItem('modelroad.key')") == QUIET
    assert browser.execute_script("return localStorage.length") == 0  # kept for the tab only
    browser.execute_script("sessionStorage.clear()")
