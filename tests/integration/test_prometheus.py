"""A real Prometheus server (Debian `prometheus`) scraping the served platform with the project's config."""
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.integration.conftest import ROOT, free_port, stop

pytestmark = pytest.mark.slow
DEPLOY = ROOT / "deploy" / "prometheus"
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
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["scrape_configs"][0]["static_configs"] = [{"targets": [server.removeprefix("http://")]}]
    config["rule_files"] = [str(DEPLOY / "rules.yml")]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    process = subprocess.Popen(
        ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=open(tmp_path / "prometheus.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True,  # noqa: SIM115
    )  # fmt: skip
    api = f"http://127.0.0.1:{port}/api/v1"
    try:
        info = query_until(api, 'modelroad_model_info{model="wordnet-transformer"}', process, tmp_path)
        assert info[0]["metric"]["device"] == "cpu" and info[0]["metric"]["job"] == "modelroad"
        predictions = query_until(api, 'modelroad_predictions_total{model="wordnet-transformer"}', process, tmp_path)
        assert sum(float(r["value"][1]) for r in predictions) >= 1
        rules = httpx.get(f"{api}/rules", timeout=5).json()["data"]["groups"]
        assert {g["name"] for g in rules} == {"modelroad.recording", "modelroad.alerts"}
        assert all(rule["health"] != "err" for g in rules for rule in g["rules"])
    finally:
        stop(process)


def query_until(api: str, query: str, process: subprocess.Popen, tmp_path: Path, timeout: float = 30) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
        try:
            result = httpx.get(f"{api}/query", params={"query": query}, timeout=2).json()["data"]["result"]
            if result:
                return result
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"Prometheus never returned {query}:\n{(tmp_path / 'prometheus.log').read_text()[-2000:]}")
