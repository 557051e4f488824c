"""wrk against the platform and its floors, per family and concurrency, side by side in one run.

    .venv/bin/python -m bench                                 # results/bench/bench.{json,md,png}
    .venv/bin/python -m bench --families text --concurrency 32 --duration 5

Targets (served one after another on this machine, BentoML ones with `--workers` workers):
- `platform`: `bentoml serve services.platform:Platform`, the product;
- `platform-unbatched`: the same with MODELROAD_MAX_BATCH_SIZE=1 (adaptive batching off);
- `platform-runner-service`: the same with the models in a runner service of their own
  (services/runner_service.py, one process) that the API workers call with their batches: the GPU
  layout, measured here on CPU for what the hop costs;
- `bentoml-noop`: a default BentoML `@bentoml.api` service answering the same shapes without inference;
- `bentoml-mounted`: the bare Starlette app below mounted in a BentoML service as the platform mounts its own
  app: what BentoML's ASGI stack alone leaves of the HTTP floor (the platform's ceiling);
- `starlette`: a bare Starlette app on uvicorn, one process, answering the same shapes (the HTTP floor);
- `ort`: ONNX Runtime in-process on one preprocessed item per call (the compute limit; no HTTP);
- `torch-eager`: the same items through the same trained nets in PyTorch eager, in-process, with
  as many threads as a worker's ONNX Runtime session (the engine ONNX Runtime replaces);
- `fastapi-torch`, `ray-serve`: the peers (bench/peers), the same models in PyTorch eager behind
  FastAPI, and in Ray Serve with `@serve.batch` and ONNX Runtime; in .venv-peers, built on first use;
- `kserve`, `mlserver`: the Open Inference Protocol peers, KServe's Python ModelServer and MLServer with a
  custom runtime, serving the CNN's ONNX file with ONNX Runtime (in .venv-kserve and .venv-mlserver);
  they answer the `oip-json` and `oip-binary` families (the CNN's raw tensors by the protocol, in JSON and
  in Triton's binary form; MLServer has no binary form) and `grpc` (the same tensors by the protocol's gRPC,
  raw contents, sent by loadtests' asyncio gRPC loop since wrk speaks no gRPC; its CPU share is printed),
  which the platform answers too;
- `platform-overload`: the product admitting the sustainable concurrency (the ratio concurrency, 32) and
  no more (MODELROAD_MAX_IN_FLIGHT), under `--overload-factor` (4) times that many connections: answers
  counted by status, refusals and admitted requests timed apart by a probe (bench/overload.py).
wrk runs on the same cores as the server, as a client on this machine would; each point is the
median of `--rounds` wrk runs (see `median_run`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.overload import Overload, run_overload
from bench.peers import ensure_venv, venv
from bench.peers.families import FAMILIES, SPEC_ENV, Inputs, ModelFiles, model_files, write_spec
from harness.servers import free_port, serve_command, served
from loadtests.engine import GrpcLoad, run_step
from loadtests.requests import encode_grpc
from services.settings import ServeSettings

ROOT = Path(__file__).resolve().parents[1]
PAYLOADS = ROOT / "loadtests" / "payloads"  # the load tests' real requests
BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Request:
    route: str
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


def family_requests() -> dict[str, Request]:
    """One realistic request per family, from the load-test payloads."""
    image = (PAYLOADS / "images" / "ankle-boot-0.png").read_bytes()
    boundary = "modelroadbench"
    multipart = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="boot.png"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + image
        + f"\r\n--{boundary}--\r\n".encode()
    )
    text = json.loads((PAYLOADS / "texts.json").read_text())[10]
    return {
        "image": Request("/classify_image", f"multipart/form-data; boundary={boundary}", multipart),
        "forecast": Request("/forecast", "application/json", (PAYLOADS / "forecast_example.json").read_bytes()),
        "text": Request("/classify_text", "application/json", json.dumps({"text": text}).encode()),
    }


@dataclass
class Result:
    target: str
    family: str
    concurrency: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    errors: int  # non-2xx answers plus socket errors


UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}


def parse_wrk(output: str) -> tuple[float, dict[str, float], int]:
    """Requests/sec, latency percentiles in ms (50/75/90/99) and errors from `wrk --latency` output."""
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    percentiles = {
        p: round(float(v) * UNITS_MS[u], 3)
        for p, v, u in re.findall(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s|m)\s*$", output, re.MULTILINE)
    }
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", output))
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    errors += sum(int(n) for n in socket.groups()) if socket else 0
    return rps, percentiles, errors


def median_run(runs: list[tuple[float, dict, int]]) -> tuple[float, dict, int]:
    """The run with the median requests/s, with its latencies; the errors of every run.

    Each wrk run opens its connections anew, and how the kernel spreads them over the workers (one
    shared listening socket) differs from run to run: 1/31 here gave ~20% fewer requests/s than an even spread.
    """
    rps, percentiles, _ = sorted(runs, key=lambda run: run[0])[len(runs) // 2]
    return rps, percentiles, sum(run[2] for run in runs)


def wrk_script(request: Request, workdir: Path) -> Path:
    """A wrk Lua script that POSTs `request`."""
    script = workdir / "request.lua"
    body_file = workdir / "body.bin"
    body_file.write_bytes(request.body)
    # A server with MODELROAD_API_KEYS_FILE needs a key: wrk sends MODELROAD_API_KEY when it is set.
    key = (("Authorization", f"Bearer {os.environ['MODELROAD_API_KEY']}"),) if "MODELROAD_API_KEY" in os.environ else ()
    pairs = (("Content-Type", request.content_type), *request.headers, *key)
    headers = "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in pairs)
    script.write_text(
        f'wrk.method = "POST"\n{headers}local f = io.open("{body_file}", "rb")\nwrk.body = f:read("*all")\nf:close()\n'
    )
    return script


def run_wrk(url: str, request: Request, concurrency: int, duration: int, workdir: Path) -> tuple[float, dict, int]:
    script = wrk_script(request, workdir)
    command = [
        "wrk",
        "-t1",
        f"-c{concurrency}",
        f"-d{duration}s",
        "--latency",
        "--timeout",
        "10s",
        "-s",
        str(script),
        url + request.route,
    ]
    output = subprocess.run(command, capture_output=True, text=True, check=True, timeout=duration + 30).stdout
    return parse_wrk(output)


PEERS = ("fastapi-torch", "ray-serve")
OIP_PEERS = ("kserve", "mlserver")
OVERLOAD = "platform-overload"
SPLIT = "platform-runner-service"
PLATFORMS = ("platform", "platform-unbatched", SPLIT)
TARGETS = [
    *PLATFORMS,
    "bentoml-noop",
    "bentoml-mounted",
    "starlette",
    "ort",
    "torch-eager",
    *PEERS,
    *OIP_PEERS,
    OVERLOAD,
]
CLASSIC = ("image", "forecast", "text")  # the family routes
OIP = ("oip-json", "oip-binary")  # the CNN's raw tensors by the inference protocol
GRPC = "grpc"  # the same tensors by the protocol's gRPC (raw contents), sent by loadtests' gRPC loop, not wrk
FAMILY_NAMES = (*CLASSIC, *OIP, GRPC)
OIP_MODEL = "fashion-cnn"


def serves(target: str) -> tuple[str, ...]:
    """The request families a target answers."""
    if target in PLATFORMS:  # gRPC for the product only: its variants differ behind the front-end (the REST rows)
        return FAMILY_NAMES if target == "platform" else (*CLASSIC, *OIP)
    return {"kserve": (*OIP, GRPC), "mlserver": ("oip-json", GRPC)}.get(target, CLASSIC)  # MLServer: no binary form


def prepare_peers(workdir: Path, targets: list[str]) -> dict[str, str]:
    """Build the peers' venvs that `targets` need and point them at the platform's models; their environment."""
    if set(PEERS) & set(targets):
        ensure_venv("peers")
    for peer in set(OIP_PEERS) & set(targets):
        ensure_venv(peer)
    write_spec(workdir / "peers.json")
    return {SPEC_ENV: str(workdir / "peers.json"), "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}


def ready_path(target: str) -> str:
    return "/v2/health/ready" if target in OIP_PEERS else "/readyz"


def target_env(target: str, admitted: int, runner_url: str, grpc_port: int) -> dict[str, str]:
    """Settings a target serves with beyond the shared ones (the platforms' gRPC on `grpc_port`)."""
    return {"MODELROAD_GRPC_PORT": str(grpc_port)} | {
        "platform-unbatched": {"MODELROAD_MAX_BATCH_SIZE": "1"},  # batching off: one item per inference call
        SPLIT: {"MODELROAD_RUNNER_URL": runner_url},
        OVERLOAD: {"MODELROAD_MAX_IN_FLIGHT": str(admitted)},
    }.get(target, {})


@contextmanager
def runner_for(target: str, env: dict[str, str], workdir: Path) -> Iterator[str]:
    """The runner service a target calls, served for the block (its URL), or nothing ("")."""
    if target != SPLIT:
        yield ""
        return
    port = free_port()
    command = [
        str(BIN / "bentoml"),
        "serve",
        "services.runner_service:ModelRunner",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with served(command, port, env, workdir / "runner-service.log", ROOT) as url:
        yield url


def server_command(target: str, port: int, workers: int, grpc_port: int | None = None) -> list[str]:
    """The command serving `target` on `port`; a peer's gRPC too on `grpc_port` (the platforms': target_env)."""
    host = ["--host", "127.0.0.1", "--port", str(port)]
    peers = venv("peers") / "bin"
    platform = serve_command(port)
    commands = {
        **dict.fromkeys(("platform", "platform-unbatched", SPLIT, OVERLOAD), platform),  # settings differ: target_env
        "bentoml-noop": serve_command(port, "bench.floors:NoopService"),
        "bentoml-mounted": serve_command(port, "bench.floors:MountedService"),
        # One process: uvicorn 0.54's --workers mode answered every request 44 ms late here (Nagle and
        # delayed-ACK timing), which would make the floor meaningless; one process is the honest floor.
        "starlette": [
            str(BIN / "uvicorn"),
            "bench.floors:starlette_app",
            *host,
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        "fastapi-torch": [
            str(peers / "uvicorn"),
            "bench.peers.fastapi_torch:app",
            *host,
            "--workers",
            str(workers),
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        "ray-serve": [
            str(peers / "python"),
            "-m",
            "bench.peers.ray_serve",
            "--port",
            str(port),
            "--replicas",
            str(workers),
        ],
    }
    if target in OIP_PEERS:
        python, model = (
            str(venv(target) / "bin" / "python"),
            ["--model", model_files()["image"].onnx, "--name", OIP_MODEL],
        )
        commands["kserve"] = [python, "-m", "bench.peers.kserve_peer", *model, "--http_port", str(port)]
        commands["mlserver"] = [python, "-m", "bench.peers.mlserver_peer", *model, "--port", str(port)]
        if grpc_port:
            commands["kserve"] += ["--grpc_port", str(grpc_port)]
            commands["mlserver"] += ["--grpc-port", str(grpc_port)]
        commands[target] += ["--workers", str(workers)]
    return commands[target]


def oip_requests() -> dict[str, Request]:
    """The CNN's input for the load-test image by the inference protocol: as JSON, and in Triton's binary form."""
    ((name, pixels),) = family_feeds()["image"][1].items()
    route = f"/v2/models/{OIP_MODEL}/infer"
    tensor = {"name": name, "shape": list(pixels.shape), "datatype": "FP32"}
    header = json.dumps(
        {
            "inputs": [{**tensor, "parameters": {"binary_data_size": pixels.nbytes}}],
            "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
        }
    ).encode()
    return {
        "oip-json": Request(
            route, "application/json", json.dumps({"inputs": [{**tensor, "data": pixels.ravel().tolist()}]}).encode()
        ),
        "oip-binary": Request(
            route,
            "application/octet-stream",
            header + pixels.astype("float32").tobytes(),
            (("Inference-Header-Content-Length", str(len(header))),),
        ),
    }


def measure_grpc(target: str, address: str, concurrency: int, duration: int) -> Result:
    """The CNN's input by gRPC ModelInfer (raw contents, as tritonclient.grpc sends it): loadtests' asyncio loop on
    one channel, pre-serialized requests, answers not decoded (wrk speaks no gRPC). Its CPU is printed."""
    ((name, pixels),) = family_feeds()["image"][1].items()
    load = GrpcLoad(address, [encode_grpc({name: pixels.astype("float32")}, OIP_MODEL, None)], {})
    step = asyncio.run(run_step(load, concurrency, None, 1.0, duration / 3, duration + 1.0, 30.0))
    errors = sum(n for status, n in step.statuses.items() if status != "200")
    print(json.dumps({"target": target, "family": GRPC, "concurrency": concurrency, "client_cpu": step.client_cpu}))
    return Result(
        target,
        GRPC,
        concurrency,
        step.requests_per_s,
        step.latency_ms(50),
        step.latency_ms(90),
        step.latency_ms(99),
        errors,
    )


def family_feeds() -> dict[str, tuple[ModelFiles, Inputs]]:
    """Per family: its model files and one item of the HTTP payloads as model input, preprocessed as served."""
    payloads = {
        "image": (PAYLOADS / "images" / "ankle-boot-0.png").read_bytes(),
        "forecast": json.loads((PAYLOADS / "forecast_example.json").read_text())["history"],
        "text": json.loads(family_requests()["text"].body)["text"],
    }
    feeds = {}
    for name, files in model_files().items():
        family = FAMILIES[name](files)
        feeds[name] = (files, family.stack([family.inputs(payloads[name])]))
    return feeds


def ort_calls(threads: int) -> dict[str, Callable[[], object]]:
    """One item per family through its ONNX Runtime session, with a worker's threads, as the runner calls it."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    calls = {}
    for family, (files, feeds) in family_feeds().items():
        session = ort.InferenceSession(files.onnx, options, providers=["CPUExecutionProvider"])
        calls[family] = lambda session=session, feeds=feeds: session.run(None, feeds)
    return calls


def torch_calls(threads: int) -> dict[str, Callable[[], object]]:
    """The same items through the same trained nets in PyTorch eager, with as many threads."""
    import torch

    from bench.peers.eager import eager_model

    torch.set_num_threads(threads)
    calls = {}
    for family, (files, feeds) in family_feeds().items():
        net = eager_model(files.metadata, files.checkpoint)
        tensors = [torch.from_numpy(array) for array in feeds.values()]  # ONNX inputs are forward()'s arguments

        def call(net=net, tensors=tensors) -> object:
            with torch.inference_mode():
                return net(*tensors)

        calls[family] = call
    return calls


IN_PROCESS = {"ort": ort_calls, "torch-eager": torch_calls}


def measure_calls(target: str, family: str, call: Callable[[], object], duration: float) -> Result:
    import numpy as np

    for _ in range(20):
        call()
    timings, deadline = [], time.monotonic() + duration
    while time.monotonic() < deadline:
        started = time.perf_counter()
        call()
        timings.append(time.perf_counter() - started)
    p50, p90, p99 = (round(float(v) * 1e3, 3) for v in np.percentile(timings, [50, 90, 99]))
    return Result(target, family, 1, round(len(timings) / sum(timings), 1), p50, p90, p99, 0)


def ratio_table(results: list[Result], concurrency: int) -> list[str]:
    """The platform against every other served target at one concurrency, from the same run."""
    lines = [
        f"| family | platform vs | RPS ratio at c={concurrency} | platform p99 ms | its p99 ms |",
        "|---|---|---|---|---|",
    ]
    for family in dict.fromkeys(r.family for r in results):
        at = {r.target: r for r in results if r.family == family and r.concurrency == concurrency}
        if "platform" not in at:
            continue
        ours = at.pop("platform")
        lines += [
            f"| {family} | {target} | {ours.rps / other.rps:.2f} | {ours.p99_ms:.1f} | {other.p99_ms:.1f} |"
            for target, other in at.items()
            if other.rps > 0
        ]
    return lines


def engine_table(results: list[Result]) -> list[str]:
    """ONNX Runtime against PyTorch eager on the same single items, per family."""
    by = {(r.target, r.family): r for r in results if r.target in IN_PROCESS}
    lines = ["| family | ONNX Runtime items/s | PyTorch eager items/s | ratio at batch 1 |", "|---|---|---|---|"]
    for family in dict.fromkeys(f for _, f in by):
        if ("ort", family) in by and ("torch-eager", family) in by:
            ort, eager = by["ort", family].rps, by["torch-eager", family].rps
            lines.append(f"| {family} | {ort:.0f} | {eager:.0f} | {ort / eager:.2f} |")
    return lines if len(lines) > 2 else []


def overload_table(overloads: list[Overload]) -> list[str]:
    header = (
        "| family | connections | admitted per worker | 200/s | refused/s | statuses "
        "| refusal p99 ms | admitted p99 ms | held |"
    )
    lines = [header, "|---|---|---|---|---|---|---|---|---|"]
    for o in overloads:
        statuses = ", ".join(f"{s}: {n}" for s, n in sorted(o.statuses.items()))
        lines.append(
            f"| {o.family} | {o.concurrency} | {o.max_in_flight} | {o.ok_rps:.0f} | {o.refused_rps:.0f} | {statuses} | "
            f"{o.probe_refused_p99_ms:.1f} | {o.probe_ok_p99_ms:.1f} | {'; '.join(o.problems) or 'yes'} |"
        )
    return lines


def write_reports(
    results: list[Result], overloads: list[Overload], out: Path, settings: dict, ratio_concurrency: int
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(
        json.dumps(
            {
                "settings": settings,
                "results": [asdict(r) for r in results],
                "overload": [{**asdict(o), "problems": o.problems} for o in overloads],
            },
            indent=2,
        )
    )
    lines = [
        "| family | target | concurrency | RPS | p50 ms | p90 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r.family} | {r.target} | {r.concurrency} | {r.rps:.0f} | {r.p50_ms:.2f} | {r.p90_ms:.2f} "
        f"| {r.p99_ms:.2f} | "
        f"{r.errors} |"
        for r in results
    ]
    lines += ["", *ratio_table(results, ratio_concurrency)]
    if engines := engine_table(results):
        lines += ["", *engines]
    if overloads:
        lines += ["", *overload_table(overloads)]
    (out / "bench.md").write_text("\n".join(lines) + "\n")
    if results:
        plot(results, out / "bench.png")


def plot(results: list[Result], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = sorted({r.family for r in results})
    figure, axes = plt.subplots(1, len(families), figsize=(5 * len(families), 4), squeeze=False)
    for ax, family in zip(axes[0], families):
        for target in sorted({r.target for r in results if r.family == family and r.target not in IN_PROCESS}):
            points = [(r.concurrency, r.rps) for r in results if r.family == family and r.target == target]
            ax.plot(*zip(*points), marker="o", label=target)
        ax.set(title=family, xlabel="concurrent connections", ylabel="requests/s", xscale="log")
        ax.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def measure_points(
    target: str,
    url: str,
    grpc_address: str,
    families: list[str],
    requests: dict[str, Request],
    args: argparse.Namespace,
    workdir: Path,
) -> list[Result]:
    """Each family at each concurrency on a served target: wrk's median run, or the gRPC loop."""
    results = []
    for family in families:
        for concurrency in args.concurrency:
            if family == GRPC:
                results.append(measure_grpc(target, grpc_address, concurrency, args.duration))
            else:
                runs = [run_wrk(url, requests[family], concurrency, args.duration, workdir) for _ in range(args.rounds)]
                rps, p, errors = median_run(runs)
                quantiles = (p.get("50", 0), p.get("90", 0), p.get("99", 0))
                results.append(Result(target, family, concurrency, rps, *quantiles, errors))
            print(json.dumps(asdict(results[-1])), flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", nargs="+", choices=TARGETS, default=TARGETS)
    parser.add_argument("--families", nargs="+", choices=FAMILY_NAMES, default=list(FAMILY_NAMES))
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 8, 32, 64])
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="wrk runs per point; the median one is reported")
    parser.add_argument("--workers", type=int, default=2, help="server worker processes (MODELROAD_WORKERS)")
    parser.add_argument(
        "--overload-factor", type=int, default=4, help="platform-overload: connections per admitted request"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "bench")
    args = parser.parse_args(argv)

    requests, results, overloads = family_requests(), [], []
    if set(OIP) & set(args.families):
        requests.update(oip_requests())
    env = {"MODELROAD_WORKERS": str(args.workers), "BENTOML_DO_NOT_TRACK": "true"}
    sustainable = 32 if 32 in args.concurrency else max(args.concurrency)  # where RPS stops growing here
    admitted = max(1, sustainable // args.workers)
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        workdir = Path(tmp)
        if {*PEERS, *OIP_PEERS} & set(args.targets):
            env.update(prepare_peers(workdir, args.targets))
        for target in args.targets:
            if target in IN_PROCESS:
                calls = IN_PROCESS[target](ServeSettings(workers=args.workers).ort_threads)
                results += [
                    measure_calls(target, family, calls[family], args.duration)
                    for family in args.families
                    if family in calls
                ]
                continue
            port, grpc_port = free_port(), free_port()
            command = server_command(target, port, args.workers, grpc_port)
            with (
                runner_for(target, env, workdir) as runner_url,
                served(
                    command,
                    port,
                    {**env, **target_env(target, admitted, runner_url, grpc_port)},
                    workdir / f"{target}.log",
                    ROOT,
                    ready_path=ready_path(target),
                ) as url,
            ):
                if target == OVERLOAD:
                    for family in (f for f in args.families if f in CLASSIC):
                        request = requests[family]
                        overloads.append(
                            run_overload(
                                url + request.route,
                                family,
                                wrk_script(request, workdir),
                                request.content_type,
                                request.body,
                                args.overload_factor * sustainable,
                                args.duration,
                                admitted,
                            )
                        )
                        print(json.dumps(asdict(overloads[-1])), flush=True)
                    continue
                families = [f for f in args.families if f in serves(target)]
                results += measure_points(target, url, f"127.0.0.1:{grpc_port}", families, requests, args, workdir)
    settings = {"workers": args.workers, "duration_s": args.duration, "rounds": args.rounds, "cores": os.cpu_count()}
    write_reports(results, overloads, args.out, settings, ratio_concurrency=sustainable)
    print((args.out / "bench.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
