"""Serving while training, on a real `bentoml serve` with 2 workers: a family model still training has routes that
answer 503 with its run's progress, joins when it is registered (no restart, the ready family's traffic untouched),
and a failed run leaves the others serving; and `python -m training serve` end to end, with a run that fails.

The store here holds some of the session's models; "registering" one is moving its folder into the store, as
BentoML's own save does (a model appears whole).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from contracts.progress import TrainingProgress
from harness.servers import free_port, stop, wait_ready
from tests.helpers import co2_history, fashion_test_images
from tests.integration.conftest import ROOT, start_server

pytestmark = pytest.mark.slow


def store_with(home: Path, names: list[str]) -> Path:
    """A BENTOML_HOME whose store holds copies of the session's `names`; its models folder."""
    models = home / "models"
    models.mkdir(parents=True)
    for name in names:
        shutil.copytree(Path(os.environ["BENTOML_HOME"]) / "models" / name, models / name)
    return models


def register(models: Path, name: str) -> None:
    staged = models.parent / f".staged-{name}"
    shutil.copytree(Path(os.environ["BENTOML_HOME"]) / "models" / name, staged)
    staged.rename(models / name)


@dataclass
class TrainingServer:
    url: str
    models: Path  # its store
    progress: Path
    text: TrainingProgress  # the Transformer's run, as its record says
    log_path: Path


@pytest.fixture(scope="module")
def training_server(registered, tmp_path_factory):
    """2 workers started with the image model, the LSTM and the generators in the store; the Transformer training,
    the GRU's run failed (after its interface was known)."""
    tmp_path = tmp_path_factory.mktemp("serve-while-training")
    models = store_with(tmp_path / "home", ["fashion-cnn", "co2-lstm", "fashion-diffusion", "fashion-gan"])
    progress = tmp_path / "progress"
    progress.mkdir()
    text = TrainingProgress(
        "wordnet-transformer", "training", epoch=4, epochs=11, seconds_left=290, metric="macro_f1", score=0.61,
        card=registered["wordnet-transformer"], log="/tmp/training.log",
    )  # fmt: skip
    text.save(progress)
    failed = TrainingProgress(
        "co2-gru", "failed", error="RuntimeError: out of memory", log="/tmp/training.log", card=registered["co2-gru"]
    )
    failed.save(progress)
    log_path = tmp_path / "server.log"
    env = {"MODELROAD_TRAINING_PROGRESS": str(progress), "MODELROAD_WORKERS": "2"}
    process, url = start_server(tmp_path / "home", log_path, extra_env=env)
    try:
        wait_ready(process, url, log_path)
        yield TrainingServer(url, models, progress, text, log_path)
    finally:
        stop(process)


def test_a_model_still_training_answers_with_its_progress(training_server):
    url = training_server.url
    ready = httpx.get(f"{url}/readyz")
    assert ready.status_code == 200 and set(ready.json()["waiting"]) == {"wordnet-transformer", "co2-gru"}
    assert "epoch 4 of 11" in ready.json()["waiting"]["wordnet-transformer"]
    assert httpx.get(f"{url}/livez").status_code == 200
    assert httpx.request("TRACE", f"{url}/readyz").status_code == 405  # GET alone is answered with the report

    answer = httpx.post(f"{url}/classify_text", json={"text": "a small dog"})
    assert answer.status_code == 503 and answer.headers["retry-after"] == "60"
    assert answer.json()["error"] == (
        "wordnet-transformer is training: epoch 4 of 11, last validation macro_f1 0.6100, about 5 min left"
    )
    not_ready = httpx.get(f"{url}/v2/models/wordnet-transformer-pipeline/ready")
    assert not_ready.status_code == 503 and "epoch 4 of 11" in not_ready.json()["error"]


