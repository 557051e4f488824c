"""How late a 504 comes: wrk keeps `--connections` long-text batches in flight against a server whose request
timeout is `--timeout-s` (every answer a 504), while a probe times /livez.

Printed: 504 latency at the client (wrk, from the request's first byte) and at the server (its access log, from
the edge's first sight of the request, where the deadline starts), each as p50/p90/p99 and as a share of the
deadline, and /livez's p99. `python -m bench.deadline` (~30 s).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from harness.servers import free_port, served

GLOSS = "the act of putting something in working order again after it was broken or damaged "
WRK_PERCENTILE = re.compile(r"^\s+(50|90|99)%\s+([\d.]+)(us|ms|s)$", re.MULTILINE)
UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def wrk_script(body: str) -> str:
    return f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = {json.dumps(body)}\n'


def percentiles(values: list[float]) -> dict[str, float]:
    return {f"p{q}": round(float(np.percentile(values, q)), 1) for q in (50, 90, 99)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timeout-s", type=float, default=0.05)
    parser.add_argument("--connections", type=int, default=40)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--texts", type=int, default=64, help="texts per request, each of ~1,700 characters")
    args = parser.parse_args(argv)

    body = json.dumps({"texts": [GLOSS * 20] * args.texts})
    port = free_port()
    with tempfile.TemporaryDirectory() as scratch:
        log = Path(scratch) / "server.log"
        script = Path(scratch) / "post.lua"
        script.write_text(wrk_script(body))
        env = {"MODELROAD_REQUEST_TIMEOUT_S": str(args.timeout_s), "MODELROAD_ACCESS_LOG": "true"}
        command = [sys.executable, "-m", "bentoml", "serve", "services.platform:Platform", "--port", str(port)]
        with served(command, port, env, log, Path.cwd()) as server:
            url = f"{server}/classify_texts"
            stop = threading.Event()
            timer = threading.Timer(args.seconds - 1, stop.set)
            wrk = subprocess.Popen(
                ["wrk", "-t1", f"-c{args.connections}", f"-d{args.seconds}s", "--latency", "-s", str(script), url],
                stdout=subprocess.PIPE,
                text=True,
            )
            timer.start()
            livez = probe_livez(server, stop)
            output, _ = wrk.communicate(timeout=args.seconds + 30)
        at_server = [
            entry["duration_ms"]
            for line in log.read_text().splitlines()
            if line.startswith("{") and (entry := json.loads(line)).get("status") == 504
        ]
    client = {f"p{q}": round(float(v) * UNIT_MS[unit], 1) for q, v, unit in WRK_PERCENTILE.findall(output)}
    statuses = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    deadline_ms = args.timeout_s * 1000
    print(f"deadline {deadline_ms:g} ms; {args.connections} connections of {len(body) // 1024} KB text batches")
    print(f"wrk: {output.split('requests in')[0].split()[-1]} requests, {statuses.group(1) if statuses else 0} not 2xx")
    print(f"server answered {len(at_server)} with 504")
    for where, figures in (("client", client), ("server", percentiles(at_server))):
        late = ", ".join(f"{k} {v} ms ({v / deadline_ms - 1:+.0%})" for k, v in figures.items())
        print(f"504 at the {where}: {late}")
    print(f"/livez meanwhile: {len(livez)} probes, p99 {percentiles(livez)['p99']} ms")
    return 0


def probe_livez(url: str, stop: threading.Event) -> list[float]:
    """GET /livez one after another until `stop`: milliseconds of each."""
    timings = []
    with httpx.Client(timeout=10) as client:
        while not stop.is_set():
            started = time.perf_counter()
            client.get(f"{url}/livez")
            timings.append((time.perf_counter() - started) * 1e3)
    return timings


if __name__ == "__main__":
    sys.exit(main())
