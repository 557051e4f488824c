"""Peer: KServe's Python ModelServer with ONNX Runtime, the Open Inference Protocol's reference server in Python.

    .venv-kserve/bin/python -m bench.peers.kserve_peer --model m.onnx --name fashion-cnn --http_port 8000 --workers 2

KServe's recipe for a custom model (a `kserve.Model` with `predict`), serving one ONNX file with the same
thread settings as the platform's CPU runner. KServe's Python server has no in-process batcher (on
Kubernetes, batching is an agent beside the pod), so each request is one ONNX Runtime call. Its own
flags (`--http_port`, `--workers`, ...) are read by `kserve.model_server` itself.
"""

import argparse
import os
import uuid

import kserve
import numpy as np
import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse


class OnnxModel(kserve.Model):
    def __init__(self, name: str, path: str, threads: int):
        super().__init__(name)
        self.path, self.threads = path, threads
        self.session: ort.InferenceSession | None = None  # opened in each worker: KServe pickles models to spawn them
        self.ready = True

    def open(self) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = self.threads, 1
        self.session = ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
        return self.session

    async def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
        feeds = {tensor.name: tensor.as_numpy() for tensor in payload.inputs}
        session = self.session or self.open()
        outputs = []
        for spec, array in zip(session.get_outputs(), session.run(None, feeds)):
            output = InferOutput(name=spec.name, shape=list(array.shape), datatype="FP32")
            output.set_data_from_numpy(np.ascontiguousarray(array), binary_data=False)  # KServe encodes as asked
            outputs.append(output)
        return InferResponse(
            response_id=payload.id or str(uuid.uuid4()),  # KServe answers every request with an id
            model_name=self.name,
            infer_outputs=outputs,
            use_binary_outputs=payload.use_binary_outputs,
            requested_outputs=payload.request_outputs,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="the ONNX file")
    parser.add_argument("--name", required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--grpc_port", type=int, help="also serve the protocol's gRPC on this port")
    args, _ = parser.parse_known_args()
    threads = max(1, (os.cpu_count() or 1) // args.workers)  # as the platform splits the cores among its workers
    grpc = {"enable_grpc": True, "grpc_port": args.grpc_port} if args.grpc_port else {"enable_grpc": False}
    kserve.ModelServer(**grpc).start([OnnxModel(args.name, args.model, threads)])


if __name__ == "__main__":
    main()
