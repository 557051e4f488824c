"""Load-test any model that speaks the Open Inference Protocol (this platform, KServe, MLServer, Triton):
inputs from the model's own metadata, a sweep of concurrency or request rates, figures per step, a gate.

    python -m loadtests.infer http://127.0.0.1:3000 --model fashion-cnn --concurrency 1,8,32
    python -m loadtests.infer URL --model scale --shape x:3 --request-rate 50,100 --protocol binary
    python -m loadtests.infer URL --model wordnet-transformer-pipeline --slo-p99-ms 200 --max-error-ratio 0.01
    python -m loadtests.infer http://127.0.0.1:3000 --model fashion-cnn --protocol grpc --grpc 127.0.0.1:8001

The model's metadata is read over REST at URL; with --protocol grpc the requests go to --grpc (default: URL's
host, port 8001) as `ModelInfer` calls.

Exit status: 0 every step within the gate, 1 a step broke it (the reason printed), 2 nothing could be measured
(an unreachable URL, an unknown model, inputs that cannot be made). `make loadtest MODEL=NAME` runs it.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import httpx

from loadtests.engine import GrpcLoad, Load, Step, run_step
from loadtests.requests import (
    Encoded,
    RequestProblem,
    encode,
    encode_grpc,
    encoded_as_sent,
    input_specs,
    random_inputs,
    read_inputs,
)

QUANTILES = (50, 90, 95, 99)


class Unmeasurable(Exception):
    """Nothing can be measured: one line says why (exit 2)."""


def model_metadata(client: httpx.Client, model: str, version: str | None) -> dict[str, Any]:
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "")
    try:
        answer = client.get(path)
    except httpx.HTTPError as exc:
        raise Unmeasurable(f"{client.base_url} cannot be reached: {exc}") from None
    if answer.status_code != 200:
        raise Unmeasurable(f"{client.base_url}{path} answered {answer.status_code}: {answer.text[:200]}")
    return answer.json()


def server_times(client: httpx.Client, model: str, version: str | None = None) -> dict[str, float] | None:
    """The server's queue and compute figures for `model` from Triton's statistics extension (this platform's,
    Triton's; a pipeline's are its graph's), summed over its versions: counts and ns. None: the server has none."""
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/stats"
    try:
        answer = client.get(path)
        stats = answer.json()["model_stats"] if answer.status_code == 200 else None
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None
    found: dict[str, float] = {}
    for entry in stats or ():
        for kind in ("queue", "compute_infer"):
            duration = entry.get("inference_stats", {}).get(kind, {})
            for part in ("count", "ns"):
                found[f"{kind}_{part}"] = found.get(f"{kind}_{part}", 0) + float(duration.get(part, 0))
    return found or None


@dataclass
class Row:
    """A step as reported."""

    step: Step
    server: dict[str, float | None]

    def as_dict(self) -> dict[str, Any]:
        s = self.step
        return {
            "load": s.load,
            "concurrency": s.concurrency,
            "request_rate": s.rate,
            "requests_per_s": round(s.requests_per_s, 1),
            "inferences_per_s": round(s.inferences_per_s, 1),
            **{f"p{q}_ms": round(s.latency_ms(q), 2) for q in QUANTILES},
            "error_ratio": round(s.error_ratio, 4),
            "statuses": s.statuses,
            "stable": s.stable,
            "client_cpu": round(s.client_cpu, 2),
            "not_sent": s.not_sent,
            **{k: (round(v, 3) if v is not None else None) for k, v in self.server.items()},
        }


def server_delta(before: dict[str, float] | None, after: dict[str, float] | None) -> dict[str, float | None]:
    """Mean server-side queue wait and compute time over the step, in ms (None: the server has no statistics)."""

    def mean(kind: str) -> float | None:
        if not before or not after or f"{kind}_count" not in after:
            return None
        count = after[f"{kind}_count"] - before.get(f"{kind}_count", 0)
        return (after[f"{kind}_ns"] - before.get(f"{kind}_ns", 0)) / count / 1e6 if count else None

    return {"server_queue_ms": mean("queue"), "server_compute_ms": mean("compute_infer")}


def table(rows: Sequence[Row]) -> str:
    columns = ["load", "req/s", "infer/s", *(f"p{q} ms" for q in QUANTILES), "errors"]
    columns += ["server queue ms", "server compute ms", "client CPU"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        d = row.as_dict()
        errors = ", ".join(f"{k}: {v}" for k, v in d["statuses"].items() if k != "200") or "0"
        server = [f"{d[k]:.2f}" if d[k] is not None else "–" for k in ("server_queue_ms", "server_compute_ms")]
        cells = [d["load"] + ("" if d["stable"] else " (unstable)"), f"{d['requests_per_s']:.0f}"]
        cells += [f"{d['inferences_per_s']:.0f}", *(f"{d[f'p{q}_ms']:.1f}" for q in QUANTILES), errors]
        cells += [*server, f"{d['client_cpu']:.0%}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: Sequence[Row], model: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    throughput = [r.step.requests_per_s for r in rows]
    for q, style in ((50, "o-"), (99, "s--")):
        axes.plot(throughput, [r.step.latency_ms(q) for r in rows], style, label=f"p{q}")
    for r in rows:
        axes.annotate(r.step.load, (r.step.requests_per_s, r.step.latency_ms(99)), fontsize=7)
    axes.set(xlabel="requests/s", ylabel="latency (ms)", title=f"{model}: latency against throughput")
    axes.legend()
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def gate(rows: Sequence[Row], slo_p99_ms: float | None, max_error_ratio: float | None) -> list[str]:
    broken = []
    for row in rows:
        step = row.step
        if slo_p99_ms is not None and not step.latency_ms(99) <= slo_p99_ms:
            broken.append(f"{step.load}: p99 {step.latency_ms(99):.1f} ms is over --slo-p99-ms {slo_p99_ms:g}")
        if max_error_ratio is not None and step.error_ratio > max_error_ratio:
            broken.append(f"{step.load}: {step.error_ratio:.1%} errors is over --max-error-ratio {max_error_ratio:g}")
    return broken


def encoded(args: argparse.Namespace, inputs: dict[str, Any]) -> Encoded:
    if args.protocol == "grpc":
        return encode_grpc(inputs, args.model, args.version)
    return encode(inputs, args.protocol == "binary")


def requests_for(args: argparse.Namespace, metadata: dict[str, Any]) -> list[Encoded]:
    if args.inputs:
        read = read_inputs(args.inputs)
        if read and isinstance(read[0], bytes):
            if args.protocol == "grpc":
                raise RequestProblem("--protocol grpc takes --inputs as an .npz of named arrays, not JSON requests")
            return [encoded_as_sent(body) for body in read]
        return [encoded(args, inputs) for inputs in read]
    shapes = {}
    for given in args.shape:
        name, _, dims = given.partition(":")
        try:
            shapes[name] = tuple(int(d) for d in dims.split("x"))
        except ValueError:
            raise RequestProblem(f"--shape {given!r}: write name:AxBxC, e.g. x:1x28x28") from None
    specs = input_specs(metadata, args.input)
    sets = random_inputs(specs, args.batch, shapes, args.seed, args.string, count=16)
    return [encoded(args, inputs) for inputs in sets]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.infer", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("url")
    parser.add_argument("--model", required=True)
    parser.add_argument("--version")
    parser.add_argument(
        "--protocol",
        choices=("json", "binary", "grpc"),
        default="json",
        help="OIP REST with JSON tensors or Triton's binary extension, or OIP gRPC (raw tensors)",
    )
    parser.add_argument("--grpc", help="the gRPC address for --protocol grpc (default: URL's host, port 8001)")
    parser.add_argument("--shape", action="append", default=[], help="a dynamic input's shape, name:AxB (repeatable)")
    parser.add_argument(
        "--input", action="append", default=[], help="send only these inputs (a pipeline taking one of several)"
    )
    parser.add_argument("--string", action="append", default=[], help="BYTES values to send instead of random phrases")
    parser.add_argument(
        "--inputs", type=Path, help="real inputs: an .npz of named arrays, or a JSON file of OIP requests"
    )
    parser.add_argument("--batch", type=int, default=1, help="rows per request (the batch axis)")
    parser.add_argument("--concurrency", default=None, help="closed loop: connections per step, e.g. 1,2,4,8,16,32")
    parser.add_argument(
        "--request-rate", default=None, help="open loop: Poisson arrivals per second per step, e.g. 50,100"
    )
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds discarded at the start of each step")
    parser.add_argument("--window", type=float, default=2.0, help="seconds per measurement window")
    parser.add_argument("--max-seconds", type=float, default=20.0, help="a step ends here, stable or not")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds before a request counts as a failure")
    parser.add_argument("--header", action="append", default=[], help="an extra header, Name: value (repeatable)")
    parser.add_argument("--slo-p99-ms", type=float)
    parser.add_argument("--max-error-ratio", type=float)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="folder for steps.csv, steps.json and curve.png")
    args = parser.parse_args(argv)
    if args.concurrency and args.request_rate:
        parser.error("give --concurrency or --request-rate, not both")
    return args


def loads(args: argparse.Namespace) -> list[tuple[int | None, float | None]]:
    try:
        if args.request_rate:
            return [(None, float(r)) for r in args.request_rate.split(",")]
        return [(int(c), None) for c in (args.concurrency or "1,2,4,8,16,32").split(",")]
    except ValueError:
        raise RequestProblem("--concurrency takes whole numbers and --request-rate numbers, comma-separated") from None


def headers_from(args: argparse.Namespace) -> dict[str, str]:
    headers = {}
    if key := os.environ.get("MODELROAD_API_KEY"):
        headers["Authorization"] = f"Bearer {key}"
    for given in args.header:
        name, sep, value = given.partition(":")
        if not sep:
            raise RequestProblem(f"--header {given!r}: write Name: value")
        headers[name.strip()] = value.strip()
    return headers


def loaded(args: argparse.Namespace, client: httpx.Client, requests: list[Encoded], headers: dict[str, str]) -> Load:
    """The load to send, once a first request of it was answered."""
    if args.protocol == "grpc":
        address = args.grpc or f"{httpx.URL(args.url).host}:8001"
        load = GrpcLoad(address, requests, headers)
        with grpc.insecure_channel(address) as channel:
            try:
                channel.unary_unary(GrpcLoad.METHOD)(requests[0].body, metadata=load.metadata, timeout=30)
            except grpc.RpcError as refused:
                raise Unmeasurable(
                    f"a first gRPC call to {address} failed ({refused.code().name}): {refused.details()}"
                ) from None
        return load
    path = f"/v2/models/{args.model}" + (f"/versions/{args.version}" if args.version else "") + "/infer"
    probe = client.post(path, content=requests[0].body, headers=requests[0].headers)
    if probe.status_code != 200:
        raise Unmeasurable(f"a first request was refused ({probe.status_code}): {probe.text[:300]}")
    return Load(f"{args.url.rstrip('/')}{path}", requests, headers)


def measure(args: argparse.Namespace) -> list[Row]:
    headers = headers_from(args)
    with httpx.Client(base_url=args.url.rstrip("/"), headers=headers, timeout=30) as client:
        metadata = model_metadata(client, args.model, args.version)
        requests = requests_for(args, metadata)
        load = loaded(args, client, requests, headers)
        rows: list[Row] = []
        print(table(rows), flush=True)
        for concurrency, rate in loads(args):
            before = server_times(client, args.model, args.version)
            # Open loop: windows of at least ~300 arrivals, so that Poisson noise (±6%) lets three agree within 10%.
            window = max(args.window, 300 / rate) if rate else args.window
            step = asyncio.run(run_step(load, concurrency, rate, args.warmup, window, args.max_seconds, args.timeout))
            rows.append(Row(step, server_delta(before, server_times(client, args.model, args.version))))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        rows = measure(args)
    except (Unmeasurable, RequestProblem) as exc:
        print(f"loadtests.infer: {exc}", file=sys.stderr)
        return 2
    out = args.out or Path("results") / "infer" / f"{args.model}-{datetime.now(UTC):%Y%m%dT%H%M%S}"
    out.mkdir(parents=True, exist_ok=True)
    records = [row.as_dict() for row in rows]
    (out / "steps.json").write_text(
        json.dumps({"url": args.url, "model": args.model, "protocol": args.protocol, "steps": records}, indent=2)
    )
    with open(out / "steps.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=[k for k in records[0] if k != "statuses"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)
    plot(rows, args.model, out / "curve.png")
    busy = [r.step.load for r in rows if r.step.client_cpu >= 0.9]
    if busy:
        print(f"the client used a whole core at {', '.join(busy)}: there the client, not the server, is the bottleneck")
    print(f"written: {out}/steps.csv, steps.json, curve.png")
    if broken := gate(rows, args.slo_p99_ms, args.max_error_ratio):
        print("gate failed:\n  " + "\n  ".join(broken))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
