"""Servers started as child processes on loopback ports: a free port, wait until /readyz answers, stop them whole.

Used by the benchmark for every target, by the image check, and by the tests for real `bentoml serve` processes.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

PLATFORM = "services.platform:Platform"


def serve_command(port: int, service: str = PLATFORM, host: str = "127.0.0.1") -> list[str]:
    """`bentoml serve` of `service` (default: the platform) on host:port, with this interpreter's BentoML: the one
    way the benchmarks, the load tests, the fleet, `python -m training serve` and the tests start a server."""
    return [str(Path(sys.executable).with_name("bentoml")), "serve", service, "--host", host, "--port", str(port)]


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(
    process: subprocess.Popen, url: str, log_path: Path, timeout: float = 90, ready_path: str = "/readyz"
) -> None:
    """Return once `url`+`ready_path` answers 200; raise with the log's end if the process exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}{ready_path}", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"server not ready after {timeout}s:\n{log_path.read_text()[-3000:]}")


def stop(process: subprocess.Popen) -> None:
    """SIGTERM to the process group (a server's workers too), SIGKILL if it has not exited after 30 s."""
    if process.poll() is None:
        os.killpg(process.pid, 15)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait()


@contextmanager
def served(
    command: list[str],
    port: int,
    env: dict[str, str],
    log_path: Path,
    cwd: Path,
    timeout: float = 120,
    ready_path: str = "/readyz",
) -> Iterator[str]:
    """Run `command` (a server on 127.0.0.1:`port`) until the block ends; yields its URL once ready."""
    with open(log_path, "wb") as out:
        process = subprocess.Popen(
            command, cwd=cwd, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(process, url, log_path, timeout, ready_path)
        yield url
    finally:
        stop(process)
