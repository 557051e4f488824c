"""Peer: MLServer with a custom runtime on ONNX Runtime, with its adaptive batching as the platform's.

    .venv-mlserver/bin/python -m bench.peers.mlserver_peer --model model.onnx --name fashion-cnn --port 8000 --workers 2

Seldon's recipe for a custom model: an `MLModel` runtime named in `model-settings.json`, served by
`mlserver start`, with `max_batch_size`/`max_batch_time` as the platform's defaults and `parallel_workers`
inference processes (the platform's worker count), each with the platform's ONNX Runtime threads.
MLServer 1.7 has no binary tensor extension, so it serves the JSON form of the protocol only.
"""

import argparse
import json
import os
import socket
import sys
import tempfile
from pathlib import Path

import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse

# Batch limits as the platform's defaults (MODELROAD_MAX_BATCH_SIZE, MODELROAD_MAX_WAIT_MS).
MAX_BATCH, WAIT_S = 64, 0.001
THREADS_ENV = "MODELROAD_PEER_THREADS"


class OnnxRuntime(MLModel):
    async def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = int(os.environ.get(THREADS_ENV, "1")), 1
        self.session = ort.InferenceSession(self.settings.parameters.uri, options, providers=["CPUExecutionProvider"])
        self.output_names = [o.name for o in self.session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {tensor.name: NumpyCodec.decode_input(tensor) for tensor in payload.inputs}
        outputs = self.session.run(None, feeds)
        return InferenceResponse(
            id=payload.id,
            model_name=self.name,
            outputs=[NumpyCodec.encode_output(name, array) for name, array in zip(self.output_names, outputs)],
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="the ONNX file")
    parser.add_argument("--name", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--grpc-port", type=int, help="the protocol's gRPC port (default: a free one)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="mlserver-peer-"))
    settings = {
        "host": "127.0.0.1",
        "http_port": args.port,
        "grpc_port": args.grpc_port or free_port(),
        "metrics_port": free_port(),
        "metrics_dir": str(folder / "metrics"),
        "parallel_workers": args.workers,
        "debug": False,
    }
    model = {
        "name": args.name,
        "implementation": f"{__spec__.name}.OnnxRuntime",
        "parameters": {"uri": str(Path(args.model).resolve())},
        "max_batch_size": MAX_BATCH,
        "max_batch_time": WAIT_S,
    }
    (folder / "settings.json").write_text(json.dumps(settings))
    (folder / "model-settings.json").write_text(json.dumps(model))
    os.environ[THREADS_ENV] = str(max(1, (os.cpu_count() or 1) // args.workers))  # as the platform splits cores
    os.execv(Path(sys.executable).with_name("mlserver"), ["mlserver", "start", str(folder)])


if __name__ == "__main__":
    main()