def test_a_failed_run_says_why_and_the_others_serve(training_server):
    url, history = training_server.url, co2_history()
    gru = httpx.post(f"{url}/forecast", json={"history": history, "model": "gru"})
    assert gru.status_code == 503
    assert gru.json()["error"] == "co2-gru's training failed: RuntimeError: out of memory (log: /tmp/training.log)"
    default = httpx.post(f"{url}/forecast", json={"history": history})
    assert default.status_code == 200 and default.headers["x-model-version"].startswith("co2-lstm:")
    files, _ = fashion_test_images(1)
    assert httpx.post(f"{url}/classify_image", files={"image": files[0]}).status_code == 200


def test_a_model_joins_when_registered_with_traffic_on_the_ready_family_untouched(training_server, registered):
    url, text = training_server.url, training_server.text
    files, _ = fashion_test_images(1)
    statuses: list[int] = []
    stop_traffic = threading.Event()

    def classify_images() -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            while not stop_traffic.is_set():
                statuses.append(client.post("/classify_image", files={"image": files[0]}).status_code)

    threads = [threading.Thread(target=classify_images) for _ in range(2)]
    for thread in threads:
        thread.start()
    time.sleep(1)
    register(training_server.models, "wordnet-transformer")
    text.state, text.tag, text.score = "registered", registered["wordnet-transformer"]["tag"], 0.7
    text.save(training_server.progress)
    deadline = time.monotonic() + 60
    while (answer := httpx.post(f"{url}/classify_text", json={"text": "a small dog"})).status_code != 200:
        assert answer.status_code == 503, answer.text
        assert time.monotonic() < deadline, f"never joined:\n{training_server.log_path.read_text()[-3000:]}"
        time.sleep(0.5)
    time.sleep(1)
    stop_traffic.set()
    for thread in threads:
        thread.join()
    assert len(statuses) > 20 and set(statuses) == {200}

    # Every worker serves it now, and says so.
    tags = {
        httpx.post(f"{url}/classify_text", json={"text": "a red car"}).headers["x-model-version"] for _ in range(20)
    }
    assert tags == {registered["wordnet-transformer"]["tag"]}
    assert httpx.get(f"{url}/v2/models/wordnet-transformer-pipeline/ready").status_code == 200
    assert set(httpx.get(f"{url}/readyz").json()["waiting"]) == {"co2-gru"}


def test_training_serve_serves_what_it_has_and_says_why_a_run_failed(registered, tmp_path):
    """The store lacks the Transformer and the generator, whose runs cannot find their data: the others serve at
    once, the terminal and /readyz say why, the full log keeps the traceback, and stopping the command stops the
    server."""
    store_with(tmp_path / "home", ["fashion-cnn", "co2-lstm", "co2-gru"])
    port = free_port()
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "home"), "MODELROAD_GRPC_PORT": "0"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    command = [sys.executable, "-m", "training", "serve", "--port", str(port), "--dry-run"]
    command += ["--out-dir", str(tmp_path / "artifacts"), "--data", str(tmp_path / "missing.csv")]
    output = tmp_path / "terminal.log"
    with open(output, "wb") as terminal:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=terminal, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(process, url, output, timeout=120)
        files, _ = fashion_test_images(1)
        assert httpx.post(f"{url}/classify_image", files={"image": files[0]}).status_code == 200
        waiting = httpx.get(f"{url}/readyz").json()["waiting"]
        assert set(waiting) == {"wordnet-transformer", "fashion-diffusion", "fashion-gan"}
        assert all("training failed" in why for why in waiting.values())
        assert httpx.post(f"{url}/classify_text", json={"text": "a dog"}).status_code == 404  # no interface, no route
        lines = output.read_text()
        assert "wordnet-transformer's training failed" in lines and "starting the server" in lines
        logs = list((tmp_path / "artifacts" / "logs").glob("training-*.log"))
        assert any(f"(log: {log})" in lines and "Traceback" in log.read_text() for log in logs)
        assert "Traceback" not in lines  # the terminal gets one line; the log the rest
    finally:
        process.terminate()  # as a service manager stops it: the lanes and the server go too
        process.wait(60)
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{url}/livez", timeout=2)  # the server stopped with the command
