"""How late a 504 comes: wrk keeps `--connections` long-text batches in flight against a server whose request
timeout is `--timeout-s` (every answer a 504), while a probe times /livez.

Printed: 504 latency at the client (wrk, from the request's first byte) and at the server (its access log, from
the edge's first sight of the request, where the deadline starts), each as p50/p90/p99 and as a share of the
deadline, and /livez's p99. `python -m bench.deadline` (~30 s).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from bench.run import Request, run_wrk
from harness.servers import free_port, serve_command, served

GLOSS = "the act of putting something in working order again after it was broken or damaged "


def percentiles(values: list[float]) -> dict[str, float]:
    return {str(q): round(float(np.percentile(values, q)), 1) for q in (50, 90, 99)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timeout-s", type=float, default=0.05)
    parser.add_argument("--connections", type=int, default=40)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--texts", type=int, default=64, help="texts per request, each of ~1,700 characters")
    args = parser.parse_args(argv)

    request = Request("/classify_texts", "application/json", json.dumps({"texts": [GLOSS * 20] * args.texts}).encode())
    port = free_port()
    with tempfile.TemporaryDirectory() as scratch:
        log = Path(scratch) / "server.log"
        env = {"MODELROAD_REQUEST_TIMEOUT_S": str(args.timeout_s), "MODELROAD_ACCESS_LOG": "true"}
        command = serve_command(port)
        with served(command, port, env, log, Path.cwd()) as server, ThreadPoolExecutor(1) as pool:
            wrk = pool.submit(run_wrk, server, request, args.connections, args.seconds, Path(scratch))
            stop = threading.Event()
            threading.Timer(args.seconds - 1, stop.set).start()
            livez = probe_livez(server, stop)
            _, client, not_2xx = wrk.result()
        at_server = [
            entry["duration_ms"]
            for line in log.read_text().splitlines()
            if line.startswith("{") and (entry := json.loads(line)).get("status") == 504
        ]
    deadline_ms = args.timeout_s * 1000
    print(f"deadline {deadline_ms:g} ms; {args.connections} connections of {len(request.body) // 1024} KB text batches")
    print(f"wrk: {not_2xx} answers not 2xx (or socket errors); server answered {len(at_server)} with 504")
    for where, figures in (("client", client), ("server", percentiles(at_server))):
        late = ", ".join(f"p{q} {figures[q]:.1f} ms ({figures[q] / deadline_ms - 1:+.0%})" for q in ("50", "90", "99"))
        print(f"504 at the {where}: {late}")
    print(f"/livez meanwhile: {len(livez)} probes, p99 {percentiles(livez)['99']} ms")
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
