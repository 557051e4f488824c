"""`python -m loadtests.infer` against real servers: the platform's pipelines and an imported model with a dynamic
dimension (JSON and binary tensors, closed and open loop), the KServe and MLServer peers unchanged, the gate, and
the one-line refusals."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from bench.run import OIP_MODEL, family_feeds, prepare_peers, ready_path, server_command, serves
from harness.servers import free_port, served, stop, wait_ready
from loadtests.infer import main
from tests.integration.conftest import ROOT, private_home, start_server
from tests.training.test_import import write
from training.import_model import import_model

pytestmark = pytest.mark.slow
SHORT = ["--warmup", "0.5", "--window", "1", "--max-seconds", "4"]


def run(capsys, *args: str) -> tuple[int, str, str]:
    status = main([*args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def steps(folder) -> list[dict]:
    return json.loads((folder / "steps.json").read_text())["steps"]


def test_a_pipeline_with_bytes_inputs_swept_by_concurrency(server, capsys, tmp_path):
    status, out, _ = run(
        capsys,
        server,
        "--model",
        "wordnet-transformer-pipeline",
        "--concurrency",
        "1,4",
        "--out",
        str(tmp_path),
        *SHORT,
    )
    assert status == 0, out
    rows = steps(tmp_path)
    assert [r["load"] for r in rows] == ["c=1", "c=4"]
    for row in rows:
        assert row["requests_per_s"] > 0 and row["statuses"] == {"200": pytest.approx(row["statuses"]["200"])}
        assert row["p50_ms"] <= row["p90_ms"] <= row["p95_ms"] <= row["p99_ms"]
        assert row["server_queue_ms"] is not None and row["server_compute_ms"] > 0  # from its statistics extension
    with open(tmp_path / "steps.csv") as file:
        assert [r["load"] for r in csv.DictReader(file)] == ["c=1", "c=4"]
    assert (tmp_path / "curve.png").read_bytes().startswith(b"\x89PNG")
    assert "| c=4 |" in out or "| c=4 (unstable) |" in out


@pytest.fixture(scope="module")
def dynamic_server(registered, session_dir, tmp_path_factory):
    """An imported model whose second axis is dynamic: y = 2x over (batch, n)."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["y"])],
        "double",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "n"])],
        [numpy_helper.from_array(np.array(2.0, np.float32), "two")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    tag = import_model(write(model, tmp_path_factory.mktemp("dynamic") / "double.onnx"), "double")
    log_path = session_dir / "load-generator.log"
    process, url = start_server(
        private_home(session_dir, "load-generator"), log_path, extra_env={"MODELROAD_MODELS": tag}
    )
    try:
        wait_ready(process, url, log_path)
        yield url
    finally:
        stop(process)


def test_an_imported_model_with_a_dynamic_dimension_in_binary_tensors_at_poisson_rates(
    dynamic_server, capsys, tmp_path
):
    status, _, err = run(capsys, dynamic_server, "--model", "double", "--request-rate", "40")
    assert status == 2 and "--shape x:N" in err and "Traceback" not in err  # the dynamic axis must be given

    args = ["--model", "double", "--shape", "x:16", "--batch", "4", "--protocol", "binary", "--request-rate", "40,80"]
    status, out, _ = run(capsys, dynamic_server, *args, "--out", str(tmp_path), *SHORT)
    assert status == 0, out
    rows = steps(tmp_path)
    assert [r["load"] for r in rows] == ["40/s", "80/s"]
    for row, rate in zip(rows, (40, 80)):
        assert row["error_ratio"] == 0 and row["requests_per_s"] == pytest.approx(rate, rel=0.35)
        assert row["inferences_per_s"] == pytest.approx(4 * row["requests_per_s"], rel=0.01)  # 4 rows a request


def test_the_gate_fails_on_an_impossible_slo_saying_which_step(dynamic_server, capsys, tmp_path):
    args = ["--model", "double", "--shape", "x:8", "--concurrency", "2", "--slo-p99-ms", "0.001"]
    status, out, _ = run(capsys, dynamic_server, *args, "--out", str(tmp_path), *SHORT)
    assert status == 1 and "c=2: p99" in out and "over --slo-p99-ms 0.001" in out


def test_an_unknown_model_or_an_unreachable_url_is_one_line_and_exit_2(server, capsys):
    status, _, err = run(capsys, server, "--model", "no-such-model")
    assert status == 2 and err.count("\n") == 1 and "no model named 'no-such-model'" in err
    status, _, err = run(capsys, f"http://127.0.0.1:{free_port()}", "--model", "fashion-cnn")
    assert status == 2 and err.count("\n") == 1 and "cannot be reached" in err


@pytest.mark.parametrize("peer", ["kserve", "mlserver"])
def test_the_peers_are_load_tested_unchanged(peer, registered, capsys, tmp_path):
    port, grpc_port = free_port(), free_port()
    command = server_command(peer, port, workers=1, grpc_port=grpc_port)
    env = prepare_peers(tmp_path, [peer])
    inputs = tmp_path / "image.npz"
    np.savez(inputs, **family_feeds()["image"][1])  # the CNN's input as the benchmark sends it
    with served(command, port, env, tmp_path / "peer.log", ROOT, ready_path=ready_path(peer)) as url:
        # JSON, binary (MLServer has none) and gRPC, each as the peer serves it
        for protocol in (family.removeprefix("oip-") for family in serves(peer)):
            out = tmp_path / protocol
            args = ["--model", OIP_MODEL, "--inputs", str(inputs), "--protocol", protocol, "--concurrency", "2"]
            args += ["--out", str(out), "--grpc", f"127.0.0.1:{grpc_port}", *SHORT]
            status, printed, err = run(capsys, url, *args)
            assert status == 0, printed + err
            (row,) = steps(out)
            assert row["error_ratio"] == 0 and row["requests_per_s"] > 0
            assert row["server_queue_ms"] is None  # KServe and MLServer serve no statistics extension
