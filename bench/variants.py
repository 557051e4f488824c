"""A stored model against its variants (the Transformer against its int8 form): ONNX Runtime in-process,
the same token batches, timed in turn within one run, so the speed-up is a ratio from one machine state.

    .venv/bin/python -m bench.variants                     # wordnet-transformer vs wordnet-transformer-int8
    .venv/bin/python -m bench.variants --batch-sizes 1 8 64 --threads 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import bentoml
import numpy as np
import onnxruntime as ort

from contracts.card import ModelCard
from contracts.text import TextContract

TEXTS = Path(__file__).resolve().parents[1] / "loadtests" / "payloads" / "texts.json"


def session(stored: bentoml.Model, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(stored.path_of("model.onnx"), options, providers=["CPUExecutionProvider"])


def token_batches(stored: bentoml.Model, batch_size: int, count: int) -> list[dict[str, np.ndarray]]:
    """`count` batches of the payload texts (realistic, varied lengths), padded to each batch's longest."""
    contract = TextContract.from_card(ModelCard.from_metadata(stored.info.metadata), stored.path)
    ids = contract.token_ids(json.loads(TEXTS.read_text()))
    return [
        contract.feeds_from_ids([ids[(b * batch_size + i) % len(ids)] for i in range(batch_size)]) for b in range(count)
    ]


def time_calls(runner: ort.InferenceSession, batches: list[dict[str, np.ndarray]]) -> list[float]:
    seconds = []
    for feeds in batches:
        started = time.perf_counter()
        runner.run(None, feeds)
        seconds.append(time.perf_counter() - started)
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.variants", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", default="wordnet-transformer", help="store name of the float model")
    parser.add_argument("--variants", nargs="+", default=["int8"], help="variant suffixes registered beside it")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    parser.add_argument("--calls", type=int, default=200, help="timed calls per model and batch size")
    parser.add_argument("--rounds", type=int, default=5, help="the models take turns this many times")
    args = parser.parse_args(argv)

    names = [args.model] + [f"{args.model}-{suffix}" for suffix in args.variants]
    stored = {name: bentoml.models.get(f"{name}:latest") for name in names}
    sessions = {name: session(model, args.threads) for name, model in stored.items()}
    rows = []
    for batch_size in args.batch_sizes:
        batches = token_batches(stored[args.model], batch_size, max(1, args.calls // args.rounds))
        for runner in sessions.values():
            time_calls(runner, batches[:5])  # warm-up
        timings: dict[str, list[float]] = {name: [] for name in names}
        for _ in range(args.rounds):  # taking turns evens out drift in the machine's state
            for name, runner in sessions.items():
                timings[name] += time_calls(runner, batches)
        base_ms = statistics.median(timings[args.model]) * 1e3
        for name in names:
            median_ms = statistics.median(timings[name]) * 1e3
            metrics = ModelCard.from_metadata(stored[name].info.metadata).metrics
            rows.append(
                {
                    "model": str(stored[name].tag),
                    "batch": batch_size,
                    "median_ms": round(median_ms, 3),
                    "p90_ms": round(float(np.percentile(timings[name], 90)) * 1e3, 3),
                    "items_per_s": round(batch_size / median_ms * 1e3, 1),
                    "speedup": round(base_ms / median_ms, 2),
                    "accuracy": round(metrics["accuracy"], 4),
                    "macro_f1": round(metrics["macro_f1"], 4),
                }
            )
    print("| model | batch | median ms | p90 ms | items/s | speed-up | test accuracy | test macro-F1 |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['batch']} | {r['median_ms']} | {r['p90_ms']} | {r['items_per_s']} | "
            f"{r['speedup']}× | {r['accuracy']} | {r['macro_f1']} |"
        )
    print(json.dumps({"threads": args.threads, "ort": ort.__version__, "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
