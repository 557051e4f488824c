"""The generators side by side: images/s and latency of `/generate_images` (one image a request, the default
steps and guidance) for the diffusion model and the GAN, at 1 and at `--concurrency` clients, on one worker, with
concurrent requests' calls sharing ONNX Runtime calls (the default: the diffusion model's denoising steps, the
GAN's generator calls) and without (`MODELROAD_MAX_BATCH_SIZE=1`: every call alone), in one run.

Printed: a table of images/s, p50 and p99 per generator, mode and concurrency; each one's gain from c=1 to c=N
(the target for the diffusion model: at least 2.5x with step batching) and the GAN's images/s over the diffusion
model's. `python -m bench.generation` (~2 min with 5 s a point).
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


async def load(url: str, model: str, concurrency: int, seconds: float, n: int) -> tuple[float, float, float]:
    """`concurrency` clients asking `model` for images in a loop for `seconds`: (images/s, p50 ms, p99 ms)."""
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def client(number: int, http: httpx.AsyncClient) -> None:
        seed = number * 1_000_000
        while time.perf_counter() < stop:
            started = time.perf_counter()
            body = {"model": model, "n": n, "seed": seed, "label": "Sneaker"}
            answer = await http.post("/generate_images", json=body)
            if answer.status_code != 200:
                raise RuntimeError(f"{answer.status_code}: {answer.text}")
            latencies.append(time.perf_counter() - started)
            seed += n

    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        await http.post("/generate_images", json={"model": model, "n": n, "label": "Sneaker"})  # warm-up
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
    parser.add_argument("--models", nargs="+", default=["fashion-diffusion", "fashion-gan"], help="generators")
    args = parser.parse_args(argv)
    rows, rates = [], {}
    with tempfile.TemporaryDirectory() as scratch:
        for mode, env in (("step batching", {}), ("every call alone", {"MODELROAD_MAX_BATCH_SIZE": "1"})):
            port = free_port()
            command = serve_command(port)
            env = {**env, "MODELROAD_WORKERS": "1", "MODELROAD_GRPC_PORT": "0"}
            with served(command, port, env, Path(scratch) / "server.log", Path.cwd()) as url:
                for model in args.models:
                    for c in (1, args.concurrency):
                        rate, p50, p99 = asyncio.run(load(url, model, c, args.seconds, args.images))
                        rates[model, mode, c] = rate
                        rows.append(f"| {model} | {mode} | {c} | {rate:,.1f} | {p50:,.1f} | {p99:,.1f} |")
    print("| generator | mode | clients | images/s | p50 ms | p99 ms |\n|---|---|---:|---:|---:|---:|")
    print("\n".join(rows))
    modes = dict.fromkeys(mode for _, mode, _ in rates)
    for model in args.models:
        for mode in modes:
            gain = rates[model, mode, args.concurrency] / rates[model, mode, 1]
            print(f"{model}, {mode}: c={args.concurrency} gives {gain:.2f}x the images/s of c=1")
    first, *others = args.models
    for model in others:
        for mode in modes:
            ratio = {c: rates[model, mode, c] / rates[first, mode, c] for c in (1, args.concurrency)}
            ratios = ", ".join(f"c={c} {r:.1f}x" for c, r in ratio.items())
            print(f"{model} over {first}, {mode}: {ratios}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
