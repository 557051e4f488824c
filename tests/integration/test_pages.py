"""The server's pages in a real browser (Debian's headless chromium, driven by selenium through chromium-driver):
the console lists what is served, its figures move under traffic, its forms call the real routes and show their
answers and errors as text, the API reference renders the served OpenAPI document, and every request a page
makes stays on the server's origin."""

from __future__ import annotations

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.helpers import fashion_test_images
from tests.integration.conftest import requested_urls

FAMILY_MODELS = ("fashion-cnn", "co2-lstm", "co2-gru", "wordnet-transformer", "fashion-diffusion", "fashion-gan")


@pytest.fixture
def console(browser, server):
    """The console opened afresh, its table filled; after the test, every request it made was to the server."""
    browser.get_log("performance")
    browser.get(f"{server}/")
    WebDriverWait(browser, 30).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#models tbody tr"))
    yield browser
    urls = requested_urls(browser)
    assert urls and all(url.startswith((server, "data:")) for url in urls), urls  # data: the images drawn


def cell(browser, model: str, column: str) -> str | None:
    """A table cell's text, read in one script call: the table is redrawn every few seconds, so an element
    found in one call may be gone (stale) by the next."""
    selector = f'#models tr[data-model="{model}"] td.{column}'
    return browser.execute_script("const c = document.querySelector(arguments[0]); return c && c.textContent", selector)


def answer_of(form) -> str:
    """The form's answer or error once one is shown."""
    WebDriverWait(form.parent, 30).until(
        lambda _: (
            form.find_element(By.CSS_SELECTOR, ".error").text or form.find_elements(By.CSS_SELECTOR, ".answer .version")
        )
    )
    return form.find_element(By.CSS_SELECTOR, ".error").text


def test_the_console_lists_each_served_version_with_its_card_and_policy(console, registered):
    assert console.title == "modelroad"
    table = console.find_element(By.ID, "models").text
    for name in FAMILY_MODELS:  # the families' (int8 variants are stored, not served)
        assert f"{name} {registered[name]['tag'].split(':')[1]}" in table
    row = console.find_element(By.CSS_SELECTOR, '#models tr[data-model="fashion-cnn"]').text
    assert "image-classification accuracy 0." in row and "logistic_regression" in row and "latest takes all" in row
    assert not console.find_element(By.ID, "key").is_displayed()  # no keys on this server


def test_the_live_figures_change_under_traffic(console, server):
    # The first reading of the figures has been shown ("few" seconds until then): counts from here on are rates.
    WebDriverWait(console, 20).until(lambda b: b.find_element(By.ID, "window").text != "few")
    before = int(float(cell(console, "fashion-cnn", "requests")))
    (png,), _ = fashion_test_images(1)
    with httpx.Client(base_url=server) as client:
        for _ in range(20):
            assert client.post("/classify_image", files={"image": png}).status_code == 200
    WebDriverWait(console, 20).until(
        lambda b: (
            int(float(cell(b, "fashion-cnn", "requests"))) >= before + 20 and cell(b, "fashion-cnn", "rate") != "–"
        )
    )
    assert float(cell(console, "fashion-cnn", "rate")) > 0
    assert cell(console, "fashion-cnn", "p50").endswith(" ms") and cell(console, "fashion-cnn", "p99").endswith(" ms")
    assert cell(console, "fashion-cnn", "errors") == "0.0%" and cell(console, "fashion-cnn", "ood").endswith("%")


def test_the_image_form_classifies_an_upload(console, registered, tmp_path):
    (png,), _ = fashion_test_images(1)
    (tmp_path / "first.png").write_bytes(png)
    form = console.find_element(By.ID, "image-form")
    form.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(tmp_path / "first.png"))
    form.find_element(By.TAG_NAME, "button").click()
    assert answer_of(form) == ""
    labels = registered["fashion-cnn"]["labels"]
    assert form.find_element(By.CSS_SELECTOR, ".answer .label").text in labels
    assert len(form.find_elements(By.CSS_SELECTOR, ".answer .bar")) == 5
    assert (
        form.find_element(By.CSS_SELECTOR, ".answer .version").text == f"answered by {registered['fashion-cnn']['tag']}"
    )
    assert "OOD score" in form.find_element(By.CSS_SELECTOR, ".answer .verdict").text


