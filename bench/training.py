"""Training speed side by side in one run: one process against two (torchrun, data parallel), and fp32
against bf16 autocast, each for the same epochs of the same task. Figures are the loop's own time
(`train_seconds` in the card: epochs and validation, not data preparation, baseline or export).

    .venv/bin/python -m bench.training                                # fashion-cnn and wordnet-transformer, 1 epoch
    .venv/bin/python -m bench.training --tasks fashion-cnn --epochs 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORES = os.cpu_count() or 1

# (label, processes, precision): every row uses all the cores, split between its processes.
SETUPS = [
    (f"1 process × {CORES} threads, fp32", 1, "fp32"),
    (f"2 processes × {max(1, CORES // 2)} threads, fp32 (torchrun)", 2, "fp32"),
    (f"1 process × {CORES} threads, bf16 autocast", 1, "bf16"),
]


def train_seconds(
    task: str, epochs: int, processes: int, precision: str, out: Path, dry_run: bool = False
) -> tuple[float, float]:
    """The loop's seconds and the test key metric of one training run in a subprocess."""
    launcher = ["-m", "torch.distributed.run", f"--nproc-per-node={processes}"] if processes > 1 else []
    argv = [
        *launcher,
        "-m",
        "training",
        "train",
        task,
        "--epochs",
        str(epochs),
        "--patience",
        str(epochs),
        "--threads",
        str(max(1, CORES // processes)),
        "--precision",
        precision,
        "--no-register",
        "--out-dir",
        str(out),
        *(["--dry-run"] if dry_run else []),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, CORES // processes))}
    subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, check=True, capture_output=True)
    card = json.loads((out / task / "card.json").read_text())
    return card["train_seconds"], card["metrics"][card["key_metric"]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.training", description=__doc__)
    parser.add_argument("--tasks", nargs="+", default=["fashion-cnn", "wordnet-transformer"])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--dry-run", action="store_true", help="a few batches of a subset: checks the bench runs")
    args = parser.parse_args(argv)
    print(f"| task | set-up ({CORES} cores) | training s ({args.epochs} epochs) | vs first row | test key metric |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="bench-training-") as scratch:
        for task in args.tasks:
            first = None
            for i, (label, processes, precision) in enumerate(SETUPS):
                out = Path(scratch) / f"{task}-{i}"
                seconds, metric = train_seconds(task, args.epochs, processes, precision, out, args.dry_run)
                first = first or seconds
                print(f"| {task} | {label} | {seconds:.1f} | {first / seconds:.2f}× | {metric:.4f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
