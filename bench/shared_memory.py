"""A large input by system shared memory against binary HTTP and gRPC's raw contents, side by side in one run, on
the store of BENTOML_HOME:

    python -m bench.shared_memory [--mib 4] [--calls 100] [--rounds 3]

A graph that sums its input (`bench-sum`, imported into the store on first use) is served beside the families, one
worker, MODELROAD_SHARED_MEMORY on. One client calls it in turn with a `--mib` MiB FP32 input: in the binary HTTP
body, in gRPC's raw contents, and from a shared-memory region registered once (over REST and over gRPC); the forms
alternate round by round, and each figure is the median of the rounds' median call time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import bentoml
import numpy as np
import onnx
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
import tritonclient.utils.shared_memory as shm
from onnx import TensorProto, helper

from harness.servers import free_port, serve_command, served
from training.import_model import import_model

MODEL = "bench-sum"
ROOT = Path(__file__).resolve().parents[1]


def sum_graph(path: Path) -> Path:
    """x FP32 [batch, n] -> y FP32 [batch, 1], the sum of each row: almost no compute, all transfer."""
    node = helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=1)
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    graph = helper.make_graph(
        [node],
        "sum",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])],
        [axes],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def stored_sum() -> str:
    """The store tag of the summing graph, imported if the store has none."""
    found = [m for m in bentoml.models.list() if m.tag.name == MODEL]
    if found:
        return str(found[0].tag)
    with tempfile.TemporaryDirectory() as folder:
        return import_model(sum_graph(Path(folder) / "sum.onnx"), MODEL)


def median_ms(call: Callable[[], object], calls: int) -> float:
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=float, default=4.0, help="the input's size")
    parser.add_argument("--calls", type=int, default=100, help="calls of each form a round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    tag = stored_sum()
    values = int(args.mib * 2**20 / 4)
    x = np.random.default_rng(0).random((1, values), dtype=np.float32)
    expected = float(x.sum(dtype=np.float64))
    port, grpc_port = free_port(), free_port()
    env = {
        "MODELROAD_MODELS": tag,
        "MODELROAD_SHARED_MEMORY": "1",
        "MODELROAD_WORKERS": "1",
        "MODELROAD_GRPC_PORT": str(grpc_port),
        "MODELROAD_MAX_BODY_BYTES": str(int(x.nbytes * 2)),
    }
    command = serve_command(port)
    key = f"/modelroad-bench-{os.getpid()}"
    with tempfile.TemporaryDirectory() as folder, served(command, port, env, Path(folder) / "server.log", ROOT):
        rest = triton_http.InferenceServerClient(f"127.0.0.1:{port}", network_timeout=60)
        grpc = triton_grpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        region = shm.create_shared_memory_region("bench-in", key, x.nbytes)
        try:
            shm.set_shared_memory_region(region, [x])
            rest.register_system_shared_memory("bench-in", key, x.nbytes)
            forms = forms_of(rest, grpc, x, expected)
            figures: dict[str, list[float]] = {name: [] for name in forms}
            for round_ in range(args.rounds):
                order = list(forms) if round_ % 2 == 0 else list(reversed(forms))
                for name in order:
                    figures[name].append(median_ms(forms[name], args.calls))
        finally:
            rest.unregister_system_shared_memory()
            shm.destroy_shared_memory_region(region)
            rest.close()
            grpc.close()
    base = statistics.median(figures["binary HTTP body"])
    print(f"| {args.mib:g} MiB FP32 input, c=1 | median ms a call | calls/s | against binary HTTP |")
    print("|---|---|---|---|")
    for name, times in figures.items():
        ms = statistics.median(times)
        print(f"| {name} | {ms:.2f} | {1000 / ms:,.0f} | {base / ms:.2f}x |")
    return 0


def forms_of(rest, grpc, x: np.ndarray, expected: float) -> dict[str, Callable[[], object]]:
    """Each way of sending `x`, as a call that checks the sum it gets back."""

    def check(answer: np.ndarray | None) -> None:
        if answer is None or not np.isclose(float(answer.reshape(-1)[0]), expected, rtol=1e-4):
            raise AssertionError(f"bench-sum answered {answer}, not {expected}")

    def http_body() -> None:
        tensor = triton_http.InferInput("x", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        check(rest.infer(MODEL, [tensor]).as_numpy("y"))

    def grpc_raw() -> None:
        tensor = triton_grpc.InferInput("x", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        check(grpc.infer(MODEL, [tensor]).as_numpy("y"))

    def http_shared() -> None:
        tensor = triton_http.InferInput("x", list(x.shape), "FP32")
        tensor.set_shared_memory("bench-in", x.nbytes)
        check(rest.infer(MODEL, [tensor]).as_numpy("y"))

    def grpc_shared() -> None:
        tensor = triton_grpc.InferInput("x", list(x.shape), "FP32")
        tensor.set_shared_memory("bench-in", x.nbytes)
        check(grpc.infer(MODEL, [tensor]).as_numpy("y"))

    return {
        "binary HTTP body": http_body,
        "gRPC raw contents": grpc_raw,
        "shared memory, REST call": http_shared,
        "shared memory, gRPC call": grpc_shared,
    }


if __name__ == "__main__":
    raise SystemExit(main())
