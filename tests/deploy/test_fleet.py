"""`deploy.fleet`'s HAProxy and Prometheus configurations, checked by the programs themselves (`haproxy -c`,
`promtool check config`); the fleet running under traffic is tests/integration/test_fleet.py."""

import shutil
import subprocess

import pytest

from deploy.fleet import RULES, FleetConfig, haproxy_config, main, prometheus_config


def test_the_balancer_checks_readiness_retries_elsewhere_and_its_config_is_valid(tmp_path):
    haproxy = shutil.which("haproxy") or pytest.skip("haproxy not installed (scripts/setup.sh installs it as root)")
    text = haproxy_config(FleetConfig(port=3100), [4001, 4002, 4003])
    assert "option httpchk GET /readyz" in text and "retry-on conn-failure empty-response 503" in text
    assert "option http-buffer-request" in text and text.count(" check\n") == 3
    (tmp_path / "haproxy.cfg").write_text(text)
    checked = subprocess.run([haproxy, "-c", "-f", str(tmp_path / "haproxy.cfg")], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_prometheus_scrapes_every_replica_with_the_platforms_rules(tmp_path):
    promtool = shutil.which("promtool") or pytest.skip("promtool not installed (Debian package prometheus)")
    shutil.copy(RULES, tmp_path / "rules.yml")
    text = prometheus_config(FleetConfig(scrape_interval_s=1), [4001, 4002], tmp_path / "rules.yml")
    assert '"127.0.0.1:4001", "127.0.0.1:4002"' in text
    (tmp_path / "prometheus.yml").write_text(text)
    checked = subprocess.run(
        [promtool, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_command_refuses_an_empty_fleet(capsys):
    assert main(["--replicas", "0"]) == 2 and "at least 1" in capsys.readouterr().err
