"""A fleet on one machine: N `bentoml serve` replicas on one model store behind HAProxy, a real Prometheus
scraping every replica. Any replica is the fleet's admin: what is served and every version policy is the fleet's
state beside the store (services/dataplane/desired.py), which every replica follows.

    python -m deploy.fleet [--replicas 3] [--port 3000] [--prometheus-port 9090] [--workers 1]

It prints the URLs and runs until Ctrl-C, then stops everything. The admin token is MODELROAD_ADMIN_TOKEN (one
is made and printed when it is unset); every other MODELROAD_* setting reaches the replicas as it is. The store
is BENTOML_HOME's (train the default models first: `make train TASKS="fashion-cnn co2-lstm ..."` or `make serve`).

HAProxy checks each replica's /readyz every second (down after 2 failures, up after 1 success), retries on
another replica a request whose connection failed, whose replica closed it unanswered or answered 503 (`retry-on`,
`option redispatch`), and names the replica that answered in `X-Replica`.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from harness.servers import free_port, serve_command, stop, wait_ready

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
REPLICA_HEADER = "X-Replica"


@dataclass(frozen=True)
class FleetConfig:
    replicas: int = 3  # started at once
    slots: int = 0  # replicas HAProxy knows (down until started): more than `replicas` lets the fleet grow
    port: int = 3000  # HAProxy's, on 127.0.0.1
    prometheus_port: int = 9090
    workers: int = 1  # per replica
    scrape_interval_s: float = 5.0
    store: Path = field(default_factory=lambda: Path(os.environ.get("BENTOML_HOME") or Path.home() / "bentoml"))
    admin_token: str = ""
    env: dict[str, str] = field(default_factory=dict)  # more settings for every replica

    @property
    def servers(self) -> int:
        return max(self.replicas, self.slots)


def haproxy_config(config: FleetConfig, ports: list[int]) -> str:
    servers = "\n".join(f"  server replica-{i + 1} 127.0.0.1:{port} check" for i, port in enumerate(ports))
    return f"""global
  maxconn 4096
defaults
  mode http
  timeout connect 2s
  timeout client 60s
  timeout server 60s
  timeout http-request 10s
  # A request whose connection failed, whose replica closed it unanswered (killed) or answered 503 (draining
  # after SIGTERM, or full) goes to another one: predictions have no side effect, admin changes are
  # compare-and-set.
  # A retry resends the request from HAProxy's buffer: it must be there whole before it is sent.
  option http-buffer-request
  retries 3
  option redispatch 1
  retry-on conn-failure empty-response 503 0rtt-rejected
frontend modelroad
  bind 127.0.0.1:{config.port}
  default_backend replicas
backend replicas
  balance roundrobin
  option httpchk GET /readyz
  http-check expect status 200
  default-server inter 1s fall 2 rise 1
  http-response set-header {REPLICA_HEADER} %[srv_name]
{servers}
"""


def prometheus_config(config: FleetConfig, ports: list[int], rules: Path) -> str:
    targets = ", ".join(f'"127.0.0.1:{port}"' for port in ports)
    return f"""global:
  scrape_interval: {config.scrape_interval_s:g}s
  evaluation_interval: {config.scrape_interval_s:g}s
rule_files: ["{rules}"]
scrape_configs:
  - job_name: modelroad
    static_configs:
      - targets: [{targets}]
