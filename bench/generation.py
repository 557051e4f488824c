"""What step batching buys the generator: images/s and latency of `/generate_images` (one image a request, the
default steps and guidance) at 1 and at `--concurrency` clients, on one worker, with the denoising steps of
concurrent requests sharing ONNX Runtime calls (the default) and without (`MODELROAD_MAX_BATCH_SIZE=1`: every
call alone), side by side in one run.

Printed: a table of images/s, p50 and p99 per mode and concurrency, and each mode's gain from c=1 to c=N (the
target: at least 2.5x with step batching). `python -m bench.generation` (~1 min with 5 s a point).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from harness.servers import free_port, serve_command, served


async def load(url: str, concurrency: int, seconds: float, n: int) -> tuple[float, float, float]:
    """`concurrency` clients asking for images in a loop for `seconds`: (images/s, p50 ms, p99 ms)."""
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def client(number: int, http: httpx.AsyncClient) -> None:
        seed = number * 1_000_000
        while time.perf_counter() < stop:
            started = time.perf_counter()
            answer = await http.post("/generate_images", json={"n": n, "seed": seed, "label": "Sneaker"})
            if answer.status_code != 200:
                raise RuntimeError(f"{answer.status_code}: {answer.text}")
            latencies.append(time.perf_counter() - started)
            seed += n

    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        await http.post("/generate_images", json={"n": n})  # warm-up
        began = time.perf_counter()
        await asyncio.gather(*(client(i, http) for i in range(concurrency)))
        elapsed = time.perf_counter() - began
    cuts = statistics.quantiles(latencies, n=100)
    return len(latencies) * n / elapsed, 1000 * cuts[49], 1000 * cuts[98]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--images", type=int, default=1, help="images a request asks for")
    args = parser.parse_args(argv)
    rows, gains = [], {}
    with tempfile.TemporaryDirectory() as scratch:
        for mode, env in (("step batching", {}), ("every call alone", {"MODELROAD_MAX_BATCH_SIZE": "1"})):
            port = free_port()
            command = serve_command(port)
            env = {**env, "MODELROAD_WORKERS": "1", "MODELROAD_GRPC_PORT": "0"}
            with served(command, port, env, Path(scratch) / "server.log", Path.cwd()) as url:
                measured = {c: asyncio.run(load(url, c, args.seconds, args.images)) for c in (1, args.concurrency)}
            for concurrency, (rate, p50, p99) in measured.items():
                rows.append(f"| {mode} | {concurrency} | {rate:,.1f} | {p50:,.1f} | {p99:,.1f} |")
            gains[mode] = measured[args.concurrency][0] / measured[1][0]
    print("| mode | clients | images/s | p50 ms | p99 ms |\n|---|---:|---:|---:|---:|")
    print("\n".join(rows))
    for mode, gain in gains.items():
        print(f"{mode}: c={args.concurrency} gives {gain:.2f}x the images/s of c=1")
    return 0


if __name__ == "__main__":
    sys.exit(main())
