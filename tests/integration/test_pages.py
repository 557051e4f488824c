"""The server's pages in a real browser (Debian's headless chromium, driven by selenium through chromium-driver):
every request a page makes stays on the server's origin, `/` lists what is served, and the API reference renders
the served OpenAPI document."""

from __future__ import annotations

import json
import os
import shutil

import httpx
import pytest

REQUIRED = os.environ.get("MODELROAD_REQUIRE_CONTAINER") == "1"  # .ci/run installs the browser as root


@pytest.fixture(scope="module")
def browser():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        (pytest.fail if REQUIRED else pytest.skip)(
            "chromium and chromium-driver: scripts/setup.sh installs them as root"
        )
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
    """The URLs the page asked for since the last call (Chrome's DevTools network events)."""
    urls = []
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def test_the_overview_lists_the_served_models_and_requests_nothing_elsewhere(browser, server, registered):
    browser.get_log("performance")  # start afresh
    browser.get(f"{server}/")
    assert browser.title == "modelroad"
    table = browser.find_element("tag name", "table").text
    for name in ("fashion-cnn", "co2-lstm", "co2-gru", "wordnet-transformer"):  # the families' (int8: not served)
        assert f"{name} {registered[name]['tag'].split(':')[1]}" in table
    urls = requested_urls(browser)
    assert urls and all(url.startswith(server) for url in urls), urls


def test_the_api_reference_renders_the_served_document_from_this_server_alone(browser, server):
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get_log("performance")
    browser.get(f"{server}/reference")
    # Swagger UI builds the operations from /docs.json in the browser: one block per route.
    WebDriverWait(browser, 30).until(lambda b: "/classify_image" in b.find_element("tag name", "body").text)
    assert "/v2/models/{name}/infer" in browser.find_element("tag name", "body").text
    urls = requested_urls(browser)
    assert f"{server}/docs.json" in urls and f"{server}/reference/assets/swagger-ui-bundle.js" in urls
    assert all(url.startswith((server, "data:")) for url in urls), urls


def test_no_page_names_a_third_party(server):
    for path in ("/", "/reference"):
        page = httpx.get(f"{server}{path}")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "googletagmanager" not in page.text and "cdn." not in page.text and "https://" not in page.text