"""


class Fleet:
    """The fleet's processes: replicas (by number, from 1), HAProxy and Prometheus, in a folder of their own."""

    def __init__(self, config: FleetConfig, folder: Path):
        self.config, self.folder = config, folder
        self.ports = [free_port() for _ in range(config.servers)]
        self.processes: dict[int, subprocess.Popen] = {}
        self.url = f"http://127.0.0.1:{config.port}"
        self.prometheus_url = f"http://127.0.0.1:{config.prometheus_port}"

    def replica_url(self, number: int) -> str:
        return f"http://127.0.0.1:{self.ports[number - 1]}"

    def start_replica(self, number: int, wait: bool = True, timeout: float = 240) -> None:
        """Replica `number` on its port: a BentoML home of its own (its metrics) sharing the store and its state."""
        home = self.folder / f"replica-{number}"
        home.mkdir(exist_ok=True)
        if not (home / "models").exists():
            (home / "models").symlink_to(self.config.store / "models")
        env = {
            **os.environ,
            "BENTOML_HOME": str(home),
            "BENTOML_DO_NOT_TRACK": "true",
            "MODELROAD_FLEET_STATE": str(self.config.store / "fleet"),
            "MODELROAD_REPLICA": f"replica-{number}",
            "MODELROAD_ADMIN_TOKEN": self.config.admin_token,
            "MODELROAD_WORKERS": str(self.config.workers),
            "MODELROAD_GRPC_PORT": "0",
            **self.config.env,
        }
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # each replica keeps its own under its home
        log_path = self.folder / f"replica-{number}.log"
        command = serve_command(self.ports[number - 1])
        with open(log_path, "ab") as out:
            process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.processes[number] = process
        if wait:
            wait_ready(process, self.replica_url(number), log_path, timeout)

    def wait_replicas(self, timeout: float = 240) -> None:
        for number, process in self.processes.items():
            wait_ready(process, self.replica_url(number), self.folder / f"replica-{number}.log", timeout)

    def signal_replica(self, number: int, signum: int) -> None:
        """SIGTERM (a drain) or SIGKILL (a crash) to a replica's every process."""
        process = self.processes.pop(number)
        os.killpg(process.pid, signum)
        process.wait(60)

    def start_balancer(self) -> subprocess.Popen:
        config = self.folder / "haproxy.cfg"
        config.write_text(haproxy_config(self.config, self.ports))
        haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
        log_path = self.folder / "haproxy.log"
        with open(log_path, "wb") as out:
            process = subprocess.Popen(
                [haproxy, "-db", "-f", str(config)], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        wait_ready(process, self.url, log_path, timeout=60)
        return process

    def start_prometheus(self) -> subprocess.Popen:
        rules = self.folder / "rules.yml"
        shutil.copy(RULES, rules)
        config = self.folder / "prometheus.yml"
        config.write_text(prometheus_config(self.config, self.ports, rules))
        log_path = self.folder / "prometheus.log"
        command = [
            shutil.which("prometheus") or "/usr/bin/prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={self.folder / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{self.config.prometheus_port}",
        ]
        with open(log_path, "wb") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        wait_ready(process, self.prometheus_url, log_path, timeout=60, ready_path="/-/ready")
        return process


@contextmanager
def running(config: FleetConfig, folder: Path | None = None) -> Iterator[Fleet]:
    """The fleet until the block ends: replicas started side by side and ready, then HAProxy and Prometheus."""
    folder = folder or Path(tempfile.mkdtemp(prefix="modelroad-fleet-"))
    folder.mkdir(parents=True, exist_ok=True)
    fleet = Fleet(config, folder)
    with ExitStack() as stack:
        for number in range(1, config.replicas + 1):
            fleet.start_replica(number, wait=False)
        stack.callback(lambda: [stop(process) for process in list(fleet.processes.values())])
        fleet.wait_replicas()
        stack.callback(stop, fleet.start_balancer())
        stack.callback(stop, fleet.start_prometheus())
        yield fleet


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.fleet", description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, default=FleetConfig.replicas)
    parser.add_argument("--port", type=int, default=FleetConfig.port, help="HAProxy's port on 127.0.0.1")
    parser.add_argument("--prometheus-port", type=int, default=FleetConfig.prometheus_port)
    parser.add_argument("--workers", type=int, default=FleetConfig.workers, help="API workers per replica")
    parser.add_argument("--scrape-interval", type=float, default=FleetConfig.scrape_interval_s, help="seconds")
    args = parser.parse_args(argv)
    if args.replicas < 1 or args.workers < 1:
        print("--replicas and --workers must be at least 1", file=sys.stderr)
        return 2
    token = os.environ.get("MODELROAD_ADMIN_TOKEN") or secrets.token_urlsafe(24)
    config = FleetConfig(
        replicas=args.replicas,
        port=args.port,
        prometheus_port=args.prometheus_port,
        workers=args.workers,
        scrape_interval_s=args.scrape_interval,
        admin_token=token,
    )
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    print(f"starting {args.replicas} replicas on the store in {config.store} ...", flush=True)
    try:
        with running(config) as fleet:
            print(f"fleet:      {fleet.url}  (HAProxy; X-Replica names the replica that answered)")
            for number in fleet.processes:
                print(f"replica {number}:  {fleet.replica_url(number)}")
            print(f"prometheus: {fleet.prometheus_url}")
            print(f"admin token: {token if 'MODELROAD_ADMIN_TOKEN' not in os.environ else '(MODELROAD_ADMIN_TOKEN)'}")
            print(f"logs:       {fleet.folder}\nCtrl-C stops the fleet.", flush=True)
            while not stopping:
                time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    except RuntimeError as failed:  # a replica that did not start: its log's end
        print(f"the fleet did not start: {failed}", file=sys.stderr)
        return 1
    print("fleet stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