def test_the_text_form_shows_a_label_and_markup_typed_in_stays_text(console, registered, server):
    form = console.find_element(By.ID, "text-form")
    typed = "<script>window.pwned = 1</script><b>a small boat</b> with oars"
    form.find_element(By.TAG_NAME, "textarea").send_keys(typed)
    form.find_element(By.TAG_NAME, "button").click()
    assert answer_of(form) == ""
    assert form.find_element(By.CSS_SELECTOR, ".answer .label").text in registered["wordnet-transformer"]["labels"]
    assert form.find_element(By.CSS_SELECTOR, ".answer .input").text == typed  # shown as sent, as text
    assert not form.find_elements(By.CSS_SELECTOR, ".answer script, .answer b")
    # A bad history: the API's own 4xx message beside the form, its echo of the input shown as text.
    form = console.find_element(By.ID, "forecast-form")
    form.find_element(By.TAG_NAME, "textarea").send_keys("1 2 <img src=x onerror=window.pwned=1>")
    form.find_element(By.CSS_SELECTOR, "button:not(.pick)").click()
    api = httpx.post(
        f"{server}/forecast", json={"history": [1, 2, "<img", "src=x", "onerror=window.pwned=1>"], "horizon": 12}
    )
    assert answer_of(form) == f"{api.status_code}: {api.json()['error']}" and api.status_code == 400
    assert not form.find_elements(By.CSS_SELECTOR, ".error *")  # no element made of what was typed
    assert console.execute_script("return window.pwned") is None


def test_the_forecast_form_draws_the_forecast_after_the_latest_co2_weeks(console, registered):
    form = console.find_element(By.ID, "forecast-form")
    form.find_element(By.CSS_SELECTOR, "button.pick").click()
    history = form.find_element(By.TAG_NAME, "textarea").get_attribute("value").split(", ")
    assert len(history) == registered["co2-gru"]["preprocessing"]["window"]
    form.find_element(By.CSS_SELECTOR, "button:not(.pick)").click()
    assert answer_of(form) == ""
    assert len(form.find_element(By.CSS_SELECTOR, ".answer .values").text.split(", ")) == 12
    assert form.find_element(By.CSS_SELECTOR, "svg.forecast polyline.ahead").get_attribute("points").count(",") == 13
    assert form.find_element(By.CSS_SELECTOR, ".answer .version").text.startswith("answered by co2-")


@pytest.mark.parametrize("generator", ["fashion-diffusion", "fashion-gan"])
def test_the_generation_form_draws_the_images_the_api_gives_for_the_seed(console, registered, server, generator):
    form = console.find_element(By.ID, "generate-form")
    classes = form.find_element(By.CSS_SELECTOR, "select[name=label]")
    WebDriverWait(console, 20).until(lambda _: len(classes.find_elements(By.TAG_NAME, "option")) == 11)
    classes.find_element(By.CSS_SELECTOR, 'option[value="Sneaker"]').click()
    generators = form.find_element(By.CSS_SELECTOR, "select[name=model]")
    offered = [option.get_attribute("value") for option in generators.find_elements(By.TAG_NAME, "option")]
    assert offered == ["fashion-diffusion", "fashion-gan"]  # the default first
    generators.find_element(By.CSS_SELECTOR, f'option[value="{generator}"]').click()
    for name, value in (("n", "3"), ("seed", "5")):
        field = form.find_element(By.CSS_SELECTOR, f"input[name={name}]")
        field.clear()
        field.send_keys(value)
    form.find_element(By.TAG_NAME, "button").click()
    WebDriverWait(console, 30).until(lambda _: len(form.find_elements(By.CSS_SELECTOR, ".answer img.drawn")) == 3)
    images = form.find_elements(By.CSS_SELECTOR, ".answer img.drawn")
    shown = [img.get_attribute("src").removeprefix("data:image/png;base64,") for img in images]
    body = {"model": generator, "n": 3, "seed": 5, "label": "Sneaker"}
    api = httpx.post(f"{server}/generate_images", json=body, timeout=30).json()
    assert shown == api["images"]
    tag = registered[generator]["tag"]
    assert form.find_element(By.CSS_SELECTOR, ".answer .version").text == f"answered by {tag}"


def test_the_api_reference_renders_the_served_document_from_this_server_alone(browser, server):
    browser.get_log("performance")
    browser.get(f"{server}/reference")
    # Swagger UI builds the operations from /docs.json in the browser: one block per route.
    WebDriverWait(browser, 30).until(lambda b: "/classify_image" in b.find_element(By.TAG_NAME, "body").text)
    assert "/v2/models/{name}/infer" in browser.find_element(By.TAG_NAME, "body").text
    urls = requested_urls(browser)
    assert f"{server}/docs.json" in urls and f"{server}/reference/assets/swagger-ui-bundle.js" in urls
    assert all(url.startswith((server, "data:")) for url in urls), urls


def test_no_page_or_script_names_a_third_party(server):
    for path in ("/", "/reference", "/console/assets/console.js", "/console/assets/console.css"):
        page = httpx.get(f"{server}{path}")
        assert page.status_code == 200, path
        assert "googletagmanager" not in page.text and "cdn." not in page.text and "https://" not in page.text
