"""Which load engine costs the client less: Locust's FastHttpUser or loadtests.engine's asyncio loop, the same
infer request at the same concurrency against one server, one after the other.

    python -m loadtests.engines http://127.0.0.1:3000 --model fashion-cnn --concurrency 32 --seconds 10

Prints each engine's requests/s, p50/p99 and client CPU (seconds of CPU per 1,000 requests: what the client
takes from a machine it shares with the server).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from loadtests.engine import Load, run_step
from loadtests.infer import model_metadata
from loadtests.requests import Encoded, encode, input_specs, random_inputs

LOCUSTFILE = """
import os
from pathlib import Path

from locust import constant, task
from locust.contrib.fasthttp import FastHttpUser

BODY = Path(os.environ["ENGINE_BODY"]).read_bytes()


class Infer(FastHttpUser):
    wait_time = constant(0)

    @task
    def infer(self):
        self.client.post(os.environ["ENGINE_PATH"], data=BODY, headers={"Content-Type": "application/json"})
"""


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def locust(url: str, path: str, body: bytes, concurrency: int, seconds: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "locustfile.py").write_text(LOCUSTFILE)
        (Path(folder) / "body").write_bytes(body)
        env = {**os.environ, "ENGINE_BODY": f"{folder}/body", "ENGINE_PATH": path}
        command = [sys.executable, "-m", "locust", "-f", f"{folder}/locustfile.py", "--headless", "--host", url]
        command += ["-u", str(concurrency), "-r", str(concurrency), "-t", f"{seconds}s", "--csv", f"{folder}/run"]
        cpu = children_cpu()
        subprocess.run(command, env=env, capture_output=True, check=True, timeout=seconds + 60)
        cpu = children_cpu() - cpu
        with open(f"{folder}/run_stats.csv") as file:
            total = next(row for row in csv.DictReader(file) if row["Name"] == "Aggregated")
    requests = float(total["Request Count"])
    return {
        "requests_per_s": float(total["Requests/s"]),
        "p50_ms": float(total["50%"]),
        "p99_ms": float(total["99%"]),
        "cpu_s_per_1000": cpu / requests * 1000,
    }


def asyncio_loop(url: str, path: str, body: bytes, concurrency: int, seconds: int) -> dict[str, float]:
    load = Load(f"{url}{path}", [Encoded(body, {"Content-Type": "application/json"}, 1)], {})
    cpu = time.process_time()
    step = asyncio.run(run_step(load, concurrency, None, 1.0, seconds - 1.0, seconds, 30.0))
    cpu = time.process_time() - cpu
    return {
        "requests_per_s": step.requests_per_s,
        "p50_ms": step.latency_ms(50),
        "p99_ms": step.latency_ms(99),
        "cpu_s_per_1000": cpu / max(1, len(step.answered)) * 1000,
    }


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.engines", description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("--model", default="fashion-cnn")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    url = args.url.rstrip("/")
    with httpx.Client(base_url=url, timeout=30) as client:
        metadata = model_metadata(client, args.model, None)
    (inputs,) = random_inputs(input_specs(metadata), 1, {}, 0, (), count=1)
    body, path = encode(inputs, binary=False).body, f"/v2/models/{args.model}/infer"
    print("| engine | req/s | p50 ms | p99 ms | client CPU s per 1,000 requests |\n|---|---|---|---|---|")
    for name, engine in (("Locust FastHttpUser", locust), ("asyncio + aiohttp", asyncio_loop)):
        r = engine(url, path, body, args.concurrency, args.seconds)
        figures = f"{r['requests_per_s']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['cpu_s_per_1000']:.2f}"
        print(f"| {name} | {figures} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
