"""A real Prometheus server (Debian `prometheus`) scraping the served platform with the project's config."""

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from harness.servers import free_port, stop
from tests.helpers import prometheus_query
from tests.integration.conftest import ROOT

pytestmark = pytest.mark.slow
DEPLOY = ROOT / "deploy" / "prometheus"
METRIC_NAME = re.compile(r"\b(?:modelroad|bentoml)_[a-z0-9_]+")
needs_prometheus = pytest.mark.skipif(
    shutil.which("prometheus") is None or shutil.which("promtool") is None,
    reason="Debian package prometheus not installed (scripts/setup.sh installs it as root)",
)


@needs_prometheus
def test_promtool_accepts_the_config_and_rules():
    for command in (["check", "config", str(DEPLOY / "prometheus.yml")], ["check", "rules", str(DEPLOY / "rules.yml")]):
        result = subprocess.run(["promtool", *command], capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stdout + result.stderr


@needs_prometheus
def test_prometheus_scrapes_the_service_and_evaluates_the_rules(server, tmp_path):
    httpx.post(f"{server}/classify_text", json={"text": "a small domesticated carnivore"}, timeout=10)
    httpx.get(f"{server}/wp-admin.php", timeout=10)  # a scanner's path: BentoML makes it a series
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["scrape_configs"][0]["static_configs"] = [{"targets": [server.removeprefix("http://")]}]
    config["rule_files"] = [str(DEPLOY / "rules.yml")]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    process = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=open(tmp_path / "prometheus.log", "wb"),  # noqa: SIM115 - the server process holds it
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    api = f"http://127.0.0.1:{port}/api/v1"
    try:
        info = query_until(api, 'modelroad_model_info{model="wordnet-transformer"}', process, tmp_path)
        assert info[0]["metric"]["device"] == "cpu" and info[0]["metric"]["job"] == "modelroad"
        predictions = query_until(api, 'modelroad_predictions_total{model="wordnet-transformer"}', process, tmp_path)
        assert sum(float(r["value"][1]) for r in predictions) >= 1
        assert query_until(api, 'modelroad_requests_total{endpoint="/classify_text"}', process, tmp_path)
        scanned = httpx.get(f"{api}/query", params={"query": '{endpoint="/wp-admin.php"}'}, timeout=5).json()
        assert scanned["data"]["result"] == [], "the scrape config let a raw-path series through"
        # Noise is nothing like clothes: the OOD counter moves by as many images, and the rule's ratio rises.
        counted = 'modelroad_ood_answers_total{model="fashion-cnn"}'
        before = float(query_until(api, counted, process, tmp_path)[0]["value"][1])
        noise = np.random.default_rng(0).integers(0, 256, (8, 28, 28)).tolist()
        assert httpx.post(f"{server}/classify_pixels", json={"pixels": noise}, timeout=10).status_code == 200
        moved = f"{counted} >= {before + 8}"
        assert float(query_until(api, moved, process, tmp_path)[0]["value"][1]) >= before + 8
        ratio = query_until(api, 'modelroad:ood_answer_ratio:rate15m{model="fashion-cnn"} > 0', process, tmp_path)
        assert 0 < float(ratio[0]["value"][1]) <= 1
        rules = httpx.get(f"{api}/rules", timeout=5).json()["data"]["groups"]
        assert {g["name"] for g in rules} == {"modelroad.recording", "modelroad.alerts"}
        assert all(rule["health"] != "err" for g in rules for rule in g["rules"])
    finally:
        stop(process)


def query_until(api: str, query: str, process: subprocess.Popen, tmp_path: Path, timeout: float = 30) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
        if result := prometheus_query(f"{api}/query", query):
            return result
        time.sleep(0.5)
    raise AssertionError(f"Prometheus never returned {query}:\n{(tmp_path / 'prometheus.log').read_text()[-2000:]}")


def referenced_metrics() -> dict[str, set[str]]:
    """Metric names used by the rules, the Grafana dashboard, the autoscaler and its adapter rule, by file."""
    rules = yaml.safe_load((DEPLOY / "rules.yml").read_text())
    dashboard = json.loads((ROOT / "deploy/grafana/modelroad.json").read_text())
    hpa = yaml.safe_load((ROOT / "deploy/k8s/hpa.yaml").read_text())
    adapter = yaml.safe_load((ROOT / "deploy/k8s/prometheus-adapter.yaml").read_text())
    texts = {
        "rules.yml": [rule["expr"] for group in rules["groups"] for rule in group["rules"]],
        "modelroad.json": [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]],
        "hpa.yaml": [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"],
        "prometheus-adapter.yaml": [rule["seriesQuery"] for rule in adapter["rules"]],
    }
    return {name: {m for text in exprs for m in METRIC_NAME.findall(text)} for name, exprs in texts.items()}


def test_every_metric_that_deploy_refers_to_is_served(server):
    httpx.post(f"{server}/classify_text", json={"text": "a sweet baked food"}, timeout=10)
    httpx.post(f"{server}/classify_text", json={"text": ""}, timeout=10)  # an error, so the errors counter has a series
    exposition = httpx.get(f"{server}/metrics", timeout=10).text
    served = {line.split("{")[0].split(" ")[0] for line in exposition.splitlines() if line and not line.startswith("#")}
    for name, metrics in referenced_metrics().items():
        assert metrics, f"{name} refers to no metric: the pattern or the file changed"
        assert metrics <= served, f"{name} refers to metrics the service does not serve: {sorted(metrics - served)}"
